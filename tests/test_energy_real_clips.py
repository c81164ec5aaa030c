"""Done-when: a folder of real clips of mixed quality through `energy-report --videos DIR --model BUNDLE`.

The folder is built in a temporary directory from the real clips of ``$SVFORMER_DATA/video``
(symlinked, never copied into the repository) plus broken files; the bad ones are reported, the
good ones aggregated.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import data_path
from fixtures_models import single_thread  # noqa: F401
from svformer_deploy.deploy.cli import main
from svformer_deploy.simulators.record import read_record
from test_sim_cli import make_bundle

GOOD = {  # class folder / name in the test folder -> real clip
    "tai_chi/tai chi ñ.mp4": "tai_chi.mp4",
    "lifting/clean_and_jerk.mp4": "clean_and_jerk.mp4",
    "lifting/é.mp4": "arm_wrestling_kinetics.mp4",
    "makeup/eye_makeup_ucf101.avi": "eye_makeup_ucf101.avi",
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b") / "rgb.svfd", img_size=64, time_steps=8, quantize=False)


def _mixed_folder(root: Path) -> Path:
    videos = data_path("video")
    for rel, src in GOOD.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(videos / src)
    (root / "lifting" / "truncated.mp4").write_bytes((videos / "clean_and_jerk.mp4").read_bytes()[:4096])
    (root / "makeup" / "empty.mp4").write_bytes(b"")
    (root / "makeup" / "notes.mp4").write_text("these are notes, not a video\n")
    (root / "readme.txt").write_text("not a clip")
    return root


@pytest.mark.parametrize("workers", [2, 1])
def test_real_clips_of_mixed_quality_are_aggregated_and_the_bad_ones_reported(tmp_path, bundle, capsys, workers):
    videos = _mixed_folder(tmp_path / "clips")
    runs = tmp_path / "runs"
    args = ["energy-report", "--videos", videos, "--model", bundle, "--runs", runs, "--workers", workers, "--json"]
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["clips"] == len(GOOD) == report["videos"]
    assert {c["class"]: c["clips"] for c in report["per_class"]} == {"lifting": 2, "makeup": 1, "tai_chi": 1}
    warnings = [line for line in err.splitlines() if line.startswith("warning: skipped clip")]
    assert len(warnings) == 3 and not [line for line in err.splitlines() if line.startswith("error:")]
    for bad in ("truncated.mp4", "empty.mp4", "notes.mp4"):
        assert sum(bad in w for w in warnings) == 1, (bad, warnings)
    assert f"simulated {len(GOOD)} clip(s), 0 from earlier runs, 3 failed" in err
    records = [read_record(p) for p in sorted(runs.rglob("*.json"))]
    assert len(records) == len(GOOD)
    assert {Path(r.input["path"]).name for r in records} == set(GOOD.values())  # resolved through the symlinks
    for r in records:
        assert all(layer["origin"] and layer["stage"] for layer in r.layers)
        assert all(len(layer["per_step"]["spikes_out"]) == 8 for layer in r.layers if layer["op"] == "neuron")
    assert report["methods"]["exact"]["energy_mj"] > 0 and report["methods"]["paper_eq13"]["energy_mj"] > 0


def test_records_of_real_clips_report_together_from_the_runs_folder(tmp_path, bundle, capsys):
    """`simulate` on real clips one by one, then `energy-report runs/` over all of them."""
    videos = data_path("video")
    runs = tmp_path / "runs"
    for name in ("tai_chi.mp4", "chaplin_bw.mp4", "eye_makeup_ucf101.avi"):
        clip = tmp_path / name
        clip.symlink_to(videos / name)
        assert main(["simulate", "--video", str(clip), "--model", str(bundle), "--out", str(runs), "--json"]) == 0
    capsys.readouterr()
    code = main(["energy-report", str(runs), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["clips"] == 3
