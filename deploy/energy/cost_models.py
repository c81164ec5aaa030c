"""Energy cost models: picojoules per operation and per memory word.

Presets are the 45 nm, 0.9 V figures of M. Horowitz, "Computing's energy problem (and what we can
do about it)", ISSCC 2014, pp. 10-14 (the source the SVFormer paper cites for E_MAC 4.6 pJ and
E_AC 0.9 pJ). A MAC is one multiply plus one add (FP32: 3.7 + 0.9 = 4.6 pJ); an AC is one add.

Memory: Horowitz gives 10 / 20 / 100 pJ per 64-bit read of an 8 KB / 32 KB / 1 MB SRAM. Every
preset uses the 32 KB figure (20 pJ per 64-bit access, a core-local SRAM of the size neuromorphic
cores carry), priced in proportion to the bits of a word: one word of ``word_bits`` bits costs
20 · word_bits / 64 pJ (10 pJ for a 32-bit word, 2.5 pJ for an 8-bit word). Reads and writes are
priced alike.

Neuron update (a convention): one multiply (the leak, (1 - k)·V) plus one add (the charge, + k·X,
with k assumed folded upstream); the threshold compare and the hard reset are taken as free.

User-defined models come from a TOML file (see :func:`load_cost_model_toml` and ``docs/energy.md``).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from svformer_deploy.svformer.errors import SVFormerError

HOROWITZ_2014 = ('M. Horowitz, "Computing\'s energy problem (and what we can do about it)", '
                 "ISSCC 2014, pp. 10-14; 45 nm, 0.9 V")
MEMORY_SOURCE = "Horowitz 2014: 32 KB SRAM, 20 pJ per 64-bit access, priced per bit of the record's word_bits"


@dataclass(frozen=True)
class CostModel:
    """Energy per operation (pJ) and per memory access (pJ per 64-bit access, scaled by word width)."""

    name: str
    description: str
    source: str
    e_mac_pj: float  # one multiply-accumulate (non-binary input x weight)
    e_ac_pj: float  # one accumulate (binary spike x weight)
    e_mul_pj: float  # one standalone multiply (per-step BN scale, ...)
    e_add_pj: float  # one standalone add (bias, residual)
    e_mem_pj_per_64bit: float  # one 64-bit memory access; a word costs this x word_bits / 64
    e_neuron_update_pj: float  # one neuron update (leak multiply + charge add by default)
    memory_source: str = MEMORY_SOURCE

    def __post_init__(self) -> None:
        for key in _NUMBERS:
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise SVFormerError(f"cost model {self.name!r}: {key} must be a number (pJ), got {v!r}")
            if not (math.isfinite(v) and 0 <= v <= MAX_PJ):
                raise SVFormerError(f"cost model {self.name!r}: {key} must be a finite number >= 0 and "
                                    f"<= {MAX_PJ:g} (pJ), got {v!r}")
        for key in _TEXT:
            v = getattr(self, key)
            if not isinstance(v, str) or len(v) > MAX_TEXT:
                raise SVFormerError(f"cost model: {key} must be a string of at most {MAX_TEXT} characters")

    def e_mem_word_pj(self, word_bits: int) -> float:
        """Energy of one memory access of a ``word_bits``-bit word (pJ)."""
        return self.e_mem_pj_per_64bit * word_bits / 64.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def label(self) -> str:
        """Short name for table captions: ``fp32 (E_MAC 4.6 pJ, E_AC 0.9 pJ)``."""
        return f"{self.name} (E_MAC {self.e_mac_pj:g} pJ, E_AC {self.e_ac_pj:g} pJ)"


MAX_PJ = 1e6
"""Largest energy per operation or memory access accepted (pJ): a microjoule, far above any real circuit,
small enough that no report total can overflow to infinity."""
MAX_TEXT = 10_000
MAX_TOML_BYTES = 1 << 20
_NUMBERS = ("e_mac_pj", "e_ac_pj", "e_mul_pj", "e_add_pj", "e_mem_pj_per_64bit", "e_neuron_update_pj")
_TEXT = ("name", "description", "source", "memory_source")


def _horowitz(name: str, what: str, mul: float, add: float) -> CostModel:
    return CostModel(
        name=name,
        description=f"45 nm {what}: MAC = multiply {mul:g} pJ + add {add:g} pJ; AC = add",
        source=HOROWITZ_2014,
        e_mac_pj=round(mul + add, 6),
        e_ac_pj=add,
        e_mul_pj=mul,
        e_add_pj=add,
        e_mem_pj_per_64bit=20.0,
        e_neuron_update_pj=round(mul + add, 6),
    )


PRESETS: dict[str, CostModel] = {
    "fp32": _horowitz("fp32", "32-bit floating point (the SVFormer paper's model)", 3.7, 0.9),
    "fp16": _horowitz("fp16", "16-bit floating point", 1.1, 0.4),
    "int8": _horowitz("int8", "8-bit integer", 0.2, 0.03),
}
DEFAULT = "fp32"

_ALLOWED = set(_NUMBERS) | set(_TEXT) | {"base"}


def load_cost_model_toml(path: str | Path) -> CostModel:
    """A user-defined cost model from a TOML file.

    Keys: ``e_mac_pj``, ``e_ac_pj``, ``e_mul_pj``, ``e_add_pj``, ``e_mem_pj_per_64bit`` (all pJ,
    finite, >= 0; required unless ``base`` names a preset to start from), optional
    ``e_neuron_update_pj`` (default ``e_mul_pj + e_add_pj``), ``name`` (default: the file stem),
    ``description``, ``source``, ``memory_source``. Any other key is an error.
    """
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > MAX_TOML_BYTES:
            raise SVFormerError(f"{path}: cost model file of {path.stat().st_size} bytes is above the limit of "
                                f"{MAX_TOML_BYTES}")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SVFormerError(f"{path}: cost model file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SVFormerError(f"{path}: not a valid TOML cost model ({e})") from None
    except OSError as e:
        raise SVFormerError(f"{path}: cannot read cost model ({e.strerror})") from None
    unknown = sorted(set(data) - _ALLOWED)
    if unknown:
        raise SVFormerError(f"{path}: unknown cost model key(s) {', '.join(unknown)}; "
                            f"allowed: {', '.join(sorted(_ALLOWED))}")
    base = None
    if "base" in data:
        if not isinstance(data["base"], str) or data["base"] not in PRESETS:
            raise SVFormerError(f"{path}: base {data['base']!r} is not a preset ({', '.join(PRESETS)})")
        base = PRESETS[data["base"]]
    values: dict[str, Any] = {}
    for key in _NUMBERS:
        if key not in data:
            continue
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise SVFormerError(f"{path}: {key} must be a number (pJ), got {v!r}")
        if not math.isfinite(v) or not 0 <= v <= MAX_PJ:
            raise SVFormerError(f"{path}: {key} must be a finite number >= 0 and <= {MAX_PJ:g} (pJ), got {v!r}")
        values[key] = float(v)
    for key in _TEXT:
        if key in data:
            if not isinstance(data[key], str) or not data[key].strip() or len(data[key]) > MAX_TEXT:
                raise SVFormerError(f"{path}: {key} must be a non-empty string of at most {MAX_TEXT} characters")
            values[key] = data[key].strip()
    if base is None:
        missing = [k for k in _NUMBERS if k not in values and k != "e_neuron_update_pj"]
        if missing:
            raise SVFormerError(f"{path}: missing cost model number(s) {', '.join(missing)} "
                                "(or set base = \"fp32\" | \"fp16\" | \"int8\" to start from a preset)")
        values.setdefault("e_neuron_update_pj", values["e_mul_pj"] + values["e_add_pj"])
        values.setdefault("description", "user-defined cost model")
        values.setdefault("source", str(path))
        values.setdefault("memory_source", f"user-defined in {path}")
        values.setdefault("name", path.stem)
        return _build(path, lambda: CostModel(**values))
    if "e_neuron_update_pj" not in values and ("e_mul_pj" in values or "e_add_pj" in values):
        values["e_neuron_update_pj"] = values.get("e_mul_pj", base.e_mul_pj) + values.get("e_add_pj", base.e_add_pj)
    values.setdefault("name", path.stem)
    values.setdefault("description", f"{base.name} preset with overrides from {path.name}")
    overridden = sorted(k for k in _NUMBERS if k in data)
    values.setdefault("source", f"{base.source}; overrides ({', '.join(overridden) or 'none'}) from {path}")
    return _build(path, lambda: replace(base, **values))


def _build(path: Path, make: Any) -> CostModel:
    """The cost model, its own checks (e.g. a derived neuron update above the bound) naming the file."""
    try:
        return make()
    except SVFormerError as e:
        raise SVFormerError(f"{path}: {e}") from None


def get_cost_model(spec: str | Path | None = None) -> CostModel:
    """A preset by name (``fp32``, ``fp16``, ``int8``; default fp32) or a ``.toml`` file."""
    if spec is None:
        return PRESETS[DEFAULT]
    s = str(spec)
    if s.lower() in PRESETS:
        return PRESETS[s.lower()]
    if s.lower().endswith(".toml") or Path(s).is_file():
        return load_cost_model_toml(s)
    raise SVFormerError(f"unknown cost model {s!r}: use one of {', '.join(PRESETS)} or a .toml file")
