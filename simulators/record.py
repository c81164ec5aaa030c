"""Run records (``docs/run-record.md``): THE schema, with building, writing, reading and validation.

One record per simulated clip view: the model (bundle hash, config, executor), the input, the
prediction, the timing and, per work node of the executed graph, its origin, stage and exact
counts over the clip and per time step (:mod:`simulators.counting`). The simulator writes records
with :func:`build_record` / :func:`write_records`; the energy report and the tests read them only
through :func:`read_record` / :func:`validate_record` and build them with :func:`layer_record` /
:func:`assemble_record`. Nothing else defines the format.

Records are written atomically; a set of records (the views of one clip) appears completely or
not at all, under names no other writer can take at the same time (``O_EXCL`` create).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from svformer_deploy.svformer.checks import is_int, is_number, short
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.fileio import write_new_file

if TYPE_CHECKING:
    from .counting import LayerInfo
    from .executor import SimResult, Simulator

FORMAT = "svformer-deploy/run-record"
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
DEFAULT_RUNS_DIR = "runs"
COUNT_KEYS = ("ac", "mac", "mul", "add", "neuron_updates", "neurons_active", "spikes_in", "spikes_out",
              "weight_reads", "state_reads", "state_writes")
MEMORY_KEYS = ("weight_reads", "state_reads", "state_writes")
TOTAL_KEYS = (*COUNT_KEYS, "spikes")  # ``totals``: every count key plus ``spikes`` (= spikes_out)
STAGE_PATTERN = re.compile(r"PE[1-9][0-9]*|S[1-9][0-9]*|LP|CH")

# limits of the reader (a record is untrusted input)
MAX_RECORD_BYTES = 256 << 20  # bytes of one record file
MAX_JSON_DEPTH = 64  # nesting of arrays/objects (real records nest 5 deep)
MAX_COUNT = 2**63 - 1  # any count, size or MAC figure (int64, what the simulator counts in)
MAX_TIME_STEPS = 4096
MAX_LAYER_STEPS = 50_000_000  # layers x time steps held in memory after normalising


class CorruptRecord(SVFormerError):
    """A file that claims to be (or must be) a run record but cannot be used."""


def firing_rate(spikes: int, neurons: int, steps: int) -> float:
    """spikes / (neurons x steps) (a fraction; NaN without neurons or steps)."""
    return spikes / (neurons * steps) if neurons and steps else math.nan


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tool_versions() -> dict[str, str]:
    from svformer_deploy.svformer.checkpoint import versions

    return versions()


def top_k(logits: np.ndarray, class_names: Sequence[str], k: int = 5) -> list[list[Any]]:
    """``[[label, score], ...]`` of the ``k`` largest logits (labels ``class_<i>`` when unnamed)."""
    order = np.argsort(-np.asarray(logits, dtype=np.float64), kind="stable")[:k]
    names = list(class_names)
    return [[names[i] if i < len(names) else f"class_{i}", float(logits[i])] for i in order]


# ------------------------------------------------------------------------------------------
# building
# ------------------------------------------------------------------------------------------
def layer_record(*, name: str, stage: str, op: str, origin: Sequence[str], input_kind: str,
                 input_neurons: Sequence[str], dense_macs: int, params: int,
                 per_step: Mapping[str, Sequence[int]], time_steps: int, neurons: int | None = None,
                 tau: float | None = None, v_threshold: float | None = None, word_bits: int | None = 32,
                 dense_bias_adds: int | None = None) -> dict[str, Any]:
    """One LAYER object from per-step counts (``{key: [T ints]}``; absent keys are zero).

    ``counts`` are the per-step sums. Keys that are zero over the clip are left out, except that a
    neuron layer always carries ``spikes_out`` (a silent layer has ``[0] * T``).
    """
    steps = {k: [int(v) for v in per_step[k]] for k in COUNT_KEYS if k in per_step and any(per_step[k])}
    if op == "neuron":
        steps.setdefault("spikes_out", [0] * time_steps)
    entry: dict[str, Any] = {
        "name": name, "stage": stage, "op": op, "origin": list(origin), "input_kind": input_kind,
        "input_neurons": list(input_neurons), "dense_macs": int(dense_macs), "params": int(params),
    }
    if dense_bias_adds is not None:
        entry["dense_bias_adds"] = int(dense_bias_adds)
    counts = {k: sum(v) for k, v in steps.items()}
    entry.update(counts=counts, per_step=steps)
    if op == "neuron":
        if neurons is None:
            raise ValueError(f"{name}: a neuron layer needs its neuron count")
        entry.update(neurons=int(neurons), firing_rate=firing_rate(counts["spikes_out"], neurons, time_steps),
                     tau=tau, v_threshold=v_threshold)
    if word_bits is not None:
        entry["word_bits"] = int(word_bits)
    return entry


def assemble_record(layers: Sequence[dict[str, Any]], *, time_steps: int, model: Mapping[str, Any],
                    input: Mapping[str, Any], executor: str, prediction: Mapping[str, Any],
                    timing: Mapping[str, Any], created: str | None = None, tool: Mapping[str, str] | None = None,
                    **extra: Any) -> dict[str, Any]:
    """A complete record around ``layers`` (from :func:`layer_record`); ``totals`` are derived."""
    totals = {k: sum(layer["counts"].get(k, 0) for layer in layers) for k in COUNT_KEYS}
    totals["spikes"] = totals["spikes_out"]
    return {
        "format": FORMAT, "version": VERSION, "created": created or utc_now(),
        "tool": dict(tool) if tool is not None else tool_versions(),
        "model": dict(model), "input": dict(input), "executor": executor, **extra, "time_steps": int(time_steps),
        "prediction": dict(prediction), "timing": dict(timing), "layers": list(layers), "totals": totals,
    }


def layer_entry(info: LayerInfo, table: np.ndarray, time_steps: int) -> dict[str, Any]:
    """One LAYER object of the record from a layer's static info and its ``[keys, T]`` count table."""
    return layer_record(
        name=info.name, stage=info.stage, op=info.op, origin=info.origin, input_kind=info.input_kind,
        input_neurons=info.input_neurons, dense_macs=info.dense_macs, params=info.params,
        per_step={k: table[i].tolist() for i, k in enumerate(COUNT_KEYS)}, time_steps=time_steps,
        neurons=info.neurons, tau=info.tau, v_threshold=info.v_threshold, word_bits=info.word_bits)


