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
from dataclasses import asdict, dataclass, field, replace
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


def load_cost_model_toml(path: str | Path) -> CostModel | ChipModel:
    """A user-defined cost model from a TOML file (``kind = "chip"``: a chip table, see :class:`ChipModel`).

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
    if data.get("kind", "ops") == "chip":
        return _chip_from_toml(path, data)
    if data.get("kind", "ops") != "ops":
        raise SVFormerError(f"{path}: kind must be \"ops\" (a 45 nm-style cost model) or \"chip\", "
                            f"got {data['kind']!r}")
    data = {k: v for k, v in data.items() if k != "kind"}
    base = _toml_base(path, data, _ALLOWED, PRESETS, "cost model", "preset")
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


def get_cost_model(spec: str | Path | None = None) -> CostModel | ChipModel:
    """A preset by name (``fp32``, ``fp16``, ``int8``, chip ``loihi``; default fp32) or a ``.toml`` file
    (a 45 nm-style cost model, or a chip table with ``kind = "chip"``)."""
    if spec is None:
        return PRESETS[DEFAULT]
    s = str(spec)
    if s.lower() in PRESETS:
        return PRESETS[s.lower()]
    if s.lower() in CHIPS:
        return CHIPS[s.lower()]
    if s.lower().endswith(".toml") or Path(s).is_file():
        return load_cost_model_toml(s)
    raise SVFormerError(f"unknown cost model {s!r}: use one of {', '.join([*PRESETS, *CHIPS])} or a .toml file")


def get_chip(spec: str | Path) -> ChipModel:
    """A chip table: a preset name (``loihi``) or a TOML file with ``kind = "chip"``."""
    model = get_cost_model(spec)
    if not isinstance(model, ChipModel):
        raise SVFormerError(f"{spec}: {model.name!r} is a 45 nm cost model, not a chip table "
                            f"(chips: {', '.join(CHIPS)} or a TOML file with kind = \"chip\")")
    return model


# =============================================================================================
# Neuromorphic chip tables: energy and time per event, per-core limits, mesh geometry
# =============================================================================================
DAVIES_2018 = ('M. Davies et al., "Loihi: A Neuromorphic Manycore Processor with On-Chip Learning", '
               "IEEE Micro 38(1):82-99, 2018, Table 2 (pre-silicon SDF/SPICE figures at 0.75 V)")
LOIHI_TRANSCRIPTION = ("secondary transcription: SLAM-Lab/SANA-FE sim.h at commit ae570278870e "
                       "(2022-04-09), which states the figures are taken from Davies et al. 2018")

CHIP_ENERGY_KEYS = ("synaptic_op", "neuron_update_active", "neuron_update_inactive", "spike_within_tile",
                    "hop_east_west", "hop_north_south")
"""Energy per event (pJ), all required: one synaptic spike operation (a spike arriving at one synapse),
one neuron (compartment) update with / without input in the step, one spike message to a core of the
same tile, one mesh hop east-west / north-south."""
CHIP_TIME_KEYS = ("synaptic_op", "neuron_update_active", "neuron_update_inactive", "spike_within_tile",
                  "hop_east_west", "hop_north_south", "barrier_sync_one_tile", "barrier_sync_all_tiles")
"""Time per event (ns), same events plus the mesh-wide barrier at the end of a step (one tile / every tile)."""
CHIP_LIMIT_KEYS = ("cores_per_chip", "cores_per_tile", "mesh_tiles_x", "mesh_tiles_y", "compartments_per_core",
                   "synaptic_memory_bytes_per_core", "fan_in_axons_per_core", "fan_out_edges_per_core",
                   "max_weight_bits")
"""Integers: the mesh (cores per chip = cores per tile x tiles x x tiles y) and the per-core limits."""
MAX_LIMIT = 1 << 40


@dataclass(frozen=True)
class ChipModel:
    """A neuromorphic chip's per-event energies (pJ) and times (ns), per-core limits and mesh.

    ``host`` names the 45 nm cost model (a preset or a TOML file) that prices what stays on the host;
    ``boundary_word_bits``: each event crossing the host/chip boundary is one host memory access of a
    word of this many bits (priced by the host model's memory figure). ``provenance`` maps a figure
    name (``energy.synaptic_op``, ``limits.cores_per_chip``, ...) to where it comes from.
    """

    name: str
    description: str
    source: str
    energy_pj: dict[str, float]
    time_ns: dict[str, float]
    limits: dict[str, int]
    host: str = DEFAULT
    boundary_word_bits: int = 32
    provenance: dict[str, str] = field(default_factory=dict)
    gaps: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key in ("name", "description", "source", "host"):
            v = getattr(self, key)
            if not isinstance(v, str) or not v.strip() or len(v) > MAX_TEXT:
                raise SVFormerError(f"chip model: {key} must be a non-empty string of at most {MAX_TEXT} characters")
        for table, keys, unit in (("energy_pj", CHIP_ENERGY_KEYS, "pJ"), ("time_ns", CHIP_TIME_KEYS, "ns")):
            got = getattr(self, table)
            if not isinstance(got, dict):
                raise SVFormerError(f"chip model {self.name!r}: [{table}] must be a table")
            _exact_keys(self.name, table, got, keys)
            for k, v in got.items():
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                        or not 0 <= v <= MAX_PJ:
                    raise SVFormerError(f"chip model {self.name!r}: {table}.{k} must be a finite number >= 0 and "
                                        f"<= {MAX_PJ:g} ({unit}), got {v!r}")
        if not isinstance(self.limits, dict):
            raise SVFormerError(f"chip model {self.name!r}: [limits] must be a table")
        _exact_keys(self.name, "limits", self.limits, CHIP_LIMIT_KEYS)
        for k, v in self.limits.items():
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_LIMIT:
                raise SVFormerError(f"chip model {self.name!r}: limits.{k} must be an integer in 1..{MAX_LIMIT}, "
                                    f"got {v!r}")
        lim = self.limits
        if lim["cores_per_tile"] * lim["mesh_tiles_x"] * lim["mesh_tiles_y"] != lim["cores_per_chip"]:
            raise SVFormerError(f"chip model {self.name!r}: cores_per_tile x mesh_tiles_x x mesh_tiles_y must equal "
                                f"cores_per_chip ({lim['cores_per_tile']} x {lim['mesh_tiles_x']} x "
                                f"{lim['mesh_tiles_y']} != {lim['cores_per_chip']})")
        if self.time_ns["barrier_sync_one_tile"] > self.time_ns["barrier_sync_all_tiles"]:
            raise SVFormerError(f"chip model {self.name!r}: barrier_sync_one_tile is above barrier_sync_all_tiles")
        if isinstance(self.boundary_word_bits, bool) or not isinstance(self.boundary_word_bits, int) \
                or not 1 <= self.boundary_word_bits <= 64:
            raise SVFormerError(f"chip model {self.name!r}: boundary_word_bits must be an integer in 1..64")
        if not isinstance(self.provenance, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and len(v) <= MAX_TEXT for k, v in self.provenance.items()):
            raise SVFormerError(f"chip model {self.name!r}: [provenance] must map figure names to strings")
        if not all(isinstance(g, str) and len(g) <= MAX_TEXT for g in self.gaps):
            raise SVFormerError(f"chip model {self.name!r}: gaps must be a list of strings")

    def host_model(self) -> CostModel:
        """The cost model of the host parts (``host``: a preset name or a TOML file)."""
        host = get_cost_model(self.host)
        if not isinstance(host, CostModel):
            raise SVFormerError(f"chip model {self.name!r}: host {self.host!r} is a chip, not a 45 nm cost model")
        return host

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = "chip"
        d["gaps"] = list(self.gaps)
        return d

    def label(self) -> str:
        return (f"{self.name} (synaptic op {self.energy_pj['synaptic_op']:g} pJ, neuron update "
                f"{self.energy_pj['neuron_update_active']:g}/{self.energy_pj['neuron_update_inactive']:g} pJ; "
                f"host {self.host})")

    def to_toml(self) -> str:
        """The chip as a TOML cost-model file (:func:`load_cost_model_toml` reads it back equal)."""
        def s(v: str) -> str:
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

        lines = ['kind = "chip"', f"name = {s(self.name)}", f"description = {s(self.description)}",
                 f"source = {s(self.source)}", f"host = {s(self.host)}",
                 f"boundary_word_bits = {self.boundary_word_bits}",
                 "gaps = [" + ", ".join(s(g) for g in self.gaps) + "]", "", "[energy_pj]"]
        lines += [f"{k} = {self.energy_pj[k]!r}" for k in CHIP_ENERGY_KEYS]
        lines += ["", "[time_ns]"] + [f"{k} = {self.time_ns[k]!r}" for k in CHIP_TIME_KEYS]
        lines += ["", "[limits]"] + [f"{k} = {self.limits[k]}" for k in CHIP_LIMIT_KEYS]
        if self.provenance:
            lines += ["", "[provenance]"] + [f"{s(k)} = {s(v)}" for k, v in self.provenance.items()]
        return "\n".join(lines) + "\n"


def _exact_keys(name: str, table: str, got: dict[str, Any], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in got]
    unknown = sorted(set(got) - set(keys))
    if missing or unknown:
        what = "; ".join(x for x in (f"missing {', '.join(missing)}" if missing else "",
                                     f"unknown {', '.join(unknown)}" if unknown else "") if x)
        raise SVFormerError(f"chip model {name!r}: [{table}] {what} (keys: {', '.join(keys)})")


_T2 = "Davies et al. 2018, Table 2, via " + LOIHI_TRANSCRIPTION
LOIHI = ChipModel(
    name="loihi",
    description="Intel Loihi (14 nm FinFET), per-event figures of Davies et al. 2018 Table 2 at 0.75 V; "
                "host parts on the 45 nm fp32 model",
    source=f"{DAVIES_2018}; figures read from a {LOIHI_TRANSCRIPTION}, corroborated by nengo/keras-spiking "
           "keras_spiking/model_energy.py (23.6 pJ, 81 pJ); limits from Davies et al. 2018 p. 86 and p. 89",
    energy_pj={"synaptic_op": 23.6, "neuron_update_active": 81.0, "neuron_update_inactive": 52.0,
               "spike_within_tile": 1.7, "hop_east_west": 3.0, "hop_north_south": 4.0},
    time_ns={"synaptic_op": 3.5, "neuron_update_active": 8.4, "neuron_update_inactive": 5.3,
             "spike_within_tile": 2.1, "hop_east_west": 4.1, "hop_north_south": 6.5,
             "barrier_sync_one_tile": 113.0, "barrier_sync_all_tiles": 465.0},
    limits={"cores_per_chip": 128, "cores_per_tile": 4, "mesh_tiles_x": 8, "mesh_tiles_y": 4,
            "compartments_per_core": 1024, "synaptic_memory_bytes_per_core": 131072,
            "fan_in_axons_per_core": 4096, "fan_out_edges_per_core": 4096, "max_weight_bits": 9},
    host=DEFAULT,
    boundary_word_bits=32,
    provenance={
        "energy_pj.synaptic_op": f"{_T2}: 'energy per synaptic spike op (min)' 23.6 pJ",
        "energy_pj.neuron_update_active": f"{_T2}: 'energy per neuron update (active / inactive)' 81 pJ",
        "energy_pj.neuron_update_inactive": f"{_T2}: 'energy per neuron update (active / inactive)' 52 pJ",
        "energy_pj.spike_within_tile": f"{_T2}: 'within-tile spike energy' 1.7 pJ",
        "energy_pj.hop_east_west": f"{_T2}: 'energy per tile hop (E-W / N-S)' 3.0 pJ",
        "energy_pj.hop_north_south": f"{_T2}: 'energy per tile hop (E-W / N-S)' 4.0 pJ",
        "time_ns.synaptic_op": f"{_T2}: 'time per synaptic spike op (max)' 3.5 ns",
        "time_ns.neuron_update_active": f"{_T2}: 'time per neuron update (active / inactive)' 8.4 ns",
        "time_ns.neuron_update_inactive": f"{_T2}: 'time per neuron update (active / inactive)' 5.3 ns",
        "time_ns.spike_within_tile": f"{_T2}: 'within-tile spike latency' 2.1 ns",
        "time_ns.hop_east_west": f"{_T2}: 'latency per tile hop (E-W / N-S)' 4.1 ns",
        "time_ns.hop_north_south": f"{_T2}: 'latency per tile hop (E-W / N-S)' 6.5 ns",
        "time_ns.barrier_sync_one_tile": f"{_T2}: 'mesh-wide barrier sync time (1-32 tiles)' 113-465 ns, low end",
        "time_ns.barrier_sync_all_tiles": f"{_T2}: 'mesh-wide barrier sync time (1-32 tiles)' 113-465 ns, high end",
        "limits.cores_per_chip": "Davies et al. 2018 p. 86: 128 neuromorphic cores (transcribed in SANA-FE "
                                 "sim.h ae570278: MAX_CORES_LOIHI 128)",
        "limits.compartments_per_core": "Davies et al. 2018 p. 86 and p. 89 (constraint 1): 1,024 compartments "
                                        "(SANA-FE sim.h ae570278: MAX_COMPARTMENTS 1024)",
        "limits.synaptic_memory_bytes_per_core": "Davies et al. 2018 p. 89 (constraint 2): 128 KB of synaptic "
                                                 "fan-in state per core (secondary: research notes in the public code "
                                                 "index quoting constraint 2 and Davies et al. 2021, Proc. IEEE "
                                                 "109(5), 'each core contains 128 kB of synaptic state')",
        "limits.fan_in_axons_per_core": "Davies et al. 2018 p. 89 (constraint 4): 4,096 input axon routing slots "
                                        "(SANA-FE arch/loihi.yaml: fan_in 4096)",
        "limits.fan_out_edges_per_core": "Davies et al. 2018 p. 89 (constraint 3): 4,096 core-to-core fan-out edges "
                                         "(SANA-FE sim.h ae570278: FAN_OUT 4096)",
        "limits.max_weight_bits": "Davies et al. 2018 p. 87: weight precision of 1 to 9 bits (secondary: research "
                                  "note in the public code index quoting p. 87)",
        "limits.cores_per_tile": "not stated in the paper: 128 cores / 32 tiles (Table 2's barrier range, 1-32 "
                                 "tiles); 4 cores per tile as in SANA-FE sim.h (CORES_PER_TILE 4)",
        "limits.mesh_tiles_x": "not stated in the paper: the 8 x 4 tile grid of SANA-FE's Loihi architecture "
                               "file (arch/loihi.yaml, width 8, height 4)",
        "limits.mesh_tiles_y": "not stated in the paper: see mesh_tiles_x",
        "boundary_word_bits": "convention of this toolchain: one 32-bit host memory word per event crossing "
                              "the host/chip boundary, priced by the host model",
    },
    gaps=("barrier synchronisation energy: Table 2 gives barrier time only; not priced",
          "static (leakage) power: not in Table 2; not priced",
          "chip-to-chip links: not in Table 2; spikes between chips are priced as ordinary tile hops",
          "host/chip interface energy: not in Table 2; boundary events are priced on the host model only",
          "synaptic update (learning) 120 pJ / 6.1 ns: inference does not learn; not used"),
)
CHIPS: dict[str, ChipModel] = {"loihi": LOIHI}


_CHIP_TOP = {"kind", "name", "description", "source", "host", "boundary_word_bits", "gaps", "base",
             "energy_pj", "time_ns", "limits", "provenance"}


def _toml_base(path: Path, data: dict[str, Any], allowed: set[str], presets: dict[str, Any], what: str,
               preset: str) -> Any:
    """Refuse keys outside ``allowed``; the preset named by ``base`` (or None) that the file overrides."""
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise SVFormerError(f"{path}: unknown {what} key(s) {', '.join(unknown)}; "
                            f"allowed: {', '.join(sorted(allowed))}")
    if "base" not in data:
        return None
    if not isinstance(data["base"], str) or data["base"] not in presets:
        raise SVFormerError(f"{path}: base {data['base']!r} is not a {preset} ({', '.join(presets)})")
    return presets[data["base"]]


def _chip_from_toml(path: Path, data: dict[str, Any]) -> ChipModel:
    """A :class:`ChipModel` from parsed TOML; ``base = "loihi"`` starts from a preset chip and overrides."""
    base = _toml_base(path, data, _CHIP_TOP, CHIPS, "chip", "chip preset")
    values: dict[str, Any] = {}
    for key in ("energy_pj", "time_ns", "limits", "provenance"):
        if key in data:
            if not isinstance(data[key], dict):
                raise SVFormerError(f"{path}: [{key}] must be a table")
            values[key] = ({**getattr(base, key), **data[key]} if base is not None else dict(data[key]))
        elif base is not None:
            values[key] = dict(getattr(base, key))
        elif key != "provenance":
            raise SVFormerError(f"{path}: chip table [{key}] is missing (or set base = \"loihi\")")
    for key in ("name", "description", "source", "host", "boundary_word_bits"):
        if key in data:
            values[key] = data[key]
    if "gaps" in data:
        if not isinstance(data["gaps"], list):
            raise SVFormerError(f"{path}: gaps must be a list of strings")
        values["gaps"] = tuple(data["gaps"])
    values.setdefault("name", path.stem)
    if base is None:
        values.setdefault("description", "user-defined chip")
        values.setdefault("source", str(path))
        return _build(path, lambda: ChipModel(**values))
    values.setdefault("description", f"{base.name} chip with overrides from {path.name}")
    values.setdefault("source", f"{base.source}; overrides from {path}")
    return _build(path, lambda: replace(base, **values))
