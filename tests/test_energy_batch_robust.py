"""`energy-report --videos` and `simulate` under stress: name collisions, concurrency, Ctrl-C, bad folders."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import CLI, assert_one_line_error, run_cli
from conftest import cli_in_process as cli
from fixtures_models import single_thread  # noqa: F401
from svformer_deploy.deploy.batch import clip_slot, find_clips
from svformer_deploy.simulators.record import read_record, write_records
from svformer_deploy.svformer.data.datasets import VIDEO_EXTENSIONS
from svformer_deploy.svformer.data.media import VIDEO_EXTENSIONS as MEDIA_VIDEO
from test_sim_cli import make_bundle, write_clip


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b") / "m.svfd", img_size=32, time_steps=4, quantize=False)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("c") / "clip.mp4", frames=20, size=48)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------------------------
# d: one clip, one slot
# ------------------------------------------------------------------------------------------
def test_clips_whose_names_sanitise_alike_get_their_own_records(tmp_path, bundle, clip, capsys):
    videos = tmp_path / "videos"
    (videos / "cls").mkdir(parents=True)
    for name in ("ñ.mp4", "é.mp4", "a b.mp4"):
        shutil.copy(clip, videos / "cls" / name)
    runs = tmp_path / "runs"
    code, out, err = cli(capsys, "energy-report", "--videos", videos, "--model", bundle, "--runs", runs,
                         "--workers", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["clips"] == 3
    assert len(list(runs.rglob("*.json"))) == 3
    assert "simulated 3 clip(s), 0 from earlier runs, 0 failed" in err


def test_a_clip_added_later_is_simulated_on_the_next_run(tmp_path, bundle, clip, capsys):
    videos = tmp_path / "videos"
    (videos / "cls").mkdir(parents=True)
    shutil.copy(clip, videos / "cls" / "ñ.mp4")
    runs = tmp_path / "runs"
    args = ("energy-report", "--videos", videos, "--model", bundle, "--runs", runs, "--json")
    assert cli(capsys, *args)[0] == 0
    shutil.copy(clip, videos / "cls" / "é.mp4")
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert "simulated 1 clip(s), 1 from earlier runs, 0 failed" in err
    assert json.loads(out)["clips"] == 2


def test_clip_slots_are_distinct_readable_and_stable(tmp_path):
    names = ["cls/ñ.mp4", "cls/é.mp4", "cls/a b.mp4", "cls/a_b.mp4", "a/b_c.mp4", "a_b/c.mp4", "x.mp4"]
    slots = [clip_slot(tmp_path, tmp_path / n) for n in names]
    assert len(set(slots)) == len(names)
    assert slots == [clip_slot(tmp_path, tmp_path / n) for n in names]
    assert slots[-1].startswith("x.mp4-")


# ------------------------------------------------------------------------------------------
# 4: one list of media suffixes
# ------------------------------------------------------------------------------------------
def test_every_video_suffix_the_datasets_read_is_a_clip_for_the_batch(tmp_path):
    assert VIDEO_EXTENSIONS is MEDIA_VIDEO  # the datasets read the one media list the batch uses
    for suffix in (".mpg", ".wmv", ".flv", ".ogv", ".MP4"):
        (tmp_path / "cls").mkdir(exist_ok=True)
        (tmp_path / "cls" / f"c{suffix}").write_bytes(b"x")
    found = [p.name for p, _ in find_clips(tmp_path, "video")]
    assert sorted(found) == sorted(["c.mpg", "c.wmv", "c.flv", "c.ogv", "c.MP4"])


def _write_container(path: Path, codec: str, frames: int = 20, size: int = 48) -> Path:
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=25)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_mpg_wmv_and_flv_clips_are_simulated_by_energy_report_videos(tmp_path, bundle, capsys):
    videos = tmp_path / "videos" / "cls"
    videos.mkdir(parents=True)
    _write_container(videos / "a.mpg", "mpeg1video")
    _write_container(videos / "b.wmv", "wmv2")
    _write_container(videos / "c.flv", "flv")
    code, out, err = cli(capsys, "energy-report", "--videos", videos.parent, "--model", bundle,
                         "--runs", tmp_path / "runs", "--workers", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["clips"] == 3, err


# ------------------------------------------------------------------------------------------
# e: an unusable --runs folder is found before any simulation
# ------------------------------------------------------------------------------------------
def test_runs_folder_that_cannot_be_created_is_one_error_before_any_simulation(tmp_path, bundle, clip, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        shutil.copy(clip, videos / f"{i}.mp4")
    (tmp_path / "afile").write_text("not a folder")
    code, out, err = cli(capsys, "energy-report", "--videos", videos, "--model", bundle,
                         "--runs", tmp_path / "afile" / "runs")
    assert code == 2 and out == ""
    assert len(error_lines(err)) == 1 and "afile" in error_lines(err)[0] and "cannot write run records" in err
    assert "skipped clip" not in err and "simulated" not in err  # no clip was tried


def _unwritable_folder(tmp_path: Path) -> Path:
    """An existing folder this process cannot create files in: a 0555 folder, or for root (who ignores
    permission bits) ``/sys`` (sysfs refuses new files even for root)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o555)
    for folder in (runs, Path("/sys")):
        try:
            (folder / ".probe").write_text("x")
            (folder / ".probe").unlink()
        except OSError:
            return folder
    pytest.skip("no folder this user cannot write into (root with a writable /sys)")


