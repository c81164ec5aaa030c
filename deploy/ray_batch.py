"""Dataset work on Ray: a local Ray runtime or a running cluster (``energy-report --ray``, ``evaluate --ray``).

Two entry points, one machinery (connection, object store, clips as bytes, tasks in flight):
:func:`ray_map_clips` runs any per-clip function of :func:`deploy.batch.map_clips` as one task per clip
(``evaluate``), and :func:`ray_runner` is the folder simulation's runner, described here.

:func:`ray_runner` is a :data:`deploy.batch.Runner` for :func:`deploy.batch.simulate_folder`, which does everything else
(clip discovery, slots, resume, writing the records). One Ray task per group of clips (the groups of
the process pool, :func:`deploy.batch.group_clips`, for as many workers as the cluster has CPUs) runs
the batch's per-group function :func:`deploy.batch.run_group`, so the views go through the executor
in the same passes as in the pool and the records are the pool's. The loaded bundle (its graph
included) is put in the object store once and each worker process takes it from there once; the
clips travel to their task as bytes (read by the driver) and the task returns each clip's run
records (or its failure) to the driver, which writes them.
So the workers need the package and Ray, but neither the clips, the bundle nor the run-record folder:
no shared file system (docs/cluster.md).

Ray is an optional extra (``pip install 'svformer-deploy[ray]'``), imported only here and only when
a Ray batch starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.interrupts import Interrupted, deferred_interrupts, pending

from .batch import ClipFn, ClipJob, ClipSettings, Outcome, Runner, call_clip, run_group, settings_groups

if TYPE_CHECKING:
    from svformer_deploy.export.bundle import Bundle

EXTRA = "pip install 'svformer-deploy[ray]'"
MAX_CLIP_BYTES = 1 << 30  # a clip is sent to its task in one piece
FAILURE_HANDLER_ENV = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"
INIT_GRACE_S = 15.0  # how long a signal waits for a ray.init still under way before it is raised anyway
CONNECT_TIMEOUT_S = 10.0  # for the check that something listens at --ray-address
WORKER_NICENESS = 0  # a local runtime's workers run at the command's priority, as the pool's processes do
                    # (Ray's default, 15, starves them on a machine that has other work)


def import_ray() -> Any:
    """The ``ray`` module, or one clear error naming the extra that installs it.

    Imported with Ray's C++ failure-signal handler off in this process (``RAY_DISABLE_FAILURE_SIGNAL_HANDLER``,
    read once when Ray is imported; not passed on to the processes Ray starts): that handler takes
    SIGTERM from the driver's Python handler, prints a stack to stderr and arms an abort 3 s later.
    """
    added = "ray" not in sys.modules and FAILURE_HANDLER_ENV not in os.environ
    if added:
        os.environ[FAILURE_HANDLER_ENV] = "1"
    try:
        import ray
    except ImportError:
        raise SVFormerError(f"--ray needs Ray, which is not installed: {EXTRA}") from None
    finally:
        if added:
            del os.environ[FAILURE_HANDLER_ENV]
    return ray


_WORKER_BUNDLE: dict[str, Any] = {}  # in a Ray worker process: object id -> the batch's bundle (one entry)


def _worker_bundle(bundle_box: list) -> Bundle:
    """The batch's bundle in this Ray worker, taken from the object store once per worker process.

    ``bundle_box`` holds the bundle's object reference inside a list, so Ray does not fetch and
    deserialise it for every task.
    """
    import ray

    ref = bundle_box[0]
    key = ref.hex()
    if key not in _WORKER_BUNDLE:
        _WORKER_BUNDLE.clear()
        _WORKER_BUNDLE[key] = ray.get(ref)
    return _WORKER_BUNDLE[key]


@contextlib.contextmanager
def _local_copies(names: list[Path], data: list[bytes]) -> Iterator[list[Path]]:
    """The clips' bytes written to a temporary folder of this worker, under their own file names (the
    decoder goes by the suffix), removed after the block."""
    with tempfile.TemporaryDirectory(prefix="svformer-clip-") as tmp:
        local = [Path(tmp) / str(i) / name.name for i, name in enumerate(names)]
        for path, clip in zip(local, data, strict=True):
            path.parent.mkdir()
            path.write_bytes(clip)
        yield local


def _ray_group(bundle_box: list, jobs: list[ClipJob], settings: ClipSettings, data: list[bytes]) -> list[Outcome]:
    """The Ray task of a folder simulation: a group of clips, given as their bytes; returns each clip's
    records (or its failure) to the driver."""
    with _local_copies([job.clip for job in jobs], data) as local:
        return run_group(_worker_bundle(bundle_box), jobs, settings, local)


def _ray_clip(bundle_box: list, fn: ClipFn, clip: str, data: bytes, args: tuple) -> tuple[Any, str | None]:
    """The Ray task of :func:`ray_map_clips`: ``fn(bundle, clip, copy, *args)`` on a copy of the clip made
    from its bytes; ``(value, None)`` or ``(None, reason)``, the reason naming the clip, not the copy."""
    with _local_copies([Path(clip)], [data]) as (local,):
        value, err = call_clip(fn, _worker_bundle(bundle_box), clip, local, args, threads=1)
    return value, err if err is None else err.replace(str(local), clip)


def ray_runner(address: str | None = None, num_cpus: int | None = None) -> Runner:
    """A :data:`deploy.batch.Runner` on Ray.

    ``address``: a running cluster to join (``ray start --head`` printed it; ``"auto"`` finds one on
    this machine); ``None`` starts a local runtime of ``num_cpus`` CPUs (default: all cores) for
    this batch. Each group of clips is one task of one CPU. The runner connects for the batch and disconnects
    at its end (``ray.shutdown``), also on Ctrl-C, SIGTERM or an error: that ends this driver's Ray
    job, and Ray drops the job's queued tasks and stops its running ones (a local runtime is stopped
    altogether, its processes included). If Ray is already initialised in this process, that
    connection is used and left open; clips already sent then run to the end if the batch is stopped.

    Tasks are never cancelled one by one: ``ray.cancel`` racing a task that is just finishing
    aborts the driver inside Ray (Ray 2.60: "Tried to complete task that was not pending", exit 1
    without our error line), while the disconnect ends them all without that race.
    """
    ray = import_ray()

    def run(bundle: Bundle, jobs: list[ClipJob], settings: ClipSettings) -> Iterator[Outcome]:
        with _session(ray, address, num_cpus):
            cpus = _cluster_cpus(ray)
            box = [ray.put(bundle)]  # the loaded graph, once for all tasks
            task = ray.remote(num_cpus=1, max_retries=0)(_ray_group)

            def sends() -> Iterator[_Sent]:
                for group in settings_groups(jobs, settings, cpus):
                    sent, data = [], []
                    for job in group:  # a clip the driver cannot read fails alone (the pool would not run it either)
                        clip, err = _read_clip(job.clip)
                        if err is not None:
                            yield None, [job], [(job, [], err)]
                        else:
                            sent.append(job)
                            data.append(clip)
                    if sent:
                        yield task.remote(box, sent, settings, data), sent, None

            for group, outcomes, why in _in_flight(ray, sends(), 2 * cpus):
                yield from outcomes if why is None else [(job, [], f"{job.clip}: {why}") for job in group]

    return run


def ray_map_clips(fn: ClipFn, tasks: Sequence[tuple[str, tuple]], bundle: Bundle, address: str | None = None,
                  num_cpus: int | None = None) -> Iterator[tuple[str, Any, str | None]]:
    """:func:`deploy.batch.map_clips` on Ray: one task of one CPU per clip, ``fn(bundle, clip, copy, *args)``
    on a copy of the clip made from its bytes (sent by the driver), the bundle from the object store.

    Yields ``(clip, value, None)`` or ``(clip, None, reason)`` as the clips finish, like the process pool.
    Connects as :func:`ray_runner` does (``address``/``num_cpus``) and disconnects at the end, also when
    the caller stops reading (Ctrl-C): the job's tasks end with it.
    """
    ray = import_ray()
    with _session(ray, address, num_cpus):
        box = [ray.put(bundle)]
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_clip)

        def sends() -> Iterator[_Sent]:
            for clip, args in tasks:
                data, err = _read_clip(Path(clip))
                yield (None, clip, (None, err)) if err is not None else (task.remote(box, fn, clip, data, args),
                                                                          clip, None)

        for clip, result, why in _in_flight(ray, sends(), 2 * _cluster_cpus(ray)):
            yield (clip, None, f"{clip}: {why}") if why is not None else (clip, *result)


_Sent = tuple[Any, Any, Any]  # (object ref, key, None) of a task sent, (None, key, value) of an item done without one


def _in_flight(ray: Any, sends: Iterator[_Sent], window: int) -> Iterator[tuple[Any, Any, str | None]]:
    """Run the tasks ``sends`` makes, at most ``window`` in flight (``sends`` is advanced only when there
    is room, so a stopped batch has sent no more than that), and yield ``(key, value, None)`` as each
    finishes or ``(key, None, reason)`` when its task failed (a worker that died must not stop the batch).
    An item done without a task (``(None, key, value)``) is yielded as ``(key, value, None)`` at once.
    """
    pending: dict[Any, Any] = {}
    while True:
        for ref, key, value in sends:
            if ref is None:
                yield key, value, None
                continue
            pending[ref] = key
            if len(pending) >= window:
                break
        if not pending:
            return
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            key = pending.pop(ref)
            try:
                value = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a worker that died must not stop the batch
                yield key, None, f"the Ray task failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            else:
                yield key, value, None


def _cluster_cpus(ray: Any) -> int:
    """The CPUs of the connected cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@contextlib.contextmanager
