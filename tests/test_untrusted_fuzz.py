"""Property-based fuzzing of the bundle loader (behind ``simulate --model``) and the cost-model loader:
any mutation ends in success or one ``error:`` line with exit 2, never a traceback or an internal error."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from svformer_deploy.deploy.cli import main
from svformer_deploy.deploy.energy.cost_models import MAX_PJ, get_cost_model
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.fileio import sha256_file, sha256_hex_pair
from test_untrusted_bundle import build_bundle, bundle_and_events

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DEEP = "\u0000deep\u0000"  # replaced by 5,000 nested lists in the JSON text


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, Path]:
    return bundle_and_events(tmp_path_factory.mktemp("fuzz"), seed=1, n=300)


@pytest.fixture(scope="module")
def quantized(pristine, tmp_path_factory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("fuzzq") / "q.svfd", quantize=True)


def assert_contract(code: int, err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "internal error" not in err, err
    if code != 0:
        assert code == 2, err
        assert len(lines) == 1 and lines[0].startswith("error:"), err


def paths_of(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every (container path, key) in a JSON document, depth first."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        out.append((*prefix, k))
        out.extend(paths_of(v, (*prefix, k)))
    return out


values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 2**31, 2**63, 10**7]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 5e-324]),
    st.sampled_from(["", "../", "../../etc/passwd", "/etc/passwd", "ir.json", "ir.npz", "manifest.json",
                     "sub/../../x", "a" * 300, "abc", "0" * 64, DEEP]),
    st.text(max_size=12),
    st.lists(st.integers(-5, 5), max_size=4), st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)


def mutate_json(text: str, data) -> str:
    doc = json.loads(text)
    ops = data.draw(st.lists(st.sampled_from(["delete", "replace", "noise"]), min_size=1, max_size=3))
    for op in ops:
        if op == "noise":
            cut = data.draw(st.integers(0, len(text)))
            return text[:cut] + data.draw(st.sampled_from(["", "}", "NaN", "[", "1e999", "\"\\u0000"]))
        paths = paths_of(doc)
        if not paths:
            break
        path = paths[data.draw(st.integers(0, len(paths) - 1))]
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if op == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(values)
    out = json.dumps(doc)  # NaN/Infinity written as JSON's non-standard literals, as a careless writer would
    return out.replace(json.dumps(DEEP), "[" * 5000 + "]" * 5000)


def refresh_hashes(bundle: Path) -> None:
    """Make the manifest agree with the files again (sizes, SHA-256, model_hash): a careful forger."""
    try:
        m = json.loads((bundle / "manifest.json").read_text())
        for entry in m["files"].values():
            p = bundle / entry["path"]
            entry["sha256"], entry["bytes"] = sha256_file(p), p.stat().st_size
        m["model_hash"] = sha256_hex_pair(m["files"]["ir"]["sha256"], m["files"]["ir_arrays"]["sha256"])
        (bundle / "manifest.json").write_text(json.dumps(m))
    except (ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError):
        pass  # the manifest itself was mutated beyond repair: leave it as it is


def run_simulate(capsys, bundle: Path, events: Path, out: Path, *extra: str) -> tuple[int, str]:
    code = main(["simulate", "--events", str(events), "--model", str(bundle), "--out", str(out), *extra])
    _, err = capsys.readouterr()
    return code, err


@FUZZ
@given(data=st.data(), target=st.sampled_from(["manifest.json", "ir.json"]), rehash=st.booleans())
def test_mutated_manifest_or_graph_json_gives_success_or_one_error(pristine, capsys, data, target, rehash):
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(shutil.copytree(pristine[0], Path(tmp) / "m.svfd"))
        path = bundle / target
        path.write_text(mutate_json(path.read_text(), data))
        if rehash:
            if target == "ir.json":
                refresh_hashes(bundle)
        code, err = run_simulate(capsys, bundle, pristine[1], Path(tmp) / "runs")
        assert_contract(code, err)


@FUZZ
@given(data=st.data(), rehash=st.booleans())
def test_truncated_or_flipped_npz_gives_success_or_one_error(pristine, capsys, data, rehash):
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(shutil.copytree(pristine[0], Path(tmp) / "m.svfd"))
        npz = bundle / "ir.npz"
        raw = bytearray(npz.read_bytes())
        if data.draw(st.booleans()):
            raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
        else:
            for pos in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
                raw[pos] ^= data.draw(st.integers(1, 255))
        npz.write_bytes(bytes(raw))
        if rehash:  # consistent hashes everywhere: the npz content itself must be checked
            doc = json.loads((bundle / "ir.json").read_text())
            doc["arrays_sha256"] = sha256_file(npz)
            (bundle / "ir.json").write_text(json.dumps(doc))
            refresh_hashes(bundle)
        code, err = run_simulate(capsys, bundle, pristine[1], Path(tmp) / "runs")
        assert_contract(code, err)


array_edits = st.sampled_from(["nan", "inf", "huge", "negative", "zero", "complex", "int", "bool", "object_free_str",
                               "drop_axis", "add_axis", "grow", "shrink", "empty", "delete", "scalar"])


def forge_array(a: np.ndarray, edit: str) -> np.ndarray | None:
    if edit in ("nan", "inf", "huge", "negative", "zero"):
        a = a.astype(np.float64, copy=True)
        if a.size:
            a.flat[0] = {"nan": np.nan, "inf": np.inf, "huge": 1e300, "negative": -1e9, "zero": 0.0}[edit]
        return a
    return {"complex": lambda: a.astype(np.complex64), "int": lambda: a.astype(np.int64),
            "bool": lambda: a != 0, "object_free_str": lambda: a.astype(str),
            "drop_axis": lambda: a.reshape(-1) if a.ndim > 1 else a[:0], "add_axis": lambda: a[None],
            "grow": lambda: np.concatenate([a, a]) if a.ndim else a[None], "shrink": lambda: a[: max(len(a) - 1, 0)]
            if a.ndim else a, "empty": lambda: np.zeros((0,), a.dtype), "delete": lambda: None,
            "scalar": lambda: np.float64(3.0)}[edit]()


@FUZZ
@given(data=st.data())
def test_forged_arrays_with_consistent_hashes_give_success_or_one_error(pristine, capsys, data):
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(shutil.copytree(pristine[0], Path(tmp) / "m.svfd"))
        with np.load(bundle / "ir.npz") as z:
            arrays = {k: z[k] for k in z.files}
        for _ in range(data.draw(st.integers(1, 3))):
            key = data.draw(st.sampled_from(sorted(arrays)))
            forged = forge_array(arrays[key], data.draw(array_edits))
            if forged is None:
                del arrays[key]
            else:
                arrays[key] = forged
            if not arrays:
                break
        np.savez(bundle / "ir.npz", **arrays)
        doc = json.loads((bundle / "ir.json").read_text())
        doc["arrays_sha256"] = sha256_file(bundle / "ir.npz")
        (bundle / "ir.json").write_text(json.dumps(doc))
        refresh_hashes(bundle)
        code, err = run_simulate(capsys, bundle, pristine[1], Path(tmp) / "runs")
        assert_contract(code, err)


quant_edits = st.sampled_from(["huge", "negative", "shape", "float", "zero", "scalar", "delete", "bits-out", "3d"])


def forge_quant(a: np.ndarray, edit: str) -> np.ndarray | None:
    big = np.iinfo(a.dtype).max if a.dtype.kind in "iu" else 1e29
    return {"huge": lambda: np.full_like(a, big), "negative": lambda: -np.abs(a) - 5,
            "shape": lambda: np.concatenate([a.reshape(-1), a.reshape(-1)]),
            "float": lambda: a.astype(np.float64) + 0.5,
            "zero": lambda: np.zeros_like(a), "scalar": lambda: np.asarray(7, a.dtype), "delete": lambda: None,
            "bits-out": lambda: np.asarray(99, np.int64), "3d": lambda: a.reshape(1, 1, -1)}[edit]()


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_forged_fixed_point_parameters_give_success_or_one_error(pristine, quantized, capsys, data):
    """The integer executor's graph: quant arrays changed, hashes made consistent, run with --integer."""
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(shutil.copytree(quantized, Path(tmp) / "q.svfd"))
        npz = bundle / "ir_int.npz"
        with np.load(npz) as z:
            arrays = {k: z[k] for k in z.files}
        keys = sorted(k for k in arrays if ".quant." in k)
        for _ in range(data.draw(st.integers(1, 3))):
            key = data.draw(st.sampled_from(keys))
            if key not in arrays:
                continue
            forged = forge_quant(arrays[key], data.draw(quant_edits))
            if forged is None:
                del arrays[key]
            else:
                arrays[key] = forged
        np.savez(npz, **arrays)
        doc = json.loads((bundle / "ir_int.json").read_text())
        doc["arrays_sha256"] = sha256_file(npz)
        (bundle / "ir_int.json").write_text(json.dumps(doc))
        refresh_hashes(bundle)
        code, err = run_simulate(capsys, bundle, pristine[1], Path(tmp) / "runs", "--integer")
        assert_contract(code, err)


