"""`energy-report --videos --ray` / `--ray-address`: the folder batch as Ray tasks, on a real Ray.

The Ray runs go through the console script (a subprocess), so Ray never starts inside the pytest
process (whose later tests fork process pools). Everything listens on 127.0.0.1 only: the head node
and the drivers run with Ray's loopback setting (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) and without
token authentication (RAY_AUTH_MODE=disabled), so no token file is read or written.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
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


def env() -> dict[str, str]:
    return dict(os.environ, **RAY_ENV)


def ray_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env())


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


@pytest.fixture(scope="module")
def pool(bundle, videos, tmp_path_factory) -> tuple[dict, dict[str, dict]]:
    """The process pool's report and records of the folder: what Ray must reproduce."""
    runs = tmp_path_factory.mktemp("pool") / "runs"
    proc = ray_cli("energy-report", "--videos", videos, "--model", bundle, "--runs", runs, "--workers", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "simulated 3 clip(s), 0 from earlier runs, 1 failed" in proc.stderr
    return json.loads(proc.stdout), records_by_slot(runs)


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
def test_sigint_cancels_the_ray_tasks_and_leaves_only_complete_records(tmp_path, bundle):
    clip = write_clip(tmp_path / "clip.mp4", frames=20, size=48)
    videos = tmp_path / "videos"
    videos.mkdir()
    total = 24
    for i in range(total):
        shutil.copy(clip, videos / f"{i:02d}.mp4")
    runs = tmp_path / "runs"
    proc = subprocess.Popen([str(CLI), "energy-report", "--videos", str(videos), "--model", str(bundle),
                             "--runs", str(runs), "--ray", "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        deadline = time.monotonic() + 90
        while not list(runs.rglob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # wait for the first finished clip
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    line = one_error_line(proc.returncode, err[err.find("error:"):], "interrupted")
    assert out == "" and line
    records = list(runs.rglob("*.json"))
    assert 1 <= len(records) < total - 4, len(records)  # the queued clips were cancelled
    assert all(read_record(r) for r in records)
    assert [p for p in runs.rglob("*") if p.is_file() and p.suffix != ".json"] == []


# ------------------------------------------------------------------------------------------
# b: a running cluster (a head node on 127.0.0.1)
# ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> str:
    """A Ray head node of 2 CPUs on 127.0.0.1 (``ray start --head --block``); its address.

    Stopped by ending that ``ray start`` process (it stops the node's processes), not with
    ``ray stop``, which would stop every Ray node of the machine.
    """
    port = _free_port()
    log = tmp_path_factory.mktemp("head") / "head.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([str(RAY), "start", "--head", "--block", "--port", str(port),
                                 "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--include-dashboard", "false",
                                 "--disable-usage-stats"], stdout=f, stderr=subprocess.STDOUT, env=env(),
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.slow
def test_ray_address_runs_the_folder_on_a_head_node_and_resumes(tmp_path, bundle, videos, pool, head):
    runs = tmp_path / "runs"
    args = ("energy-report", "--videos", videos, "--model", bundle, "--runs", runs, "--ray-address", head, "--json")
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

inner = ray_runner({head!r})
def runner(bundle, jobs, settings):
    shutil.move("m.svfd", "moved.svfd")  # the tasks start after this: they cannot read the bundle folder
    yield from inner(bundle, jobs, settings)

result = simulate_folder("clips", "m.svfd", "runs", runner=runner)
print(json.dumps([result.simulated, result.resumed, len(result.failures)]))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=work, capture_output=True, text=True, env=env(),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == [3, 0, 1]
    assert not (work / "m.svfd").exists()
    records = records_by_slot(work / "runs")
    assert sorted(records) == sorted(pool[1])
    for slot, rec in records.items():  # the same counts and logits as the pool (paths differ: other folder)
        assert rec["layers"] == pool[1][slot]["layers"] and rec["prediction"] == pool[1][slot]["prediction"]


# ------------------------------------------------------------------------------------------
# c: Ray not installed; usage
# ------------------------------------------------------------------------------------------
def test_ray_without_ray_installed_is_one_error_line_naming_the_extra(tmp_path, bundle, videos):
    script = ("import sys; sys.modules['ray'] = None\n"
              "from svformer_deploy.deploy.cli import main\n"
              "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", script, "energy-report", "--videos", str(videos), "--model",
                           str(bundle), "--runs", str(tmp_path / "runs"), "--ray"],
                          capture_output=True, text=True, env=env(), timeout=120)
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


def test_workers_with_a_cluster_address_is_a_usage_error(tmp_path, capsys, bundle, videos):
    code = main(["energy-report", "--videos", str(videos), "--model", str(bundle), "--ray-address", "127.0.0.1:1",
                 "--workers", "2"])
    one_error_line(code, capsys.readouterr().err, "--workers", "--ray-address")