def build_record(sim: Simulator, result: SimResult, *, model: dict[str, Any], input: dict[str, Any],
                 class_names: Sequence[str] = ()) -> dict[str, Any]:
    """The run record of one simulated view.

    ``model``: at least ``hash`` (the bundle's ``model_hash``), plus ``bundle``, ``arch``, ``config``...;
    ``input``: ``kind``, ``path``, ``sha256``, ``view``, ``views``, ``frame_indices``.
    """
    if not result.counts:
        raise SVFormerError("a run record needs a simulation with counting enabled")
    T = sim.time_steps
    quant = sim.graph.graph.get("quant") or {}
    layers = [layer_entry(info, result.counts[info.name], T) for info in sim.layers]
    model_doc = {
        "class_names": list(class_names),
        "quantized": sim.mode == "integer",
        "weight_bits": int(quant["weight_bits"]) if sim.mode == "integer" and "weight_bits" in quant else None,
        "passes": list(sim.graph.graph.get("passes", [])),
        **model,
    }
    return assemble_record(
        layers, time_steps=T, model=model_doc, input=input, executor=sim.mode,
        dtype=str(sim.dtype).replace("torch.", "") if sim.mode == "float" else "int64", kernel=sim.policy.mode,
        prediction={"logits": [float(v) for v in result.logits], "top5": top_k(result.logits, class_names)},
        timing={"wall_s": result.wall_s, "per_step_s": list(result.step_seconds)})


# ------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------
def dumps(record: dict[str, Any]) -> str:
    """The record as JSON text: indented, one line per layer (records of big models stay readable)."""
    head = {k: v for k, v in record.items() if k != "layers"}
    lines = ",\n".join("  " + json.dumps(layer, allow_nan=False) for layer in record.get("layers", []))
    text = json.dumps(head, indent=1, allow_nan=False)
    return text[:-2] + ',\n "layers": [\n' + lines + "\n ]\n}\n"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "clip"


def record_name(stem: str, view: int, created: str | None = None) -> str:
    """``<UTC time stamp>_<input stem>_v<view>.json``."""
    stamp = (created or utc_now()).replace("-", "").replace(":", "")
    return f"{stamp}_{_safe(stem)}_v{view}.json"


