"""Bundles and IR files are untrusted input: malformed, tampered or escaping bundles give one ``error:`` line
naming the file and the problem (exit 2, no traceback, no run record), through ``simulate --model``."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import one_error_line
from fixtures_models import make_input, make_model
from svformer_deploy.deploy.cli import main
from svformer_deploy.export.bundle import BundleWriter
from svformer_deploy.export.passes.quantize import QuantConfig
from svformer_deploy.export.pipeline import run_pipeline
from svformer_deploy.svformer.checkpoint import default_preprocessing
from svformer_deploy.svformer.fileio import sha256_file, sha256_hex_pair


def build_bundle(path: Path, quantize: bool = False) -> Path:
    """A tiny 3-stage TDBN event model (T = 2, 32 x 32) exported as ``export`` does, without the writers
    (with ``quantize`` also its int8 graph ``ir_int.json``, calibrated on random event counts)."""
    model = make_model("3stg", img_size=32, time_steps=2, in_channels=2)
    cfg = model.cfg
    calib = make_input(model, batch=2, seed=3).abs().round() if quantize else None
    res = run_pipeline(model, quant=QuantConfig() if quantize else None, calibration=calib)
    with BundleWriter(path) as w:
        w.add_graph("ir", res.graphs["folded"], "ir.json")
        if quantize:
            w.add_graph("ir_quantized", res.graphs["quantized"], "ir_int.json")
        w.manifest.update(
            arch="3stg", config=cfg.to_dict(), class_names=[f"c{i}" for i in range(cfg.num_classes)],
            preprocessing=default_preprocessing(cfg), passes=list(res.graph.graph["passes"]),
            input={"layout": "TCHW", "shape": [cfg.time_steps, 2, 32, 32], "encoding": "events"})
    return path


def bundle_and_events(d: Path, seed: int, n: int) -> tuple[Path, Path]:
    """A tiny exported bundle ``d/m.svfd`` and an event recording ``d/ev.npy`` of ``n`` events (x, y, t, p)."""
    events = d / "ev.npy"
    rng = np.random.default_rng(seed)
    np.save(events, np.stack([rng.integers(0, 32, n), rng.integers(0, 32, n), np.arange(n) * 10,
                              rng.integers(0, 2, n)], axis=1).astype(np.int64))
    return build_bundle(d / "m.svfd"), events


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, Path]:
    return bundle_and_events(tmp_path_factory.mktemp("bundle"), seed=0, n=400)


@pytest.fixture
def bundle(pristine, tmp_path) -> Path:
    """A private copy of the valid bundle, to be damaged by the test."""
    return Path(shutil.copytree(pristine[0], tmp_path / "m.svfd"))


def simulate(capsys, bundle: Path, events: Path, tmp_path: Path) -> tuple[int, str, str]:
    code = main(["simulate", "--events", str(events), "--model", str(bundle), "--out", str(tmp_path / "runs"),
                 "--json"])
    out, err = capsys.readouterr()
    return code, out, err


def expect_error(capsys, bundle: Path, events: Path, tmp_path: Path, *fragments: str) -> str:
    code, out, err = simulate(capsys, bundle, events, tmp_path)
    line = one_error_line(code, err, *fragments)
    assert len([x for x in err.splitlines() if x.strip()]) == 1, err
    assert out == "" and not (tmp_path / "runs").exists()
    return line


def manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def write_manifest(bundle: Path, m: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(m, indent=1))


def rewrite(bundle: Path, role: str, data: bytes) -> None:
    """Replace ``role``'s file and update the manifest so that sizes and hashes agree (a careful forger)."""
    m = manifest(bundle)
    entry = m["files"][role]
    (bundle / entry["path"]).write_bytes(data)
    entry["sha256"], entry["bytes"] = sha256_file(bundle / entry["path"]), len(data)
    if role in ("ir", "ir_arrays"):
        m["model_hash"] = sha256_hex_pair(m["files"]["ir"]["sha256"], m["files"]["ir_arrays"]["sha256"])
    write_manifest(bundle, m)


def edit_graph(bundle: Path, change: Callable[[dict], None]) -> None:
    doc = json.loads((bundle / "ir.json").read_text())
    change(doc)
    rewrite(bundle, "ir", json.dumps(doc).encode())


def edit_arrays(bundle: Path, change: Callable[[dict], None]) -> None:
    with np.load(bundle / "ir.npz") as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    rewrite(bundle, "ir_arrays", data)
    edit_graph(bundle, lambda doc: doc.update(arrays_sha256=sha256_of(data)))


