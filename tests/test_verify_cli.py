"""``svformer-deploy verify``: a received bundle checked file by file and run in real runtimes (onnxruntime, nir,
the installed NIR peers, Lava when its environment exists) against its own graph.

Small bundles are exported once per module: A (int8, onnx only: another model's ONNX file), B (int8, onnx + netx)
and C (float, nir: model.nir and the NIR part files).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import nir
import pytest
import torch
from conftest import cli_in_process as run
from conftest import one_error_line
from fixtures_models import make_model, single_thread  # noqa: F401
from svformer_deploy.export.bundle import load_bundle, sha256_file
from svformer_deploy.export.exporter import ExportOptions, export_checkpoint
from svformer_deploy.svformer.checkpoint import save_checkpoint

NO_LAVA = "/nonexistent/lava-venv"


def one_error(code: int, err: str, *fragments: str, exit_code: int = 2) -> str:
    line = one_error_line(code, err, *fragments, exit_code=exit_code)
    assert len([x for x in err.splitlines() if x.strip()]) == 1, err
    return line


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("verify")
    out = {}
    for name, seed, bits, targets in (("a", 0, 8, ("onnx",)), ("b", 3, 8, ("onnx", "netx")), ("c", 3, None, ("nir",))):
        ckpt = save_checkpoint(root / f"{name}.pt", make_model("3stg", seed=seed, time_steps=2, norm="bn"))
        opts = ExportOptions(output=root / f"{name}.svfd", weight_bits=bits, targets=targets, check_clips=2,
                             calibration_clips=4, onnx="unrolled")
        out[name] = export_checkpoint(ckpt, opts).output_dir
    return out


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def plain_nir_read_works(path: Path) -> bool:
    try:
        nir.read(str(path))
        return True
    except Exception:  # noqa: BLE001 - the same question verify asks
        return False


def test_verify_passes_on_a_fresh_bundle_and_prints_the_export_table(capsys, bundles, monkeypatch) -> None:
    monkeypatch.setenv("SVFORMER_LAVA_VENV", NO_LAVA)
    code, out, err = run(capsys, "verify", bundles["b"])
    assert code == 0, out + err
    for header in ("check", "max |dlogit|", "flips/ref spike", "precision", "recall", "first divergence",
                   "top-1 agreement", "neuron-steps agree"):
        assert header in out
    assert "bundle files (" in out and "onnx fixed (model.onnx, onnxruntime)" in out
    assert "Lava CUBA integer model" in out and "MISS" not in out
    assert f"skipped netx {len(load_bundle(bundles['b']).manifest['files']['netx'])} part files (Lava): " \
           f"no Lava environment at {NO_LAVA}" in out
    assert "warning: check clips are random" in out

    code, out, err = run(capsys, "verify", bundles["b"], "--json")
    assert code == 0, err
    doc = json.loads(out)
    m = load_bundle(bundles["b"]).manifest
    assert doc["passed"] is True and doc["misses"] == [] and doc["model_hash"] == m["model_hash"]
    assert doc["files_checked"] == sum(len(e) if isinstance(e, list) else 1 for e in m["files"].values())
    assert doc["inputs"]["check"] == "random" and doc["inputs"]["check_clips"] == 4
    sim = doc["fidelity"]["simulator integer (ir_int.json) vs reference"]
    assert sim["passed"] and sim["flips"] == 0 and sim["spikes_ref"] > 0 and sim["max_abs_diff"] == 0
    onnx = doc["fidelity"]["onnx fixed (model.onnx, onnxruntime)"]
    assert onnx["passed"] and onnx["max_abs_diff"] <= 1e-4 and onnx["clips"] == 4
    netx = next(v for k, v in doc["fidelity"].items() if "Lava CUBA integer model" in k)
    assert netx["passed"] and netx["flips"] == 0 and netx["spikes_ref"] > 0 and netx["flip_rate"] == 0
    assert netx["precision"] == netx["recall"] == 1.0 and netx["first_divergence"] is None and netx["layers"]
    lava = next(v for k, v in doc["fidelity"].items() if k.endswith("(Lava)"))
    assert lava["passed"] is None and NO_LAVA in lava["detail"]
    assert any(s["check"].endswith("(Lava)") and NO_LAVA in s["why"] for s in doc["skipped"])


def test_verify_reads_nir_and_runs_the_part_files_in_every_installed_peer(capsys, bundles, monkeypatch,
                                                                           tmp_path: Path) -> None:
    monkeypatch.setenv("SVFORMER_LAVA_VENV", NO_LAVA)
    torch_clips = tmp_path / "clips.pt"
    torch.save(torch.poisson(torch.full((2, 3, 2, 32, 32), 0.3), generator=torch.Generator().manual_seed(5)),
               torch_clips)
    code, out, err = run(capsys, "verify", bundles["c"], "--check-data", torch_clips, "--json")
    doc = json.loads(out)
    assert doc["inputs"] == {"check": str(torch_clips), "check_clips": 3, "kind": "events"} and not doc["warnings"]
    fid = doc["fidelity"]
    assert fid["nir model.nir (svformer-deploy reader)"]["passed"]
    sim = fid["simulator float (ir.json) vs reference"]
    assert sim["passed"] and sim["flips"] == 0 and sim["spikes_ref"] > 0 and sim["max_abs_diff"] <= 1e-9
    plain = fid["nir model.nir (plain nir.read)"]
    assert plain["passed"] is plain_nir_read_works(bundles["c"] / "model.nir")  # a miss until nir.read opens it
    assert "spikingjelly" in doc["peers_run"]
    for peer in ("snntorch", "norse"):
        assert (peer in doc["peers_run"]) is (importlib.util.find_spec(peer) is not None)
    n_parts = len(load_bundle(bundles["c"]).manifest["files"]["nir_parts"])
    for peer in doc["peers_run"]:
        row = fid[f"nir {n_parts} standard part files ({peer})"]
        assert row["passed"] and row["flips"] == 0 and row["spikes_ref"] > 0 and row["clips"] == 3
    others = {k: v["passed"] for k, v in fid.items() if k != "nir model.nir (plain nir.read)"}
    assert all(p is not False for p in others.values()), others
    assert code == (0 if plain["passed"] else 1), err
    assert doc["misses"] == ([] if plain["passed"] else ["nir model.nir (plain nir.read)"])


def test_an_onnx_file_from_another_bundle_is_a_miss_with_exit_1(capsys, bundles, tmp_path: Path,
                                                                monkeypatch) -> None:
    monkeypatch.setenv("SVFORMER_LAVA_VENV", NO_LAVA)
    bad = copy_bundle(bundles["b"], tmp_path / "swapped.svfd")
    other = copy_bundle(bundles["a"], tmp_path / "other.svfd")
    shutil.copyfile(other / "model.onnx", bad / "model.onnx")
    mpath = bad / "manifest.json"
    m = json.loads(mpath.read_text())
    m["files"]["onnx"].update(sha256=sha256_file(bad / "model.onnx"), bytes=(bad / "model.onnx").stat().st_size)
    mpath.write_text(json.dumps(m))  # re-hashed: the bundle is well-formed, its ONNX file is another model
    code, out, err = run(capsys, "verify", bad, "--json")
    line = one_error(code, err, "verification missed", "onnx fixed", exit_code=1)
    assert "(+" not in line  # the only miss
    doc = json.loads(out)
    row = doc["fidelity"]["onnx fixed (model.onnx, onnxruntime)"]
    assert row["passed"] is False and row["max_abs_diff"] > 1e-4
    assert doc["passed"] is False and doc["misses"] == ["onnx fixed (model.onnx, onnxruntime)"]
    code, out, _ = run(capsys, "verify", bad)
    assert code == 1 and "MISS" in out


def test_a_tampered_missing_or_foreign_bundle_is_one_error_line_exit_2(capsys, bundles, tmp_path: Path) -> None:
    bad = copy_bundle(bundles["b"], tmp_path / "tampered.svfd")
    netx = bad / load_bundle(bad).manifest["files"]["netx"][0]["path"]
    data = bytearray(netx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    netx.write_bytes(bytes(data))
    code, out, err = run(capsys, "verify", bad)
    one_error(code, err, netx.name, "SHA-256 mismatch")
    assert out == ""
    netx.unlink()
    code, _, err = run(capsys, "verify", bad)
    one_error(code, err, netx.name, "missing")
    code, _, err = run(capsys, "verify", tmp_path / "nothing.svfd")
    one_error(code, err, "no such export bundle")
    (tmp_path / "plain").mkdir()
    code, _, err = run(capsys, "verify", tmp_path / "plain")
    one_error(code, err, "not an export bundle")


@pytest.mark.slow
def test_verify_runs_the_netx_files_in_lava_when_its_environment_exists(capsys, bundles) -> None:
    from svformer_deploy.export.writers.netx_writer import default_lava_venv, lava_python

    if lava_python() is None:
        pytest.skip(f"no Lava environment at {default_lava_venv()} (make lava-venv)")
    code, out, err = run(capsys, "verify", bundles["b"], "--json")
    assert code == 0, err
    doc = json.loads(out)
    row = next(v for k, v in doc["fidelity"].items() if k.endswith("(Lava)"))
    assert row["passed"] and row["flips"] == 0 and row["spikes_ref"] > 0 and row["clips"] == 2
    assert not any(s["check"].endswith("(Lava)") for s in doc["skipped"])