def write_records(records: Sequence[dict[str, Any]], out_dir: str | Path, stem: str) -> list[Path]:
    """Write the records of one clip's views into ``out_dir`` (created if needed), atomically, all or none.

    File names follow :func:`record_name`; an existing file is never overwritten (a ``-<n>`` suffix is
    taken, atomically, so concurrent writers into one folder get distinct names). If any write
    fails, the records already written by this call are removed.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SVFormerError(f"{out}: exists and is not a folder (run records go into a folder)")
    texts = [dumps(rec).encode("utf-8") for rec in records]  # serialisation errors surface before any write
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SVFormerError(f"{out}: cannot create the run record folder ({e.strerror})") from None
    written: list[Path] = []
    try:
        for rec, text in zip(records, texts, strict=True):
            name = record_name(stem, int(rec["input"].get("view", 0)), rec.get("created"))
            written.append(write_new_file(out, name, text))
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        for d in created:  # folders this call created, innermost first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return written


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """One validated, normalised run record (one clip view) and the file it came from.

    Normalised: every layer has ``origin`` and all :data:`COUNT_KEYS` in ``counts`` (zeros for
    absent keys), and every neuron layer has ``per_step.spikes_out`` (zeros when it never fired).
    """

    path: Path
    data: dict[str, Any]

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.data["layers"]

    @property
    def model(self) -> dict[str, Any]:
        return self.data["model"]

    @property
    def model_hash(self) -> str:
        return self.data["model"]["hash"]

    @property
    def time_steps(self) -> int:
        return int(self.data["time_steps"])

    @property
    def executor(self) -> str:
        return str(self.data.get("executor", "float"))

    @property
    def input(self) -> dict[str, Any]:
        return self.data.get("input") or {}

    @property
    def top1(self) -> str | None:
        top5 = (self.data.get("prediction") or {}).get("top5") or []
        return str(top5[0][0]) if top5 else None

    @property
    def label(self) -> str:
        """The clip's class: ``input.label`` when present, else the predicted top-1 class."""
        lab = self.input.get("label")
        if isinstance(lab, str) and lab:
            return lab
        return self.top1 or "unknown"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = re.compile(rb"[\[\]{}]")


def json_depth(raw: bytes) -> int:
    """Deepest array/object nesting of the JSON text ``raw`` (strings skipped), without parsing it."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRINGS.sub(b"", raw)):
        if m.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_record_json(raw: bytes, source: str | Path) -> Any:
    """Parse record bytes with limits (size, nesting depth, no NaN/Infinity); :class:`CorruptRecord` else."""
    def bad(msg: str) -> CorruptRecord:
        return CorruptRecord(f"{source}: corrupt run record: {msg}")

    if len(raw) > MAX_RECORD_BYTES:
        raise bad(f"{len(raw)} bytes, more than the {MAX_RECORD_BYTES} a run record may have")
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise bad(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("not UTF-8 text") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise bad(f"invalid JSON ({e.msg} at line {e.lineno})") from None
    except (ValueError, RecursionError) as e:  # NaN/Infinity, integers of > 4300 digits, nesting
        raise bad(f"invalid JSON ({' '.join(str(e).split()) or type(e).__name__})") from None


def load_record_json(path: str | Path) -> Any:
    """The parsed JSON of a file that should be a run record (not yet validated)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_RECORD_BYTES:
            raise CorruptRecord(f"{path}: corrupt run record: {size} bytes, more than the {MAX_RECORD_BYTES} "
                                "a run record may have")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SVFormerError(f"{path}: run record not found") from None
    except IsADirectoryError:
        raise SVFormerError(f"{path}: is a folder, not a run record file") from None
    except OSError as e:
        raise SVFormerError(f"{path}: cannot read run record ({e.strerror})") from None
    return parse_record_json(raw, path)


def is_record_json(data: Any) -> bool:
    """True when ``data`` claims to be a run record (its ``format``), valid or not."""
    return isinstance(data, dict) and data.get("format") == FORMAT


def read_record(path: str | Path) -> RunRecord:
    """Read, validate and normalise one run record file (errors name the file and the reason)."""
    path = Path(path)
    if path.is_dir():
        raise SVFormerError(f"{path}: is a folder, not a run record file")
    data = load_record_json(path)
    return RunRecord(path=path, data=validate_record(data, path))


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------

def _is_count(v: Any) -> bool:
    return is_int(v) and 0 <= v <= MAX_COUNT