# -- cost models -------------------------------------------------------------------------------------
KEYS = ["e_mac_pj", "e_ac_pj", "e_mul_pj", "e_add_pj", "e_mem_pj_per_64bit", "e_neuron_update_pj", "name",
        "description", "source", "memory_source", "base", "extra"]


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v > 0 else "-inf") if abs(v) == float("inf") else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


toml_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0.0, 4.6, 1e6, 1e6 + 1, 1e308, -0.0]), st.booleans(),
    st.sampled_from(["fp32", "int8", "fp64", "", "x" * 20_000]), st.text(max_size=8),
    st.lists(st.floats(allow_nan=False), max_size=3), st.dictionaries(st.sampled_from(["a", "b"]), st.integers()),
)


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.dictionaries(st.sampled_from(KEYS), toml_values, max_size=8),
       junk=st.sampled_from(["", "= =", "\x00"]))
def test_fuzzed_cost_model_loads_in_range_or_gives_one_error(capsys, entries, junk):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chip.toml"
        path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in entries.items()) + junk)
        try:
            cm = get_cost_model(str(path))
        except SVFormerError as e:
            assert str(path) in str(e)
        else:
            numbers = [cm.e_mac_pj, cm.e_ac_pj, cm.e_mul_pj, cm.e_add_pj, cm.e_mem_pj_per_64bit, cm.e_neuron_update_pj]
            assert all(0 <= x <= MAX_PJ for x in numbers)
        code = main(["energy-report", tmp, "--cost-model", str(path), "--json"])
        out, err = capsys.readouterr()
        assert_contract(code, err)
        assert "Infinity" not in out and "NaN" not in out
