"""Event-driven execution of exported IR graphs with exact per-layer, per-step operation counts.

- :class:`Simulator` (``simulators.executor``): float (float32/float64) and integer fixed-point
  executors of an IR graph, one frame per time step, spikes as events;
- ``simulators.counting``: what is counted and how (AC, MAC, mul/add, neuron updates, spikes,
  memory words), ``COUNT_KEYS``;
- ``simulators.fixed``: the integer arithmetic of the fixed-point spec;
- ``simulators.kernels``: event-driven and dense accumulation kernels;
- ``simulators.record``: run records (``docs/run-record.md``);
- ``simulators.run``: :func:`simulate_file`, the library behind ``svformer-deploy simulate``.

Full description: ``docs/simulator.md``.
"""

from .counting import COUNT_KEYS, LayerInfo, layer_infos
from .executor import MODES, SimResult, Simulator, simulate
from .kernels import KernelPolicy
from .record import build_record, write_records
from .run import SimulationReport, simulate_file

__all__ = [
    "COUNT_KEYS", "LayerInfo", "layer_infos", "MODES", "SimResult", "Simulator", "simulate", "KernelPolicy",
    "build_record", "write_records", "SimulationReport", "simulate_file",
]