def _session(ray: Any, address: str | None, num_cpus: int | None) -> Iterator[None]:
    """Connected to Ray for the block: :func:`_connected`, or the connection this process already has
    (then left open)."""
    if ray.is_initialized():
        yield
        return
    with _connected(ray, address, num_cpus):
        yield


@contextlib.contextmanager
def _connected(ray: Any, address: str | None, num_cpus: int | None) -> Iterator[None]:
    """This process connected to Ray for the block (:func:`init_ray`), disconnected after it, whatever happens.

    ``ray.init`` runs in a thread of its own, which lives until the disconnect:

    - a signal must not cut ``ray.init`` short: an exception raised inside it can leave Ray's C++
      core worker half built, and the process then crashes at exit (SIGSEGV after our error line).
      The main thread holds SIGINT and SIGTERM until ``ray.init`` is done and raises them then;
    - in the main thread ``ray.init`` installs its own SIGTERM handler (``sys.exit(15)``, without our
      clean-up and error line); from another thread it leaves the process's handlers alone;
    - on Linux the processes of a local runtime stop when the thread that started them ends
      (``PR_SET_PDEATHSIG``), so that thread ends only after ``ray.shutdown``.

    A ``ray.init`` that has not finished :data:`INIT_GRACE_S` seconds after a signal (a cluster
    address that accepts connections but never answers) is abandoned: the signal is raised then.
    """
    failed: list[BaseException] = []
    started, release = threading.Event(), threading.Event()

    def owner() -> None:
        try:
            init_ray(ray, address, num_cpus)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            failed.append(e)
        started.set()
        release.wait()

    thread = threading.Thread(target=owner, name="ray-init", daemon=True)
    try:
        with deferred_interrupts():
            thread.start()
            held_since = None
            while not started.wait(0.1):
                signum = pending()
                if signum is not None:
                    held_since = held_since or time.monotonic()
                    if time.monotonic() - held_since > INIT_GRACE_S:  # ray.init hangs: stop waiting for it
                        raise Interrupted(signum)
            if failed:
                raise failed[0]
        yield
    finally:
        try:
            if started.is_set() and ray.is_initialized():
                with deferred_interrupts():  # a second signal must not cut the shutdown short either
                    ray.shutdown()
        finally:
            release.set()
            if started.is_set():
                thread.join()