def test_read_only_runs_folder_is_one_error_before_any_simulation(tmp_path, bundle, clip, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(clip, videos / "0.mp4")
    try:
        runs = _unwritable_folder(tmp_path)
        code, out, err = cli(capsys, "energy-report", "--videos", videos, "--model", bundle, "--runs", runs)
        assert code == 2 and len(error_lines(err)) == 1 and "cannot write run records" in err, err
        assert str(runs) in error_lines(err)[0]
        assert "simulated" not in err and "skipped clip" not in err
    finally:
        (tmp_path / "runs").chmod(0o755)


# ------------------------------------------------------------------------------------------
# c: concurrent writers never share a record name
# ------------------------------------------------------------------------------------------
def _writer(out: str, barrier, n: int, queue) -> None:
    from energy_fixtures import hand_record

    rec = hand_record()  # the same created time stamp and stem: every writer wants the same name
    barrier.wait()
    paths = []
    for _ in range(n):
        paths += [str(p) for p in write_records([rec], out, "clip")]
    queue.put(paths)


def test_concurrent_record_writers_get_distinct_files(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs, per = 4, 25
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_writer, args=(str(tmp_path / "runs"), barrier, per, queue)) for _ in range(procs)]
    for w in workers:
        w.start()
    paths = [p for _ in workers for p in queue.get(timeout=120)]
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert len(paths) == procs * per and len(set(paths)) == procs * per
    files = sorted((tmp_path / "runs").iterdir())
    assert len(files) == procs * per  # no temporary files left, none overwritten
    assert all(read_record(f).model_hash for f in files)


