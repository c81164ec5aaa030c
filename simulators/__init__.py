"""Event-driven execution of exported IR graphs with exact per-layer, per-step operation counts.

- :class:`Simulator` (``simulators.executor``): float (float32/float64) and integer fixed-point
  executors of an IR graph, one frame per time step, spikes as events, one clip (``run``) or a
  batch of clips with per-clip counts (``run_batch``);
- ``simulators.counting``: what is counted and how (AC, MAC, mul/add, neuron updates, spikes,
  memory words);
- ``simulators.fixed``: the integer arithmetic of the fixed-point spec;
- ``simulators.kernels``: event-driven and dense accumulation kernels;
- ``simulators.record``: the run-record schema (``docs/run-record.md``), ``COUNT_KEYS``;
- ``simulators.run``: :func:`simulate_file`, the library behind ``svformer-deploy simulate``.

Full description: ``docs/simulator.md``.
"""

import importlib
from typing import Any

# name -> submodule; imported on first use, so reading run records (``simulators.record``) does
# not import torch and the executor.
_EXPORTS = {
    "COUNT_KEYS": "record", "LayerInfo": "counting", "layer_infos": "counting", "MODES": "executor",
    "SimResult": "executor", "Simulator": "executor", "simulate": "executor", "KernelPolicy": "kernels",
    "build_record": "record", "write_records": "record", "SimulationReport": "run", "simulate_file": "run",
}
__all__ = [*_EXPORTS, "DEFAULT_BATCH", "MAX_BATCH", "parse_batch"]

# clip views per executor pass (``Simulator.run_batch``) in ``simulate`` and ``energy-report --videos``:
# "auto" = ``simulators.run.auto_batch`` (measured by benchmarks/bench_batch.py, docs/simulator.md,
# "Batched simulation"); no torch import here
DEFAULT_BATCH = "auto"
MAX_BATCH = 256


def parse_batch(value: str | int) -> str | int:
    """``"auto"`` or an integer 1..:data:`MAX_BATCH` (``--batch``); anything else raises ``ValueError``."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected 'auto' or a number of clip views per pass, got {value!r}") from None
    if not 1 <= n <= MAX_BATCH:
        raise ValueError(f"expected 'auto' or 1..{MAX_BATCH} clip views per pass, got {n}")
    return n


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