def _opt(v: Any, check: Callable[[Any], bool]) -> bool:
    return v is None or check(v)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _legacy_origin(name: str) -> list[str]:
    """Version 1 records had no ``origin``: a fused layer was named ``a+b`` with ``b`` relative to
    ``a``'s parent module (``blocks1.0.conv1+attn``). Derived once here, when a v1 record is read."""
    parts = name.split("+")
    prefix = parts[0].rsplit(".", 1)[0] + "." if "." in parts[0] else ""
    return [parts[0]] + [p if "." in p or not prefix else prefix + p for p in parts[1:]]


def validate_record(data: Any, source: str | Path) -> dict[str, Any]:
    """Check ``data`` against the schema and return it normalised (see :class:`RunRecord`).

    Raises :class:`CorruptRecord` naming ``source`` and the first problem found. Version 1
    records are accepted: their layers get ``origin`` from their names (see :func:`_legacy_origin`).
    """

    def bad(msg: str) -> CorruptRecord:
        return CorruptRecord(f"{source}: corrupt run record: {msg}")

    if not isinstance(data, dict):
        raise bad("the document is not a JSON object")
    if data.get("format") != FORMAT:
        raise bad(f"format is {short(data.get('format'))}, expected {FORMAT!r}")
    version = data.get("version")
    if not is_int(version) or version not in READABLE_VERSIONS:
        raise bad(f"unsupported version {short(version)} (this report reads versions "
                  f"{', '.join(map(str, READABLE_VERSIONS))})")
    model = data.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("hash"), str) or not model["hash"]:
        raise bad("model.hash is missing")
    for key, check in (("arch", lambda v: isinstance(v, str)), ("bundle", lambda v: isinstance(v, str)),
                       ("quantized", lambda v: isinstance(v, bool)), ("passes", _str_list),
                       ("weight_bits", lambda v: is_int(v) and 1 <= v <= 64),
                       ("config", lambda v: isinstance(v, dict)), ("class_names", _str_list)):
        if not _opt(model.get(key), check):
            raise bad(f"model.{key} has the wrong type ({type(model[key]).__name__})")
    if not isinstance(data.get("executor", "float"), str):
        raise bad("executor must be a string")
    T = data.get("time_steps")
    if not is_int(T) or not 1 <= T <= MAX_TIME_STEPS:
        raise bad(f"time_steps must be a positive integer (at most {MAX_TIME_STEPS}), got {short(T)}")
    inp = data.get("input")
    if inp is not None:
        if not isinstance(inp, dict):
            raise bad("input must be an object")
        for key, check in (("path", lambda v: isinstance(v, str)), ("sha256", lambda v: isinstance(v, str)),
                           ("label", lambda v: isinstance(v, str)), ("kind", lambda v: isinstance(v, str)),
                           ("view", lambda v: _is_count(v))):
            if not _opt(inp.get(key), check):
                raise bad(f"input.{key} has the wrong type ({type(inp[key]).__name__})")
    pred = data.get("prediction")
    if pred is not None:
        top5 = pred.get("top5") if isinstance(pred, dict) else None
        if not isinstance(top5, list) or not all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)
                                                 and is_number(e[1]) for e in top5):
            raise bad("prediction.top5 must be a list of [label, score] pairs")
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        raise bad("layers is missing or empty")
    if len(layers) * T > MAX_LAYER_STEPS:
        raise bad(f"{len(layers)} layers x {T} time steps is more than this reader holds ({MAX_LAYER_STEPS})")
    names: set[str] = set()
    neurons: set[str] = set()
    sums = dict.fromkeys(COUNT_KEYS, 0)
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise bad(f"layer {i} is not an object")
        where = f"layer {i}" + (f" ({layer['name']})" if isinstance(layer.get("name"), str) else "")
        for key in ("name", "stage", "op"):
            if not isinstance(layer.get(key), str) or not layer[key]:
                raise bad(f"{where}: {key} is missing")
        if not STAGE_PATTERN.fullmatch(layer["stage"]):
            raise bad(f"{where}: stage must be PE<i>, S<i>, LP or CH, got {short(layer['stage'])}")
        if layer["name"] in names:
            raise bad(f"duplicate layer name {short(layer['name'])}")
        names.add(layer["name"])
        if "origin" in layer:
            if not _str_list(layer["origin"]) or not layer["origin"]:
                raise bad(f"{where}: origin must be a non-empty list of module paths")
        elif version >= 2:
            raise bad(f"{where}: origin is missing")
        if layer.get("input_kind", "real") not in ("spike", "real"):
            raise bad(f"{where}: input_kind must be 'spike' or 'real', got {short(layer.get('input_kind'))}")
        inn = layer.get("input_neurons")
        if not _str_list(inn):
            raise bad(f"{where}: input_neurons must be a list of layer names")
        for key in ("dense_macs", "params", "dense_bias_adds"):
            if key in layer and not _is_count(layer[key]):
                raise bad(f"{where}: {key} must be a non-negative integer below 2^63, got {short(layer[key])}")
        if "dense_macs" not in layer:
            raise bad(f"{where}: dense_macs is missing")
        if layer["op"] in ("spike_matmul_kv", "spike_matmul_q_kv") and layer["dense_macs"] > 0 and not inn:
            raise bad(f"{where}: attention product without input_neurons")
        counts = layer.get("counts", {})
        if not isinstance(counts, dict):
            raise bad(f"{where}: counts must be an object")
        for key, v in counts.items():
            if key not in COUNT_KEYS:
                raise bad(f"{where}: unknown counter {short(key)} (known: {', '.join(COUNT_KEYS)})")
            if not _is_count(v):
                raise bad(f"{where}: counts.{key} must be a non-negative integer below 2^63, got {short(v)}")
            sums[key] += v
        per_step = layer.get("per_step", {})
        if not isinstance(per_step, dict):
            raise bad(f"{where}: per_step must be an object")
        for key, seq in per_step.items():
            if key not in COUNT_KEYS:
                raise bad(f"{where}: unknown per_step counter {short(key)}")
            if not isinstance(seq, list) or len(seq) != T or not all(_is_count(v) for v in seq):
                raise bad(f"{where}: per_step.{key} must be {T} non-negative integers")
            if sum(seq) != counts.get(key, 0):
                raise bad(f"{where}: per_step.{key} sums to {sum(seq)}, counts.{key} is {counts.get(key, 0)}")
        active = per_step.get("neurons_active")
        if active is not None:
            updates = per_step.get("neuron_updates") or [0] * T
            if any(a > u for a, u in zip(active, updates, strict=True)):
                raise bad(f"{where}: per_step.neurons_active is above per_step.neuron_updates")
        if layer.get("word_bits") is not None and (not is_int(layer["word_bits"])
                                                   or not 1 <= layer["word_bits"] <= 64):
            raise bad(f"{where}: word_bits must be an integer in 1..64")
        if layer["op"] == "neuron":
            _validate_neuron(layer, where, T, counts, bad)
            neurons.add(layer["name"])
    for layer in layers:
        missing = [n for n in layer["input_neurons"] if n not in neurons]
        if missing:
            raise bad(f"layer {layer['name']}: input_neurons {short(missing)} are not neuron layers of this record")
    totals = data.get("totals")
    if totals is not None:
        if not isinstance(totals, dict):
            raise bad("totals must be an object")
        for key, v in totals.items():
            if key in sums and v != sums[key]:
                raise bad(f"totals.{key} is {short(v)} but the layers sum to {sums[key]}")
    _normalise(data, T)
    return data


