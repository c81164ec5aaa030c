"""`energy-report --videos` and `evaluate` with `--ray` / `--ray-address`: folder work as Ray tasks, on a real Ray.

The Ray runs go through the console script (a subprocess), so Ray never starts inside the pytest
process (whose later tests fork process pools). Everything listens on 127.0.0.1 only: the head node
and the drivers run with Ray's loopback setting (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) and without
token authentication (RAY_AUTH_MODE=disabled), so no token file is read or written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CLI, one_error_line
from fixtures_models import single_thread  # noqa: F401
from svformer_deploy.deploy.cli import main
from svformer_deploy.simulators.record import read_record
from test_energy_batch import _dataset
from test_sim_cli import make_bundle, write_clip

RAY = Path(sys.executable).with_name("ray")
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "SVFORMER_NO_PROGRESS": "1"}
VOLATILE = ("created", "timing")  # the only fields that differ between two runs of one clip
MARK = "SVFORMER_RAY_TEST"  # in the environment of every process a test starts, and so of every Ray process
                            # those start (Ray passes its environment on): how a test finds what it left behind


def env(mark: str, ray_tmp: Path | None = None) -> dict[str, str]:
    out = dict(os.environ, **RAY_ENV, **{MARK: mark})
    if ray_tmp is not None:  # Ray's session folder (logs, sockets) under ray_tmp instead of /tmp/ray
        out["RAY_TMPDIR"] = str(ray_tmp)
    return out


def new_mark() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex}"


def marked_processes(mark: str) -> list[str]:
    """``pid command`` of every running process whose environment holds ``MARK=mark``."""
    needle = f"{MARK}={mark}".encode()
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out.append(f"{proc.name} {cmd[:120]}")
        except OSError:  # ended meanwhile, or not ours
            continue
    return out


def wait_until_gone(mark: str, timeout: float = 30) -> list[str]:
    """The processes of ``mark`` still running after up to ``timeout`` s (Ray stops its agents asynchronously)."""
    deadline = time.monotonic() + timeout
    while (left := marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def ray_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """The console script, then a check that no process it started (a local Ray runtime) outlived it."""
    mark = new_mark()
    proc = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env(mark))
    assert wait_until_gone(mark) == [], "processes of the run outlived it"
    return proc


def records_by_slot(runs: Path) -> dict[str, dict]:
    """slot folder -> its record, without the fields that differ between runs."""
    out = {}
    for path in sorted(runs.rglob("*.json")):
        assert path.parent.name not in out  # one view per clip: one record per slot
        data = json.loads(path.read_text())
        out[path.parent.name] = {k: v for k, v in data.items() if k not in VOLATILE}
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b") / "m.svfd", img_size=32, time_steps=4, quantize=False)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("v") / "clips"
    _dataset(root)  # walk/0, walk/1, run/0 and run/broken.mp4 (not a video)
    return root


def pool_run(tmp_path_factory, command: str, bundle: Path, videos: Path, args: tuple[str, ...], finished: str,
             read: Callable[[Path], dict[str, dict]]) -> tuple[dict, dict[str, dict]]:
    """``command`` on the folder with the process pool (2 workers): its JSON report and ``read(runs)``, what Ray
    must reproduce; ``finished`` is the summary line it must print."""
    runs = tmp_path_factory.mktemp(f"{command}-pool") / "runs"
    proc = ray_cli(command, "--videos", videos, "--model", bundle, "--runs", runs, "--workers", "2", *args)
    assert proc.returncode == 0, proc.stderr
    assert finished in proc.stderr
    return json.loads(proc.stdout), read(runs)


@pytest.fixture(scope="module")
def pool(bundle, videos, tmp_path_factory) -> tuple[dict, dict[str, dict]]:
    """The process pool's report and records of the folder: what Ray must reproduce."""
    return pool_run(tmp_path_factory, "energy-report", bundle, videos, ("--json",),
                    "simulated 3 clip(s), 0 from earlier runs, 1 failed", records_by_slot)