def sha256_of(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def node_with(doc: dict, op: str) -> dict:
    return next(n for n in doc["nodes"] if n["op"] == op)


# ---------------------------------------------------------------------------------------------
def test_the_valid_bundle_simulates(pristine, capsys, tmp_path):
    code, out, err = simulate(capsys, *pristine, tmp_path)
    assert code == 0, err
    assert json.loads(out)["time_steps"] == 2


@pytest.mark.parametrize("name", ["../ir.npz", "", "sub/../../x.npz", "/etc/passwd"])
def test_array_file_name_outside_the_folder_or_empty_is_refused(bundle, pristine, capsys, tmp_path, name):
    edit_graph(bundle, lambda doc: doc.update(arrays_file=name))
    expect_error(capsys, bundle, pristine[1], tmp_path, "ir.json", "arrays_file")


def test_array_key_that_is_not_in_the_npz_is_refused(bundle, pristine, capsys, tmp_path):
    edit_graph(bundle, lambda doc: node_with(doc, "conv2d")["arrays"].update(weight="../0.weight"))
    expect_error(capsys, bundle, pristine[1], tmp_path, "ir.json", "missing from the npz")


@pytest.mark.parametrize("files, fragment", [
    ([{"path": "ir.json"}], "files must be an object"),
    ({"ir": {"sha256": "0" * 64, "bytes": 1}, "ir_arrays": None}, "path must be a non-empty string"),
    ({"ir": {"path": 7, "sha256": "0" * 64, "bytes": 1}}, "path must be a non-empty string"),
    ({"ir": {"path": "ir.json", "sha256": "xyz", "bytes": 1}}, "sha256"),
    ({"ir": {"path": "ir.json", "sha256": "0" * 64, "bytes": -1}}, "bytes"),
], ids=["list", "no-path", "int-path", "bad-digest", "negative-size"])
def test_malformed_file_table_is_refused(bundle, pristine, capsys, tmp_path, files, fragment):
    m = manifest(bundle)
    m["files"] = files
    write_manifest(bundle, m)
    expect_error(capsys, bundle, pristine[1], tmp_path, "manifest.json", fragment)


@pytest.mark.parametrize("key, value, fragment", [
    ("size", "abc", "size must be an integer"),
    ("time_steps", None, "time_steps must be an integer"),
    ("std", 0, "std must be > 0"),
    ("std", [0.2, 0.0, 0.2], "std must be > 0"),
    ("mean", [[1]], "mean must be a finite number"),
    ("sensor_size", [2**62, 3], "sensor_size"),
], ids=["size-str", "t-null", "std-0", "std-list-0", "mean-nested", "sensor-huge"])
def test_malformed_preprocessing_is_refused(bundle, pristine, capsys, tmp_path, key, value, fragment):
    m = manifest(bundle)
    m["preprocessing"][key] = value
    write_manifest(bundle, m)
    expect_error(capsys, bundle, pristine[1], tmp_path, "manifest.json", "preprocessing", fragment)


def test_graph_time_steps_that_disagree_with_the_tdbn_arrays_are_refused(bundle, pristine, capsys, tmp_path):
    edit_graph(bundle, lambda doc: doc["graph"].update(time_steps=3))
    expect_error(capsys, bundle, pristine[1], tmp_path, "ir.json", "time steps", "T=3")


def test_per_step_array_with_another_t_is_refused(bundle, pristine, capsys, tmp_path):
    doc = json.loads((bundle / "ir.json").read_text())
    key = node_with(doc, "affine")["arrays"]["scale"]
    edit_arrays(bundle, lambda a: a.update({key: np.concatenate([a[key], a[key]])}))
    expect_error(capsys, bundle, pristine[1], tmp_path, "ir.json", "scale", "T=2")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_weights_are_refused(bundle, pristine, capsys, tmp_path, value):
    doc = json.loads((bundle / "ir.json").read_text())
    key = node_with(doc, "conv2d")["arrays"]["weight"]

    def poison(a):
        w = a[key].copy()
        w.flat[3] = value
        a[key] = w

    edit_arrays(bundle, poison)
    expect_error(capsys, bundle, pristine[1], tmp_path, "weight", "nan or infinite")


def test_complex_weights_are_refused(bundle, pristine, capsys, tmp_path):
    doc = json.loads((bundle / "ir.json").read_text())
    key = node_with(doc, "conv2d")["arrays"]["weight"]
    edit_arrays(bundle, lambda a: a.update({key: a[key].astype(np.complex128)}))
    expect_error(capsys, bundle, pristine[1], tmp_path, "ir.npz", "complex128", "not a real number type")


def test_nan_in_graph_json_is_refused(bundle, pristine, capsys, tmp_path):
    text = (bundle / "ir.json").read_text().replace('"v_threshold": 1.0', '"v_threshold": NaN', 1)
    assert "NaN" in text
    rewrite(bundle, "ir", text.encode())
    expect_error(capsys, bundle, pristine[1], tmp_path, "ir.json", "NaN")


@pytest.mark.parametrize("attr, value, fragment", [
    ("stride", "ab", "stride"), ("stride", [0, 0], "stride"), ("groups", 1.5, "groups"),
    ("padding", [1], "padding"),
])
def test_mistyped_attributes_are_refused(bundle, pristine, capsys, tmp_path, attr, value, fragment):
    edit_graph(bundle, lambda doc: node_with(doc, "conv2d")["attrs"].update({attr: value}))
    expect_error(capsys, bundle, pristine[1], tmp_path, "ir.json", fragment)


def test_tampered_npz_is_refused_by_its_hash(bundle, pristine, capsys, tmp_path):
    data = bytearray((bundle / "ir.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "ir.npz").write_bytes(bytes(data))
    expect_error(capsys, bundle, pristine[1], tmp_path, "ir.npz", "sha-256 mismatch")


def test_truncated_npz_is_refused_by_its_size(bundle, pristine, capsys, tmp_path):
    data = (bundle / "ir.npz").read_bytes()
    (bundle / "ir.npz").write_bytes(data[:-10])
    expect_error(capsys, bundle, pristine[1], tmp_path, "ir.npz", "bytes")


def test_model_hash_of_another_graph_is_refused(bundle, pristine, capsys, tmp_path):
    m = manifest(bundle)
    m["model_hash"] = "ab" * 32
    write_manifest(bundle, m)
    expect_error(capsys, bundle, pristine[1], tmp_path, "manifest.json", "model_hash")


@pytest.mark.parametrize("rel", ["../outside/ir.json", "/etc/hostname", "sub/../../ir.json", "./ir.json"])
def test_manifest_paths_leaving_the_bundle_are_refused(bundle, pristine, capsys, tmp_path, rel):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(bundle / "ir.json", outside / "ir.json")
    m = manifest(bundle)
    m["files"]["ir"]["path"] = rel
    write_manifest(bundle, m)
    expect_error(capsys, bundle, pristine[1], tmp_path, "inside the bundle")


def test_symlink_leaving_the_bundle_is_refused(bundle, pristine, capsys, tmp_path):
    outside = tmp_path / "elsewhere.npz"
    shutil.move(bundle / "ir.npz", outside)
    os.symlink(outside, bundle / "ir.npz")
    expect_error(capsys, bundle, pristine[1], tmp_path, "ir.npz", "outside the bundle")


def test_zero_dimensional_per_channel_array_is_refused(bundle, pristine, capsys, tmp_path):
    doc = json.loads((bundle / "ir.json").read_text())
    key = node_with(doc, "affine")["arrays"]["bias"]
    edit_arrays(bundle, lambda a: a.update({key: np.asarray(3.0)}))
    expect_error(capsys, bundle, pristine[1], tmp_path, "ir.json", "bias")


def test_weights_that_overflow_float32_give_an_error_not_infinity(bundle, pristine, capsys, tmp_path):
    doc = json.loads((bundle / "ir.json").read_text())
    keys = [n["arrays"]["weight"] for n in doc["nodes"] if n["op"] == "conv3d" or n["name"] == "head"]
    edit_arrays(bundle, lambda a: a.update({k: np.full_like(a[k], 1e29) for k in keys}))
    line = expect_error(capsys, bundle, pristine[1], tmp_path, "m.svfd", "non-finite logits")
    assert "Infinity" not in line


@pytest.mark.parametrize("key, value, fragment", [
    ("bits", np.asarray(-3, np.int64), "bits must be one integer in 1..32"),
    ("acc_bits", np.asarray([8, 8], np.int64), "acc_bits must be one integer"),
    ("weight", np.zeros((2, 2), np.int64), "weight shape"),
    ("shift", np.asarray(99, np.int64), "shift must be in -16..62"),
    ("shift", np.asarray(-17, np.int64), "shift must be in -16..62"),
])
def test_out_of_range_fixed_point_parameters_are_refused(tmp_path, pristine, capsys, key, value, fragment):
    bundle = build_bundle(tmp_path / "q.svfd", quantize=True)
    doc = json.loads((bundle / "ir_int.json").read_text())
    node = next(n for n in doc["nodes"] if key in n.get("quant", {}))
    npz_key = node["quant"][key]
    with np.load(bundle / "ir_int.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays[npz_key] = value
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    rewrite(bundle, "ir_quantized_arrays", buf.getvalue())
    doc["arrays_sha256"] = sha256_of(buf.getvalue())
    rewrite(bundle, "ir_quantized", json.dumps(doc).encode())
    code = main(["simulate", "--events", str(pristine[1]), "--model", str(bundle), "--integer",
                 "--out", str(tmp_path / "runs")])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("error:") == 1 and "internal error" not in err, err
    assert "ir_int.json" in err and fragment in err and node["name"] in err, err
    assert not (tmp_path / "runs").exists()
