"""Simulate every clip of a folder with one export bundle: parallel, resumable, failure-tolerant.

Used by ``energy-report --videos DIR --model DIR`` for dataset averages (the paper's "average per
clip" figures). Clips are found recursively; a clip's class is the name of its folder below DIR
(``DIR/<class>/<clip>``, also ``DIR/<split>/<class>/<clip>``), stored as ``input.label`` in its run
records. Each clip's records go to ``OUT/<relative path>/`` atomically, so an interrupted batch
resumes where it stopped: clips whose folder already holds records are not simulated again. A clip
that fails (corrupt, too short, wrong kind) is reported on stderr, skipped and counted.

One driver, several runners. :func:`simulate_folder` finds the clips, skips the resumed ones, loads
the bundle once and hands the rest to a *runner* (a local process pool here, a Ray cluster in
``deploy/ray_batch.py``). Every runner splits the clips into the same groups (:func:`group_clips`),
calls the same per-group function, :func:`group_records` (the group's views ``batch`` at a time
through one executor pass, so every runner gives the same records), and yields ``(job, records,
error)`` per clip; the driver alone writes each clip's records into its slot with
:func:`simulators.record.write_records` (atomically, all views or none), so workers need no access
to the run-record folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import signal
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svformer_deploy.svformer.data.media import EVENT_EXTENSIONS, VIDEO_EXTENSIONS
from svformer_deploy.svformer.errors import SVFormerError

if TYPE_CHECKING:
    from svformer_deploy.export.bundle import Bundle
    from svformer_deploy.simulators.run import SimSetup


@dataclass
class BatchResult:
    """What a folder simulation did: record files, clips simulated now / earlier, failures."""

    out_dir: Path
    records: list[Path] = field(default_factory=list)
    simulated: int = 0
    resumed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (clip, reason)


def find_clips(root: str | Path, kind: str) -> list[tuple[Path, str | None]]:
    """``(clip, class label)`` for every video (``kind="video"``) or event file below ``root``, sorted.

    Hidden files (``.name``) are not clips.
    """
    root = Path(root)
    if not root.is_dir():
        raise SVFormerError(f"{root}: not a folder of clips")
    suffixes = EVENT_EXTENSIONS if kind == "events" else VIDEO_EXTENSIONS
    clips = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in suffixes)
    if not clips:
        raise SVFormerError(f"{root}: no {'event recordings' if kind == 'events' else 'videos'} "
                            f"({', '.join(suffixes)}) found")
    return [(p, p.parent.name if p.parent != root else None) for p in clips]


def clip_slot(root: Path, clip: Path) -> str:
    """The folder name of ``clip``'s records: a readable stem plus a hash of the whole relative path.

    Injective (two clips never share a slot, e.g. ``cls/ñ.mp4`` and ``cls/é.mp4``) and stable, so
    a rerun finds the records of clips simulated earlier.
    """
    rel = clip.relative_to(root).as_posix()
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", rel).strip("._")[:80] or "clip"
    return f"{readable}-{hashlib.sha256(rel.encode('utf-8', 'surrogateescape')).hexdigest()[:12]}"


def check_writable(out: Path) -> None:
    """Create ``out`` if needed and prove a file can be written in it; one clear error otherwise.

    Done before any clip is simulated, so an unusable ``--runs`` folder costs nothing.
    """
    if out.exists() and not out.is_dir():
        raise SVFormerError(f"{out}: exists and is not a folder (run records go into a folder)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SVFormerError(f"{out}: cannot write run records there ({e.strerror or e})") from None


# ------------------------------------------------------------------------------------------
# a group of clips (runs in a worker: a pool process, a Ray worker, or this process)
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipJob:
    """One clip to simulate: the file as found, its absolute path (for the records), class label, slot folder."""

    clip: Path
    resolved: str
    label: str | None
    slot: Path


@dataclass(frozen=True)
class ClipSettings:
    """What every clip of a batch is simulated with (sent to the workers with each group)."""

    kind: str  # the file kind the bundle reads: "video" (also video-events models) or "events"
    views: tuple[int, int]
    executor: str  # "float" | "integer"
    model_info: dict[str, Any]  # the records' "model" entry (simulators.run.model_info, made by the driver)
    batch: int = 1  # clip views per executor pass
    threads: int = 1  # torch threads per worker


Outcome = tuple[ClipJob, list[dict[str, Any]], str | None]  # (job, its records, None) or (job, [], reason)
Runner = Callable[["Bundle", list[ClipJob], ClipSettings], Iterator[Outcome]]

_SETUP: dict[tuple[str, str], SimSetup] = {}  # a worker's simulator of the batch's graph (one entry)


def worker_setup(bundle: Bundle, executor: str) -> SimSetup:
    """The loaded bundle's :class:`simulators.run.SimSetup` for ``executor``, built once per worker process."""
    from svformer_deploy.simulators.run import open_simulation

    key = (bundle.model_hash, executor)
    if key not in _SETUP:
        _SETUP.clear()
        _SETUP[key] = open_simulation(bundle, executor)
    return _SETUP[key]


