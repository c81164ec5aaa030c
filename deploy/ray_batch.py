"""Simulate a folder of clips on Ray: a local Ray runtime or a running cluster (``energy-report --ray``).

A :data:`deploy.batch.Runner` for :func:`deploy.batch.simulate_folder`, which does everything else
(clip discovery, slots, resume, writing the records). One Ray task per clip runs the batch's per-clip
function :func:`deploy.batch.run_job`. The loaded bundle (its graph included) is put in the object
store once and each worker process takes it from there once; a clip travels to its task as bytes
(read by the driver) and the task returns the clip's run records to the driver, which writes them.
So the workers need the package and Ray, but neither the clips, the bundle nor the run-record folder:
no shared file system (docs/cluster.md).

Ray is an optional extra (``pip install 'svformer-deploy[ray]'``), imported only here and only when
a Ray batch starts.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svformer_deploy.svformer.errors import SVFormerError

from .batch import ClipJob, ClipSettings, Outcome, Runner, run_job

if TYPE_CHECKING:
    from svformer_deploy.export.bundle import Bundle

EXTRA = "pip install 'svformer-deploy[ray]'"
MAX_CLIP_BYTES = 1 << 30  # a clip is sent to its task in one piece


def import_ray() -> Any:
    """The ``ray`` module, or one clear error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise SVFormerError(f"--ray needs Ray, which is not installed: {EXTRA}") from None
    return ray


_WORKER_BUNDLE: dict[str, Any] = {}  # in a Ray worker process: object id -> the batch's bundle (one entry)


def _ray_clip(bundle_box: list, job: ClipJob, settings: ClipSettings, data: bytes) -> Outcome:
    """The Ray task: one clip, given as its bytes; returns its records (or its failure) to the driver.

    ``bundle_box`` holds the bundle's object reference inside a list, so Ray does not fetch and
    deserialise it for every task: each worker process takes it from the object store once.
    """
    import ray

    ref = bundle_box[0]
    key = ref.hex()
    if key not in _WORKER_BUNDLE:
        _WORKER_BUNDLE.clear()
        _WORKER_BUNDLE[key] = ray.get(ref)
    with tempfile.TemporaryDirectory(prefix="svformer-clip-") as tmp:
        local = Path(tmp) / job.clip.name  # the same suffix: the decoder goes by it
        local.write_bytes(data)
        return run_job(_WORKER_BUNDLE[key], job, settings, local)


def ray_runner(address: str | None = None, num_cpus: int | None = None) -> Runner:
    """A :data:`deploy.batch.Runner` on Ray.

    ``address``: a running cluster to join (``ray start --head`` printed it; ``"auto"`` finds one on
    this machine); ``None`` starts a local runtime of ``num_cpus`` CPUs (default: all cores) for
    this batch and stops it afterwards. Each clip is one task of one CPU. If Ray is already
    initialised in this process, that runtime is used and left running.
    """
    ray = import_ray()

    def run(bundle: Bundle, jobs: list[ClipJob], settings: ClipSettings) -> Iterator[Outcome]:
        started = False
        if not ray.is_initialized():
            _init(ray, address, num_cpus)
            started = True
        pending: dict[Any, ClipJob] = {}
        try:
            task = ray.remote(num_cpus=1, max_retries=0)(_ray_clip)
            box = [ray.put(bundle)]  # the loaded graph, once for all tasks
            window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))  # clips in flight
            queue = iter(jobs)
            while True:
                for job in queue:
                    data, err = _read_clip(job.clip)
                    if err is not None:
                        yield job, [], err
                        continue
                    pending[task.remote(box, job, settings, data)] = job
                    if len(pending) >= window:
                        break
                if not pending:
                    break
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    job = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - a worker that died must not stop the batch
                        outcome = (job, [], f"{job.clip}: the Ray task failed ({type(e).__name__}: "
                                            f"{str(e).splitlines()[0] if str(e) else ''})")
                    yield outcome
        except BaseException:  # Ctrl-C, or the driver stopped reading (GeneratorExit): cancel the rest
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001, S110 - a task that already finished cannot be cancelled
                    pass
            raise
        finally:
            if started:
                ray.shutdown()

    return run


def _init(ray: Any, address: str | None, num_cpus: int | None) -> None:
    """Start a local Ray runtime (``address`` None) or join the cluster at ``address``; one error line if not."""
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address is None:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError, Ray's own errors
        where = f"join the Ray cluster at {address}" if address else "start a local Ray runtime"
        raise SVFormerError(f"cannot {where}: {' '.join(str(e).split())[:300]}") from None


def _read_clip(clip: Path) -> tuple[bytes, str | None]:
    """The clip's bytes for its task, or the reason it cannot be sent."""
    try:
        size = clip.stat().st_size
        if size > MAX_CLIP_BYTES:
            return b"", f"{clip}: {size} bytes, above the {MAX_CLIP_BYTES}-byte limit for sending a clip to Ray"
        return clip.read_bytes(), None
    except OSError as e:
        return b"", f"{clip}: unreadable ({e.strerror or e})"