def test_two_simulate_processes_into_one_folder_print_different_records(tmp_path, bundle, clip):
    env = dict(os.environ, SVFORMER_NO_PROGRESS="1")
    cmd = [str(CLI), "simulate", "--video", str(clip), "--model", str(bundle), "--out", str(tmp_path / "runs"),
           "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    records = [json.loads(o)["record"] for o, _ in outs]
    assert records[0] != records[1]
    assert all(read_record(r) for r in records)
    assert len(list((tmp_path / "runs").glob("*.json"))) == 2


# ------------------------------------------------------------------------------------------
# f: Ctrl-C cancels the queued clips
# ------------------------------------------------------------------------------------------
def test_sigint_to_energy_report_videos_cancels_queued_clips_and_leaves_no_partial_record(tmp_path, bundle, clip):
    videos = tmp_path / "videos"
    videos.mkdir()
    total = 24
    for i in range(total):
        shutil.copy(clip, videos / f"{i:02d}.mp4")
    runs = tmp_path / "runs"
    env = dict(os.environ, SVFORMER_NO_PROGRESS="1")
    proc = subprocess.Popen([str(CLI), "energy-report", "--videos", str(videos), "--model", str(bundle),
                             "--runs", str(runs), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        while not list(runs.rglob("*.json")) and proc.poll() is None:  # wait for the first finished clip
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(error_lines(err)) == 1 and "interrupted" in error_lines(err)[0], err
    assert "Traceback" not in err and out == ""
    records = list(runs.rglob("*.json"))
    assert 1 <= len(records) < total - 4, len(records)  # the queued clips were not simulated
    assert all(read_record(r) for r in records)  # every record left is complete
    leftovers = [p for p in runs.rglob("*") if p.is_file() and p.suffix != ".json"]
    assert leftovers == [] and lines[-1].startswith("error:")


# ------------------------------------------------------------------------------------------
# b: several report files are all or nothing
# ------------------------------------------------------------------------------------------
def test_report_files_are_all_or_nothing_when_the_html_folder_cannot_be_made(tmp_path, capsys):
    from energy_fixtures import hand_record, write_record

    rec = write_record(tmp_path, "r.json", hand_record())
    (tmp_path / "blocker").write_text("a file where the HTML folder should go")
    csv, md = tmp_path / "out" / "e.csv", tmp_path / "out" / "e.md"
    code, out, err = cli(capsys, "energy-report", rec, "--csv", csv, "--markdown", md, "--html",
                         tmp_path / "blocker" / "html")
    assert code == 2 and len(error_lines(err)) == 1, err
    assert not csv.exists() and not md.exists() and not (tmp_path / "out").exists()
    assert out == ""


def test_report_files_all_appear_when_every_output_can_be_written(tmp_path, capsys):
    from energy_fixtures import hand_record, write_record

    rec = write_record(tmp_path, "r.json", hand_record())
    csv, md, html = tmp_path / "o" / "e.csv", tmp_path / "o" / "e.md", tmp_path / "o" / "html"
    code, out, err = cli(capsys, "energy-report", rec, "--csv", csv, "--markdown", md, "--html", html)
    assert code == 0, err
    assert csv.read_text().startswith("cost_model,") and md.read_text().startswith("# SVFormer energy report")
    assert (html / "index.html").is_file()
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["e.csv", "e.md", "html"]  # no temp files


def test_one_line_error_for_an_unwritable_report_through_the_console_script(tmp_path):
    from energy_fixtures import hand_record, write_record

    rec = write_record(tmp_path, "r.json", hand_record())
    (tmp_path / "blocker").write_text("x")
    proc = run_cli("energy-report", rec, "--csv", tmp_path / "e.csv", "--markdown", tmp_path / "blocker" / "e.md")
    assert_one_line_error(proc, "blocker")
    assert not (tmp_path / "e.csv").exists()


# ------------------------------------------------------------------------------------------
# a library caller that has used torch on several threads
# ------------------------------------------------------------------------------------------
def test_pool_workers_of_a_process_that_ran_parallel_torch_do_not_hang(tmp_path):
    """A process that has run a parallel torch operation (GNU OpenMP's thread pool started) and then forks
    pool workers (deploy.batch.pool_map, under energy-report --videos and evaluate): without one torch thread
    in the workers their first parallel operation waits forever for the parent's pool threads
    (benchmarks/bench_scale.py hung this way after exporting a bundle in its own process)."""
    script = """
import numpy as np, torch
from svformer_deploy.deploy.batch import pool_map

def convert(clip, n):  # what a worker does first: weights to tensors, large enough to run in parallel
    return float(torch.from_numpy(np.ones(n)).to(torch.float32).sum())

torch.set_num_threads(2)
torch.randn(10**7).to(torch.float64).sum()  # OpenMP's threads now exist in this process
got = sorted((clip, value, err) for clip, value, err in pool_map(convert, [("a", 10**7), ("b", 10**7)], 2))
print(got)
"""
    (tmp_path / "caller.py").write_text(script)
    proc = subprocess.run([str(Path(CLI).with_name("python")), str(tmp_path / "caller.py")], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[('a', 10000000.0, None), ('b', 10000000.0, None)]", proc.stdout