def _validate_neuron(layer: dict, where: str, T: int, counts: dict, bad: Callable[[str], CorruptRecord]) -> None:
    n = layer.get("neurons")
    if not _is_count(n) or n < 1:
        raise bad(f"{where}: neurons must be a positive integer below 2^63")
    fr = layer.get("firing_rate")
    if not is_number(fr) or not 0.0 <= fr <= 1.0:
        raise bad(f"{where}: firing_rate must be a number in [0, 1], got {short(fr)}")
    expected = counts.get("spikes_out", 0) / (n * T)
    if abs(fr - expected) > 1e-9 + 1e-6 * expected:
        raise bad(f"{where}: firing_rate {fr} does not match spikes_out / (neurons x T) = {expected:.6g}")
    for key in ("tau", "v_threshold"):
        if layer.get(key) is not None and not is_number(layer[key]):
            raise bad(f"{where}: {key} must be a finite number")
    if layer.get("tau") is not None and layer["tau"] <= 0:
        raise bad(f"{where}: tau must be > 0")


def _normalise(data: dict[str, Any], T: int) -> None:
    """Fill what the schema lets a writer leave out: zero counts, a silent layer's spikes, v1 origins."""
    for layer in data["layers"]:
        layer.setdefault("origin", _legacy_origin(layer["name"]))
        layer.setdefault("input_kind", "real")
        counts = layer.setdefault("counts", {})
        for key in COUNT_KEYS:
            counts.setdefault(key, 0)
        per_step = layer.setdefault("per_step", {})
        if layer["op"] == "neuron":
            per_step.setdefault("spikes_out", [0] * T)


