"""Simulate every clip of a folder with one export bundle: parallel, resumable, failure-tolerant.

Used by ``energy-report --videos DIR --model DIR`` for dataset averages (the paper's "average per
clip" figures). Clips are found recursively; a clip's class is the name of its folder below DIR
(``DIR/<class>/<clip>``, also ``DIR/<split>/<class>/<clip>``), stored as ``input.label`` in its run
records. Each clip's records go to ``OUT/<relative path>/`` atomically, so an interrupted batch
resumes where it stopped: clips whose folder already holds records are not simulated again. A clip
that fails (corrupt, too short, wrong kind) is reported on stderr, skipped and counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from svformer_deploy.svformer.data.media import EVENT_EXTENSIONS, VIDEO_EXTENSIONS
from svformer_deploy.svformer.errors import SVFormerError


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


_STOP = False  # set in a worker when the batch is cancelled: queued clips return at once


def _worker_init() -> None:
    """Workers leave Ctrl-C to the parent and turn its SIGTERM into a clean exit (records removed)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def stop(signum: int, frame: object) -> None:
        global _STOP
        _STOP = True
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def _simulate_group(group: list[tuple[str, str | None, str]], kind: str, model: str, views: tuple[int, int],
                    executor: str, threads: int, batch: int | str) -> list[tuple[str, list[str], str | None]]:
    """Worker: simulate a group of clips ``(clip, label, out folder)``, their views ``batch`` at a time
    through one executor pass; per clip ``(clip, record paths, None)`` or ``(clip, [], reason)``.

    A clip that cannot be read fails alone; the others of its group are simulated and written.
    """
    import torch
    from svformer_deploy.simulators.run import open_simulation, prepare_input, simulate_prepared

    torch.set_num_threads(threads)
    setup = open_simulation(model, executor)
    outcome: dict[str, tuple[list[str], str | None]] = {}
    ready = []
    for clip, label, out in group:
        try:
            video, events = (None, clip) if kind == "events" else (clip, None)
            ready.append((clip, prepare_input(setup.spec, video, events, views, setup.bundle.path), label, out))
        except SVFormerError as e:
            outcome[clip] = ([], str(e))
        except Exception as e:  # noqa: BLE001 - a crashing clip must not stop the batch
            outcome[clip] = ([], f"{type(e).__name__}: {e}")
    reports = simulate_prepared(setup, [r[1] for r in ready], [r[3] for r in ready], [r[2] for r in ready], batch)
    for (clip, _, _, _), rep in zip(ready, reports, strict=True):
        outcome[clip] = ([], str(rep)) if isinstance(rep, SVFormerError) else ([str(p) for p in rep.record_paths], None)
    return [(clip, *outcome[clip]) for clip, _, _ in group]


def group_clips(todo: list, views: int, workers: int, batch: int) -> list[list]:
    """Split the clips to simulate into groups of at most ``batch // views`` clips (at least 1) and at most
    a quarter of an equal share per worker, so every worker gets work, each group fills one executor pass,
    and progress and Ctrl-C stay fine-grained (an interrupt loses at most one group per worker)."""
    if not todo:
        return []
    size = max(1, min(batch // max(views, 1), -(-len(todo) // (4 * workers))))
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def simulate_folder(videos: str | Path, model: str | Path, out_dir: str | Path | None = None, workers: int = 2,
                    views: tuple[int, int] = (1, 1), executor: str = "float",
                    on_clip: Callable[[str, str | None], None] | None = None,
                    batch: int | str | None = None) -> BatchResult:
    """Simulate every clip below ``videos`` with the bundle ``model``.

    ``out_dir`` defaults to ``runs/batch-<model hash[:12]>``; it is checked for writability before
    any clip is simulated. Each worker takes a group of clips and runs their views ``batch`` at a
    time through one executor pass (default ``"auto"``: :func:`simulators.run.auto_batch`; 1: clip
    by clip). ``on_clip(clip, error)`` is called after each clip (progress display). Returns the
    records of all clips, including resumed ones. Ctrl-C (KeyboardInterrupt) cancels the queued
    clips, stops the running ones (their records are not written) and propagates.
    """
    from svformer_deploy.export.bundle import load_bundle
    from svformer_deploy.simulators.run import auto_batch, bundle_input_spec

    batch = "auto" if batch is None else batch
    if batch != "auto" and int(batch) < 1:
        raise SVFormerError(f"the batch size must be at least 1, not {batch}")
    bundle = load_bundle(model)
    if batch == "auto":
        batch = auto_batch(bundle.graph("ir_quantized" if executor == "integer" else "ir"))
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
            todo.append((str(clip), label, str(slot)))
    workers = max(1, min(workers, len(todo) or 1))
    threads = 1 if workers > 1 else max(1, (os.cpu_count() or 1))
    groups = group_clips(todo, views[0] * views[1], workers, int(batch))
    args = [(g, kind, str(bundle.path), views, executor, threads, batch) for g in groups]

    def finished(group: list, outcomes: list | None, err: str | None) -> None:
        for clip, paths, why in (outcomes if err is None else [(c, [], err) for c, _, _ in group]):
            _collect(result, clip, paths, why, on_clip)

    map_clips(_simulate_group, args, workers, finished)
    result.records.sort()
    return result


def map_clips(fn: Callable[..., Any], args: Sequence[tuple], workers: int,
              on_done: Callable[[str, Any, str | None], None]) -> None:
    """Call ``fn(*a)`` for every ``a`` in ``args`` (``a[0]`` names the clip), here or in a process pool.

    ``workers`` 1: in this process; more: a pool of that many processes (``fn`` must be a module-level
    function). After each clip ``on_done(clip, value, None)``, or ``on_done(clip, None, reason)`` when
    ``fn`` raised (an :class:`SVFormerError` gives its message, anything else its type and message):
    one failing clip never stops the others. Ctrl-C (KeyboardInterrupt) cancels the queued clips,
    stops the running ones and propagates.
    """
    if workers <= 1:
        for a in args:
            value, err = _call(fn, a)
            on_done(a[0], value, err)
        return
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init)
    try:
        futures = {pool.submit(_guarded, fn, *a): a[0] for a in args}
        for fut in as_completed(futures):
            clip = futures[fut]
            try:
                value, err = fut.result(), None
            except SVFormerError as e:
                value, err = None, str(e)
            except Exception as e:  # noqa: BLE001 - a crashing clip must not stop the batch
                value, err = None, f"{type(e).__name__}: {e}"
            on_done(clip, value, err)
    except BaseException:
        _cancel(pool)
        raise
    pool.shutdown(wait=True)


def _guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """Worker: a cancelled batch returns at once instead of starting the next queued clip."""
    if _STOP:
        raise SystemExit(1)
    return fn(*args)


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


def _call(fn: Callable[..., Any], args: tuple) -> tuple[Any, str | None]:
    """One clip in this process: ``(value, None)`` or ``(None, reason)``, as the worker pool reports it."""
    try:
        return fn(*args), None
    except SVFormerError as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - a crashing clip must not stop the batch (same as with workers)
        return None, f"{type(e).__name__}: {e}"


def _collect(result: BatchResult, clip: str, paths: list[str], err: str | None,
             on_clip: Callable[[str, str | None], None] | None) -> None:
    if err is None:
        result.records += [Path(p) for p in paths]
        result.simulated += 1
    else:
        result.failures.append((clip, " ".join(err.split())))
    if on_clip:
        on_clip(clip, err)