def assert_same_as_pool(report: dict, runs: Path, pool: tuple[dict, dict[str, dict]]) -> None:
    pool_report, pool_records = pool
    records = records_by_slot(runs)
    assert sorted(records) == sorted(pool_records) and len(records) == 3
    for slot, rec in records.items():
        assert rec["prediction"]["logits"] == pool_records[slot]["prediction"]["logits"], slot
        assert rec["totals"] == pool_records[slot]["totals"], slot
        assert rec == pool_records[slot], slot  # every count of every layer, inputs, model, tool versions
    for key in ("clips", "methods", "per_class", "stages", "layers", "ann_counterpart"):
        assert report[key] == pool_report[key], key


# ------------------------------------------------------------------------------------------
# a: a local Ray runtime started by the command
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_local_runtime_gives_the_pools_records_and_reports_bad_clips(tmp_path, bundle, videos, pool):
    runs = tmp_path / "runs"
    proc = ray_cli("energy-report", "--videos", videos, "--model", bundle, "--runs", runs, "--ray", "--workers", "2",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    assert "warning: skipped clip" in proc.stderr and "broken.mp4" in proc.stderr
    assert "svformer-clip-" not in proc.stderr  # the clip is named, not the worker's copy of it
    assert "simulated 3 clip(s), 0 from earlier runs, 1 failed" in proc.stderr
    assert_same_as_pool(json.loads(proc.stdout), runs, pool)
    assert [p for p in runs.rglob("*") if p.is_file() and p.suffix != ".json"] == []


@pytest.mark.slow
def test_ray_tasks_take_the_pools_groups_of_clips_and_give_its_records(tmp_path, bundle):
    """16 clips of different activity, all named 0.mp4 (one per class folder), 2 views each, 2 workers: the
    pool and Ray both run groups of 2 clips, 4 views per executor pass; every record is the pool's."""
    from svformer_deploy.deploy.batch import group_clips
    from test_sim_batch import _clip_of

    videos = tmp_path / "clips"
    for i in range(16):
        (videos / f"c{i:02d}").mkdir(parents=True)
        _clip_of(videos / f"c{i:02d}" / "0.mp4", 8 * i, frames=24)
    assert [len(g) for g in group_clips(list(range(16)), 2, 2, 16)] == [2] * 8  # two clips (4 views) a task
    common = ("energy-report", "--videos", videos, "--model", bundle, "--views", "2x1", "--workers", "2", "--json")
    pool_proc = ray_cli(*common, "--runs", tmp_path / "pool")
    ray_proc = ray_cli(*common, "--runs", tmp_path / "ray", "--ray")
    for proc in (pool_proc, ray_proc):
        assert proc.returncode == 0, proc.stderr
        assert "simulated 16 clip(s), 0 from earlier runs, 0 failed" in proc.stderr

    def by_view(runs: Path) -> dict[tuple[str, int], dict]:
        out = {}
        for path in runs.rglob("*.json"):
            data = json.loads(path.read_text())
            out[path.parent.name, data["input"]["view"]] = {k: v for k, v in data.items() if k not in VOLATILE}
        return out

    pool_records, ray_records = by_view(tmp_path / "pool"), by_view(tmp_path / "ray")
    assert len(pool_records) == 32 and sorted(ray_records) == sorted(pool_records)
    assert ray_records == pool_records  # every count and logit; each record names its own clip
    assert len({json.dumps(r["totals"]) for r in ray_records.values()}) > 16  # the clips' activity differs
    assert all(r["input"]["path"].startswith(str(videos)) for r in ray_records.values())
    for key in ("clips", "methods", "per_class", "stages", "layers"):
        assert json.loads(ray_proc.stdout)[key] == json.loads(pool_proc.stdout)[key], key


def _copies(folder: Path, n: int) -> Path:
    """``folder`` with ``n`` copies of one small clip."""
    clip = write_clip(folder.parent / f"{folder.name}-clip.mp4", frames=20, size=48)
    folder.mkdir()
    for i in range(n):
        shutil.copy(clip, folder / f"{i:02d}.mp4")
    return folder


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    """Poll ``ready()`` until true; fails if the process ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out waiting for the moment to send the signal"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("signame, moment", [
    ("SIGINT", "first record"),
    ("SIGTERM", "first record"),
    ("SIGINT", "ray.init"),  # while Ray builds the driver's core worker: the signal waits for ray.init to end
])
def test_a_signal_stops_the_local_ray_run_with_one_line_and_leaves_no_process_or_partial_record(
        tmp_path, bundle, signame, moment):
    total = 24
    videos = _copies(tmp_path / "videos", total)
    runs = tmp_path / "runs"
    mark = new_mark()
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    try:
        proc = subprocess.Popen([str(CLI), "energy-report", "--videos", str(videos), "--model", str(bundle),
                                 "--runs", str(runs), "--ray", "--workers", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(mark, ray_tmp))
        try:
            if moment == "first record":
                _wait_for(proc, lambda: list(runs.rglob("*.json")))
            else:  # the driver's log appears when ray.init starts building its core worker
                _wait_for(proc, lambda: list(ray_tmp.glob("ray/session_*/logs/python-core-driver-*")))
            proc.send_signal(getattr(signal, signame))
            out, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert wait_until_gone(mark) == [], "Ray processes of the run outlived it"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    line = one_error_line(proc.returncode, err, f"interrupted by {signame}")
    assert err.strip().splitlines() == [line] and out == ""  # nothing from Ray on stderr either
    records = list(runs.rglob("*.json"))
    if moment == "first record":
        assert 1 <= len(records) < total - 4, len(records)  # the clips not yet sent were never run
    else:
        assert records == []
    assert all(read_record(r) for r in records)
    assert [p for p in runs.rglob("*") if p.is_file() and p.suffix != ".json"] == []


# ------------------------------------------------------------------------------------------
# b: a running cluster (a head node on 127.0.0.1)
# ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Head:
    address: str  # host:port for --ray-address
    mark: str  # in the environment of the node's processes, its workers included


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> Head:
    """A Ray head node of 2 CPUs on 127.0.0.1 (``ray start --head --block``).

    Stopped by ending that ``ray start`` process (it stops the node's processes), not with
    ``ray stop``, which would stop every Ray node of the machine; then no process of the node may be
    left (one that is gets killed with the node's process group, and the fixture fails).
    """
    port = _free_port()
    mark = new_mark()
    log = tmp_path_factory.mktemp("head") / "head.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([str(RAY), "start", "--head", "--block", "--port", str(port),
                                 "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--include-dashboard", "false",
                                 "--disable-usage-stats"], stdout=f, stderr=subprocess.STDOUT, env=env(mark),
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield Head(f"127.0.0.1:{port}", mark)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)
        left = wait_until_gone(mark)
        if left:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert left == [], f"the head node left processes behind: {left}"


@pytest.mark.slow
def test_ray_address_runs_the_folder_on_a_head_node_and_resumes(tmp_path, bundle, videos, pool, head):
    runs = tmp_path / "runs"
    args = ("energy-report", "--videos", videos, "--model", bundle, "--runs", runs, "--ray-address", head.address,
            "--json")
    proc = ray_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "simulated 3 clip(s), 0 from earlier runs, 1 failed" in proc.stderr
    assert_same_as_pool(json.loads(proc.stdout), runs, pool)
    mtimes = {p: p.stat().st_mtime_ns for p in runs.rglob("*.json")}

    proc = ray_cli(*args)  # resumes: only the broken clip is tried again
    assert proc.returncode == 0, proc.stderr
    assert "simulated 0 clip(s), 3 from earlier runs, 1 failed" in proc.stderr and "broken.mp4" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*.json")} == mtimes
    assert_same_as_pool(json.loads(proc.stdout), runs, pool)


@pytest.mark.slow
def test_ray_tasks_take_the_bundle_from_the_object_store_not_its_folder(tmp_path, bundle, videos, pool, head):
    """The driver loads the bundle; it is moved away before the first task starts, and the tasks still run
    (they take the loaded graph from the object store)."""
    work = tmp_path / "work"
    shutil.copytree(videos, work / "clips")
    shutil.copytree(bundle, work / "m.svfd")
    script = f"""
import json, shutil, sys
from pathlib import Path
from svformer_deploy.deploy.batch import simulate_folder
from svformer_deploy.deploy.ray_batch import ray_runner

inner = ray_runner({head.address!r})
def runner(bundle, jobs, settings):
    shutil.move("m.svfd", "moved.svfd")  # the tasks start after this: they cannot read the bundle folder
    yield from inner(bundle, jobs, settings)

result = simulate_folder("clips", "m.svfd", "runs", runner=runner)
print(json.dumps([result.simulated, result.resumed, len(result.failures)]))
"""
    mark = new_mark()
    proc = subprocess.run([sys.executable, "-c", script], cwd=work, capture_output=True, text=True, env=env(mark),
                          timeout=120)
    assert wait_until_gone(mark) == []
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == [3, 0, 1]
    assert not (work / "m.svfd").exists()
    records = records_by_slot(work / "runs")
    assert sorted(records) == sorted(pool[1])
    for slot, rec in records.items():  # the same counts and logits as the pool (paths differ: other folder)
        assert rec["layers"] == pool[1][slot]["layers"] and rec["prediction"] == pool[1][slot]["prediction"]


@pytest.mark.slow
def test_sigint_on_a_cluster_ends_the_jobs_running_tasks(tmp_path, bundle, head):
    """Ctrl-C while the head node's two CPUs run clips of 300 views each (25-50 s a clip on this machine): the
    driver disconnects, Ray ends its job, and the workers running those clips stop at once instead of
    finishing them."""
    videos = _copies(tmp_path / "videos", 8)
    runs = tmp_path / "runs"

    def running() -> list[str]:
        return [p for p in marked_processes(head.mark) if "ray::_ray_group" in p]

    proc = subprocess.Popen([str(CLI), "energy-report", "--videos", str(videos), "--model", str(bundle),
                             "--runs", str(runs), "--views", "100x3", "--ray-address", head.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(new_mark()))
    try:
        _wait_for(proc, lambda: len(running()) == 2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    line = one_error_line(proc.returncode, err, "interrupted by SIGINT")
    assert err.strip().splitlines() == [line] and out == ""
    deadline = time.monotonic() + 10  # well below one clip's time
    while running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running() == []
    assert list(runs.rglob("*.json")) == []


# ------------------------------------------------------------------------------------------
# c: Ray not installed; usage
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["energy-report", "evaluate"])
def test_ray_without_ray_installed_is_one_error_line_naming_the_extra(tmp_path, bundle, videos, command):
    script = ("import sys; sys.modules['ray'] = None\n"
              "from svformer_deploy.deploy.cli import main\n"
              "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", script, command, "--videos", str(videos), "--model",
                           str(bundle), "--runs", str(tmp_path / "runs"), "--ray"],
                          capture_output=True, text=True, env=env(new_mark()), timeout=120)
    line = one_error_line(proc.returncode, proc.stderr, "ray")
    assert "pip install 'svformer-deploy[ray]'" in line
    assert not (tmp_path / "runs").exists() and proc.stdout == ""


@pytest.mark.parametrize("args, fragment", [
    (("--ray",), "--videos"),
    (("--ray-address", "127.0.0.1:1"), "--videos"),
])
def test_ray_options_without_a_folder_are_usage_errors(capsys, args, fragment):
    code = main(["energy-report", *args])
    one_error_line(code, capsys.readouterr().err, fragment)


def test_an_address_where_nothing_listens_is_one_error_line_at_once(tmp_path, bundle, videos):
    proc = ray_cli("energy-report", "--videos", videos, "--model", bundle, "--runs", tmp_path / "runs",
                   "--ray-address", f"127.0.0.1:{_free_port()}")
    line = one_error_line(proc.returncode, proc.stderr, "cannot join the Ray cluster", "nothing answers")
    assert proc.stderr.strip().splitlines() == [line] and proc.stdout == ""
    assert list((tmp_path / "runs").rglob("*.json")) == []


@pytest.mark.slow
def test_ctrl_c_while_joining_a_server_that_never_answers_ends_the_command(tmp_path, bundle, videos):
    """A port that accepts connections but is not Ray: ray.init would wait for minutes. The signal is held
    while ray.init runs, then raised anyway after INIT_GRACE_S (15 s); Ray's own connection warnings may
    come before our line."""
    mark = new_mark()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        proc = subprocess.Popen([str(CLI), "energy-report", "--videos", str(videos), "--model", str(bundle),
                                 "--runs", str(tmp_path / "runs"), "--ray-address",
                                 f"127.0.0.1:{server.getsockname()[1]}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(mark))
        accepted = []  # held open, never answered
        try:
            server.settimeout(120)  # under load the command may take long to import torch and load the bundle
            for _ in range(2):  # the reachability check, then ray.init's own connection: now inside ray.init
                accepted.append(server.accept()[0])
            time.sleep(1)
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
            for conn in accepted:
                conn.close()
    assert proc.returncode == 2 and out == "", err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: interrupted by SIGINT") and sum(x.startswith("error:") for x in lines) == 1
    assert "Traceback" not in err
    assert wait_until_gone(mark) == []


@pytest.mark.parametrize("command", ["energy-report", "evaluate"])
def test_workers_with_a_cluster_address_is_a_usage_error(tmp_path, capsys, bundle, videos, command):
    code = main([command, "--videos", str(videos), "--model", str(bundle), "--ray-address", "127.0.0.1:1",
                 "--workers", "2"])
    one_error_line(code, capsys.readouterr().err, "--workers", "--ray-address")


# ------------------------------------------------------------------------------------------
# d: evaluate on Ray (one task per clip; the driver writes each clip's results)
# ------------------------------------------------------------------------------------------
EVALUATE = ("--noise", "gaussian:0.5", "--json")  # the clean run (with anytime read-outs) and one noise level


def evaluation_docs(runs: Path) -> dict[str, dict]:
    """Per-clip result file name -> its document."""
    return {p.name: json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))}


@pytest.fixture(scope="module")
def evaluate_pool(bundle, videos, tmp_path_factory) -> tuple[dict, dict[str, dict]]:
    """The process pool's evaluation report and per-clip results: what Ray must reproduce."""
    return pool_run(tmp_path_factory, "evaluate", bundle, videos, EVALUATE,
                    "evaluated 3 clip(s), 0 from earlier runs, 1 failed", evaluation_docs)


def assert_same_evaluation(report: dict, runs: Path, pool: tuple[dict, dict[str, dict]]) -> None:
    pool_report, pool_docs = pool
    docs = evaluation_docs(runs)
    assert len(docs) == 3 and docs == pool_docs  # logits, energies, step logits, exit energies of every clip
    volatile = ("runs", "simulated", "resumed")  # where the results are, and which run made them
    assert ({k: v for k, v in report.items() if k not in volatile}
            == {k: v for k, v in pool_report.items() if k not in volatile})
    assert report["conditions"][1]["condition"] == "gaussian:0.5" and report["clips"] == 3
    assert [p for p in runs.rglob("*") if p.suffix != ".json"] == []


@pytest.mark.slow
def test_evaluate_on_a_local_ray_runtime_gives_the_pools_results(tmp_path, bundle, videos, evaluate_pool):
    runs = tmp_path / "runs"
    proc = ray_cli("evaluate", "--videos", videos, "--model", bundle, "--runs", runs, "--ray", "--workers", "2",
                   *EVALUATE)
    assert proc.returncode == 0, proc.stderr
    assert "warning: skipped clip" in proc.stderr and "broken.mp4" in proc.stderr
    assert "svformer-clip-" not in proc.stderr  # the clip is named, not the worker's copy of it
    assert "evaluated 3 clip(s), 0 from earlier runs, 1 failed" in proc.stderr
    assert_same_evaluation(json.loads(proc.stdout), runs, evaluate_pool)


@pytest.mark.slow
def test_evaluate_on_a_head_node_gives_the_pools_results_and_resumes(tmp_path, bundle, videos, evaluate_pool, head):
    runs = tmp_path / "runs"
    args = ("evaluate", "--videos", videos, "--model", bundle, "--runs", runs, "--ray-address", head.address,
            *EVALUATE)
    proc = ray_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "evaluated 3 clip(s), 0 from earlier runs, 1 failed" in proc.stderr
    assert_same_evaluation(json.loads(proc.stdout), runs, evaluate_pool)
    mtimes = {p: p.stat().st_mtime_ns for p in runs.rglob("*.json")}

    proc = ray_cli(*args)  # resumes: only the broken clip is tried again
    assert proc.returncode == 0, proc.stderr
    assert "evaluated 0 clip(s), 3 from earlier runs, 1 failed" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*.json")} == mtimes
    assert_same_evaluation(json.loads(proc.stdout), runs, evaluate_pool)


@pytest.mark.slow
def test_ctrl_c_during_evaluate_on_ray_leaves_whole_results_no_process_and_the_rerun_resumes(tmp_path, bundle):
    total = 24
    videos = tmp_path / "videos"
    videos.mkdir()
    _copies(tmp_path / "walk", total).rename(videos / "walk")  # evaluate reads class folders
    runs = tmp_path / "runs"
    mark = new_mark()
    args = [str(CLI), "evaluate", "--videos", str(videos), "--model", str(bundle), "--runs", str(runs), "--ray",
            "--workers", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(mark))
    try:
        _wait_for(proc, lambda: list(runs.glob("*.json")))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert wait_until_gone(mark) == [], "Ray processes of the run outlived it"
    line = one_error_line(proc.returncode, err, "interrupted by SIGINT")
    assert err.strip().splitlines() == [line] and out == ""
    done = evaluation_docs(runs)
    assert 1 <= len(done) < total - 4, len(done)  # the clips not yet sent were never run
    assert all(set(doc["conditions"]) == {"clean"} for doc in done.values())
    assert [p for p in runs.rglob("*") if p.suffix != ".json"] == []

    proc = ray_cli(*args[1:], "--json")
    assert proc.returncode == 0, proc.stderr
    assert f"evaluated {total - len(done)} clip(s), {len(done)} from earlier runs, 0 failed" in proc.stderr
    assert json.loads(proc.stdout)["clips"] == total


@pytest.mark.slow
def test_a_local_runtimes_workers_run_at_the_commands_priority(tmp_path, bundle):
    """Ray starts its workers at niceness 15; the local runtime of a command runs them at the driver's own
    priority, as the process pool's workers are, so a busy machine does not starve them."""
    script = f"""
import os
from svformer_deploy.deploy.batch import map_clips
from svformer_deploy.export.bundle import load_bundle

got = []
map_clips(lambda bundle, clip, path: os.nice(0), [({str(tmp_path / "a.mp4")!r}, ())],
          lambda clip, value, err: got.append((value, err)), load_bundle({str(bundle)!r}), workers=1, ray=True)
print(os.nice(0), got[0][0], got[0][1])
"""
    (tmp_path / "a.mp4").write_bytes(b"any bytes: the function does not read them")
    mark = new_mark()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env(mark), timeout=120)
    assert wait_until_gone(mark) == []
    assert proc.returncode == 0, proc.stderr
    driver, worker, err = proc.stdout.split()
    assert err == "None" and worker == driver, proc.stdout