def group_clips(todo: list, views: int, workers: int, batch: int) -> list[list]:
    """Split the clips to simulate into groups of at most ``batch // views`` clips (at least 1) and at most
    a quarter of an equal share per worker, so every worker gets work, each group fills one executor pass,
    and progress and Ctrl-C stay fine-grained (an interrupt loses at most one group per worker)."""
    if not todo:
        return []
    size = max(1, min(batch // max(views, 1), -(-len(todo) // (4 * workers))))
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def settings_groups(jobs: list[ClipJob], settings: ClipSettings, workers: int) -> list[list[ClipJob]]:
    """:func:`group_clips` of a runner's clips for ``workers`` parallel workers (every runner groups alike)."""
    return group_clips(jobs, settings.views[0] * settings.views[1], workers, settings.batch)


def group_records(setup: SimSetup, jobs: list[ClipJob], settings: ClipSettings,
                  local: list[Path] | None = None) -> list[Outcome]:
    """Simulate a group of clips, their views ``settings.batch`` at a time through one executor pass, and
    return each clip's run records (one per view; nothing is written) or the reason it failed.

    A clip that cannot be read fails alone; the others of its group are simulated. ``local``: copies
    of the clips to read instead of ``job.clip`` (a Ray worker on a machine without the driver's
    files); the records name the original clips. The records are those ``simulate_file`` writes for
    the clip when it runs in a pass with the same other views.
    """
    import torch
    from svformer_deploy.simulators.run import prepare_input, simulate_records

    torch.set_num_threads(settings.threads)
    paths = local if local is not None else [job.clip for job in jobs]
    reasons: dict[int, str] = {}
    ready = []  # (index in the group, prepared input)
    for i, path in enumerate(paths):
        video, events = (path, None) if settings.kind == "video" else (None, path)
        try:
            ready.append((i, prepare_input(setup.spec, video, events, settings.views, setup.bundle.path)))
        except SVFormerError as e:
            reasons[i] = str(e)
        except Exception as e:  # noqa: BLE001 - a crashing clip must not stop the batch
            reasons[i] = f"{type(e).__name__}: {e}"
    runs = simulate_records(setup, [p for _, p in ready], [jobs[i].label for i, _ in ready], settings.batch,
                            sources=[jobs[i].resolved for i, _ in ready], model=settings.model_info)
    records = {}
    for (i, _), run in zip(ready, runs, strict=True):
        if isinstance(run, SVFormerError):
            reasons[i] = str(run)
        else:
            records[i] = run.records
    return [(job, records[i], None) if i in records else (job, [], reasons[i]) for i, job in enumerate(jobs)]


def run_group(bundle: Bundle, jobs: list[ClipJob], settings: ClipSettings, local: list[Path] | None = None
              ) -> list[Outcome]:
    """:func:`group_records` with this process's simulator of ``bundle`` (:func:`worker_setup`), never raising:
    a bundle that cannot be simulated, or a crash inside the executor pass, fails every clip of the group
    with its reason. Reasons name the clips, not the worker's copies (``local``) of them."""
    try:
        outcomes = group_records(worker_setup(bundle, settings.executor), jobs, settings, local)
    except SVFormerError as e:
        outcomes = [(job, [], str(e)) for job in jobs]
    except Exception as e:  # noqa: BLE001 - a crashing group must not stop the batch
        outcomes = [(job, [], f"{type(e).__name__}: {e}") for job in jobs]
    if local is None:
        return outcomes
    return [(job, records, err if err is None else err.replace(str(copy), str(job.clip)))
            for (job, records, err), copy in zip(outcomes, local, strict=True)]


# ------------------------------------------------------------------------------------------
# the driver
# ------------------------------------------------------------------------------------------
def simulate_folder(videos: str | Path, model: str | Path, out_dir: str | Path | None = None, workers: int = 2,
                    views: tuple[int, int] = (1, 1), executor: str = "float",
                    on_clip: Callable[[str, str | None], None] | None = None,
                    batch: int | str | None = None, runner: Runner | None = None) -> BatchResult:
    """Simulate every clip below ``videos`` with the bundle ``model``.

    ``out_dir`` defaults to ``runs/batch-<model hash[:12]>``; it is checked for writability before
    any clip is simulated. The clips run in groups (:func:`group_clips`), each group's views ``batch``
    at a time through one executor pass (default ``"auto"``: :func:`simulators.run.auto_batch`; 1:
    clip by clip). ``on_clip(clip, error)`` is called after each clip (progress display).
    ``runner`` simulates the clips that have no records yet (default: :func:`pool_runner` of
    ``workers`` processes; ``deploy.ray_batch.ray_runner`` for Ray); this function writes their records.
    Returns the records of all clips, including resumed ones. Ctrl-C (KeyboardInterrupt) cancels
    the queued clips, stops the running ones (their records are not written) and propagates.
    """
    from svformer_deploy.export.bundle import load_bundle
    from svformer_deploy.simulators.run import auto_batch, bundle_input_spec, executor_graph, model_info

    batch = "auto" if batch is None else batch
    if batch != "auto" and int(batch) < 1:
        raise SVFormerError(f"the batch size must be at least 1, not {batch}")
    bundle = load_bundle(model)
    kind = bundle_input_spec(bundle).file_kind  # video-events models read video files
    root = Path(videos)
    clips = find_clips(root, kind)
    out = Path(out_dir) if out_dir is not None else Path("runs") / f"batch-{bundle.model_hash[:12]}"
    check_writable(out)
    result = BatchResult(out_dir=out)
    todo = []
    for clip, label in clips:
        slot = out / clip_slot(root, clip)
        done = sorted(slot.glob("*.json")) if slot.is_dir() else []
        if done:
            result.records += done
            result.resumed += 1
            if on_clip:
                on_clip(str(clip), None)
        else:
            todo.append(ClipJob(clip, str(clip.resolve()), label, slot))
    if todo:
        graph = executor_graph(bundle, executor)  # read and verified once, here
        settings = ClipSettings(kind=kind, views=tuple(views), executor=executor, model_info=model_info(bundle),
                                batch=auto_batch(graph) if batch == "auto" else int(batch))
        run = runner if runner is not None else pool_runner(workers)
        with contextlib.closing(run(bundle, todo, settings)) as outcomes:
            for job, records, err in outcomes:
                _collect(result, job, records, err, on_clip)
    result.records.sort()
    return result


def _collect(result: BatchResult, job: ClipJob, records: list[dict[str, Any]], err: str | None,
             on_clip: Callable[[str, str | None], None] | None) -> None:
    """Write one clip's records into its slot (all views or none) and count it, or count its failure."""
    from svformer_deploy.simulators.record import write_records

    if err is None:
        try:
            result.records += write_records(records, job.slot, job.clip.stem)
            result.simulated += 1
        except SVFormerError as e:
            err = str(e)
    if err is not None:
        result.failures.append((str(job.clip), " ".join(err.split())))
    if on_clip:
        on_clip(str(job.clip), err)


# ------------------------------------------------------------------------------------------
# the local process pool
# ------------------------------------------------------------------------------------------
_STOP = False  # set in a worker when the batch is cancelled: queued clips return at once
_BUNDLE: Bundle | None = None  # the batch's bundle in a pool worker (graph loaded by the parent)


def _worker_init(bundle: Bundle | None = None) -> None:
    """Workers run torch on one thread, keep the parent's loaded bundle (if any), leave Ctrl-C to the parent
    and turn its SIGTERM into a clean exit (nothing is written by a worker).

    One thread before any torch operation: a forked worker of a parent that has run a parallel torch
    operation (GNU OpenMP) would otherwise hang in its first parallel operation, waiting on thread-pool
    threads that exist only in the parent (what PyTorch's own DataLoader workers avoid the same way).
    """
    import torch

    torch.set_num_threads(1)
    global _BUNDLE
    _BUNDLE = bundle
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def stop(signum: int, frame: object) -> None:
        global _STOP
        _STOP = True
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def pool_map(fn: Callable[..., Any], args: Sequence[tuple], workers: int, bundle: Bundle | None = None
             ) -> Iterator[tuple[Any, Any, str | None]]:
    """Call ``fn(*a)`` for every ``a`` in ``args`` (``a[0]`` names the clip or group) in a pool of ``workers``
    processes (``fn`` must be a module-level function; ``bundle`` is handed to every worker once, as
    :data:`_BUNDLE`). Yields, in the order the
    clips finish, ``(a[0], value, None)``, or ``(a[0], None, reason)`` when ``fn`` raised (an
    :class:`SVFormerError` gives its message, anything else its type and message): one failing clip
    never stops the others. Ctrl-C (KeyboardInterrupt), or closing the generator, cancels the queued
    clips, stops the running ones and propagates.
    """
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, initargs=(bundle,))
    try:
        futures = {pool.submit(_guarded, fn, *a): a[0] for a in args}
        for fut in as_completed(futures):
            try:
                value, err = fut.result(), None
            except SVFormerError as e:
                value, err = None, str(e)
            except Exception as e:  # noqa: BLE001 - a crashing clip must not stop the batch
                value, err = None, f"{type(e).__name__}: {e}"
            yield futures[fut], value, err
    except BaseException:  # Ctrl-C in the driver, or the driver stopped reading (GeneratorExit)
        _cancel(pool)
        raise
    pool.shutdown(wait=True)


ClipFn = Callable[..., Any]
"""A per-clip function for :func:`map_clips`: ``fn(bundle, clip, path, *args)``. ``clip`` names the clip as
given; ``path`` is the file to read, the clip itself or (on Ray) a worker's copy of it."""


def call_clip(fn: ClipFn, bundle: Bundle | None, clip: str, path: Path, args: tuple, threads: int
              ) -> tuple[Any, str | None]:
    """``fn(bundle, clip, path, *args)`` with ``threads`` torch threads: ``(value, None)`` or ``(None, reason)``."""
    import torch

    torch.set_num_threads(threads)
    return _call(fn, (bundle, clip, path, *args))


def map_clips(fn: ClipFn, tasks: Sequence[tuple[str, tuple]], on_done: Callable[[str, Any, str | None], None],
              bundle: Bundle | None = None, workers: int | None = None, ray: bool = False,
              ray_address: str | None = None) -> None:
    """Call ``fn(bundle, clip, path, *args)`` for every ``(clip, args)`` of ``tasks`` and report each as it
    finishes: ``on_done(clip, value, None)``, or ``on_done(clip, None, reason)`` when ``fn`` raised (one failing
    clip never stops the others).

    Where: ``workers`` processes (default 2, one torch thread each; 1: this process, all cores), or Ray tasks
    with ``ray`` (a local runtime of ``workers`` CPUs, default all cores) or ``ray_address`` (a running
    cluster), one per clip, the clip sent as bytes (:func:`deploy.ray_batch.ray_map_clips`). ``bundle`` is
    handed to every worker once.
    ``fn`` returns what the driver keeps (and writes); workers write nothing. Ctrl-C (KeyboardInterrupt)
    cancels the queued clips, stops the running ones and propagates.
    """
    if not tasks:
        return
    if ray or ray_address is not None:
        from .ray_batch import ray_map_clips

        results = ray_map_clips(fn, tasks, bundle, ray_address, None if ray_address is not None else workers)
    elif (workers := min(workers or 2, len(tasks))) <= 1:
        threads = max(1, os.cpu_count() or 1)
        results = ((clip, *call_clip(fn, bundle, clip, Path(clip), args, threads)) for clip, args in tasks)
    else:
        results = pool_map(_pool_clip, [(clip, fn, args) for clip, args in tasks], workers, bundle)
    with contextlib.closing(results) as finished:
        for clip, value, err in finished:
            on_done(clip, value, err)


def _pool_clip(clip: str, fn: ClipFn, args: tuple) -> Any:
    """Pool worker: ``fn`` on one clip with the bundle the parent handed over (:data:`_BUNDLE`); the worker runs torch
    on one thread since :func:`_worker_init`."""
    return fn(_BUNDLE, clip, Path(clip), *args)


def _guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """Worker: a cancelled batch returns at once instead of starting the next queued clip."""
    if _STOP:
        raise SystemExit(1)
    return fn(*args)


def _call(fn: Callable[..., Any], args: tuple) -> tuple[Any, str | None]:
    """One clip in this process: ``(value, None)`` or ``(None, reason)``, as the worker pool reports it."""
    try:
        return fn(*args), None
    except SVFormerError as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - a crashing clip must not stop the batch (same as with workers)
        return None, f"{type(e).__name__}: {e}"


def _pool_group(jobs: list[ClipJob], settings: ClipSettings) -> list[Outcome]:
    """Pool worker: :func:`run_group` with the bundle the parent handed over (:data:`_BUNDLE`)."""
    if _BUNDLE is None:
        raise SystemExit(1)
    return run_group(_BUNDLE, jobs, settings)


def pool_runner(workers: int) -> Runner:
    """A :data:`Runner` on ``workers`` local processes (one group of clips per process at a time, one torch
    thread each); with one worker the groups run in this process on all cores."""

    def run(bundle: Bundle, jobs: list[ClipJob], settings: ClipSettings) -> Iterator[Outcome]:
        n = max(1, min(workers, len(jobs)))
        groups = settings_groups(jobs, settings, n)
        if n == 1:
            settings = dataclasses.replace(settings, threads=max(1, os.cpu_count() or 1))
            try:
                for group in groups:
                    yield from run_group(bundle, group, settings)
            finally:
                _SETUP.clear()  # this process keeps no simulator after the batch
            return
        for group, outcomes, err in pool_map(_pool_group, [(g, settings) for g in groups], n, bundle):
            yield from outcomes if err is None else [(job, [], err) for job in group]

    return run


def _cancel(pool: ProcessPoolExecutor) -> None:
    """Drop the queued clips and stop the running ones; wait until the workers have cleaned up."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        with contextlib.suppress(ProcessLookupError, OSError):
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
    for p in processes:
        p.join(30)
        if p.is_alive():
            p.kill()
