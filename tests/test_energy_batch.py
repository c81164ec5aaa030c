"""`energy-report --videos DIR --model DIR`: a folder simulated in parallel, resumable, bad clips skipped."""

from __future__ import annotations

import json

from fixtures_models import single_thread  # noqa: F401
from svformer_deploy.deploy.cli import main
from test_sim_cli import make_bundle, write_clip


def _dataset(root):
    for cls, n in (("walk", 2), ("run", 1)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            write_clip(root / cls / f"{i}.mp4", frames=20, size=48)
    (root / "run" / "broken.mp4").write_bytes(b"not a video at all")
    (root / "notes.txt").write_text("ignored: not a clip")


def test_folder_is_simulated_per_class_with_failures_skipped_and_resumes(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "m.svfd", img_size=32, time_steps=4, quantize=False)
    _dataset(tmp_path / "clips")
    runs = tmp_path / "runs"
    args = ["energy-report", "--videos", tmp_path / "clips", "--model", bundle, "--runs", runs, "--workers", "2",
            "--json"]
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.strip(), err
    report = json.loads(out)
    assert report["clips"] == 3
    assert {c["class"]: c["clips"] for c in report["per_class"]} == {"run": 1, "walk": 2}
    assert "warning: skipped" in err and "broken.mp4" in err
    assert "simulated 3 clip(s), 0 from earlier runs, 1 failed" in err
    records = sorted(runs.rglob("*.json"))
    assert len(records) == 3
    mtimes = [p.stat().st_mtime_ns for p in records]

    code = main([str(a) for a in args])  # a second run resumes: nothing is simulated again
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "simulated 0 clip(s), 3 from earlier runs, 1 failed" in err
    assert [p.stat().st_mtime_ns for p in sorted(runs.rglob("*.json"))] == mtimes
    assert json.loads(out)["methods"]["exact"]["energy_mj"] == report["methods"]["exact"]["energy_mj"]


def test_videos_without_model_is_a_usage_error(tmp_path, capsys):
    code = main(["energy-report", "--videos", str(tmp_path)])
    assert code == 2 and capsys.readouterr().err.startswith("error:")


def test_folder_without_clips_is_one_error_line(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "m.svfd", img_size=32, time_steps=4, quantize=False)
    (tmp_path / "empty").mkdir()
    code = main(["energy-report", "--videos", str(tmp_path / "empty"), "--model", str(bundle)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "no videos" in err


def test_folder_records_equal_those_simulate_writes_for_each_clip(tmp_path):
    """The batch's per-clip function (deploy.batch.group_records) gives simulate_file's records."""
    from svformer_deploy.deploy.batch import simulate_folder
    from svformer_deploy.simulators.run import simulate_file

    bundle = make_bundle(tmp_path / "m.svfd", img_size=32, time_steps=4, quantize=True)
    (tmp_path / "clips" / "walk").mkdir(parents=True)
    clip = write_clip(tmp_path / "clips" / "walk" / "0.mp4", frames=20, size=48)
    for executor in ("float", "integer"):
        batch = simulate_folder(tmp_path / "clips", bundle, tmp_path / f"batch-{executor}", workers=1, views=(2, 1),
                                executor=executor)
        single = simulate_file(video=clip, model=bundle, views=(2, 1), executor=executor,
                               out_dir=tmp_path / f"single-{executor}", label="walk")
        assert batch.simulated == 1 and len(batch.records) == 2

        def strip(record: dict) -> dict:
            return {k: v for k, v in record.items() if k not in ("created", "timing")}

        got = [strip(json.loads(p.read_text())) for p in batch.records]
        want = [strip(json.loads(p.read_text())) for p in single.record_paths]
        assert sorted(got, key=lambda r: r["input"]["view"]) == want