def init_ray(ray: Any, address: str | None, num_cpus: int | None) -> None:
    """Start a local Ray runtime (``address`` None; its workers at :data:`WORKER_NICENESS`) or join the cluster
    at ``address`` (its own settings); one error line if not."""
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address is not None:
        _check_reachable(address)
    try:
        if address is None:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     _system_config={"worker_niceness": WORKER_NICENESS}, **quiet)
        else:
            ray.init(address=address, **quiet)
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError, Ray's own errors
        where = f"join the Ray cluster at {address}" if address else "start a local Ray runtime"
        raise SVFormerError(f"cannot {where}: {' '.join(str(e).split())[:300]}") from None


def _check_reachable(address: str) -> None:
    """One error line at once if nothing listens at ``address`` (``host:port``, also ``ray://host:port``):
    ``ray.init`` would retry such an address for minutes, printing Ray's warnings."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        if address == "auto":
            return
        raise SVFormerError(f"--ray-address {address}: expected HOST:PORT as `ray start --head` prints it")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise SVFormerError(f"cannot join the Ray cluster at {address}: nothing answers there "
                            f"({e.strerror or type(e).__name__}); is `ray start --head` running?") from None


def _read_clip(clip: Path) -> tuple[bytes, str | None]:
    """The clip's bytes for its task, or the reason it cannot be sent."""
    try:
        size = clip.stat().st_size
        if size > MAX_CLIP_BYTES:
            return b"", f"{clip}: {size} bytes, above the {MAX_CLIP_BYTES}-byte limit for sending a clip to Ray"
        return clip.read_bytes(), None
    except OSError as e:
        return b"", f"{clip}: unreadable ({e.strerror or e})"
