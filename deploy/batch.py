"""Simulate every clip of a folder with one export bundle: parallel, resumable, failure-tolerant.

Used by ``energy-report --videos DIR --model DIR`` for dataset averages (the paper's "average per
clip" figures). Clips are found recursively; a clip's class is the name of its folder below DIR
(``DIR/<class>/<clip>``, also ``DIR/<split>/<class>/<clip>``), stored as ``input.label`` in its run
records. Each clip's records go to ``OUT/<relative path>/`` atomically, so an interrupted batch
resumes where it stopped: clips whose folder already holds records are not simulated again. A clip
that fails (corrupt, too short, wrong kind) is reported on stderr, skipped and counted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from svformer_deploy.svformer.errors import SVFormerError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
EVENT_SUFFIXES = (".aedat4", ".bin", ".bs2", ".npy")


@dataclass
class BatchResult:
    """What a folder simulation did: record files, clips simulated now / earlier, failures."""

    out_dir: Path
    records: list[Path] = field(default_factory=list)
    simulated: int = 0
    resumed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (clip, reason)


def find_clips(root: str | Path, kind: str) -> list[tuple[Path, str | None]]:
    """``(clip, class label)`` for every video (``kind="video"``) or event file below ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise SVFormerError(f"{root}: not a folder of clips")
    suffixes = EVENT_SUFFIXES if kind == "events" else VIDEO_SUFFIXES
    clips = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not clips:
        raise SVFormerError(f"{root}: no {'event recordings' if kind == 'events' else 'videos'} "
                            f"({', '.join(suffixes)}) found")
    return [(p, p.parent.name if p.parent != root else None) for p in clips]


def _slot(root: Path, clip: Path) -> str:
    rel = clip.relative_to(root).as_posix()
    return re.sub(r"[^A-Za-z0-9._-]+", "_", rel)


def _simulate_one(clip: str, kind: str, label: str | None, model: str, out: str, views: tuple[int, int],
                  executor: str, threads: int) -> list[str]:
    """Worker: simulate one clip into ``out``; SVFormerError propagates as the failure reason."""
    import torch
    from svformer_deploy.simulators.run import simulate_file

    torch.set_num_threads(threads)
    kw = {"events": clip} if kind == "events" else {"video": clip}
    report = simulate_file(**kw, model=model, views=views, executor=executor, out_dir=out, label=label)
    return [str(p) for p in report.record_paths]


def simulate_folder(videos: str | Path, model: str | Path, out_dir: str | Path | None = None, workers: int = 2,
                    views: tuple[int, int] = (1, 1), executor: str = "float",
                    on_clip: Callable[[str, str | None], None] | None = None) -> BatchResult:
    """Simulate every clip below ``videos`` with the bundle ``model``.

    ``out_dir`` defaults to ``runs/batch-<model hash[:12]>``. ``on_clip(clip, error)`` is called after
    each clip (progress display). Returns the records of all clips, including resumed ones.
    """
    from svformer_deploy.export.bundle import load_bundle
    from svformer_deploy.simulators.run import bundle_input_spec

    bundle = load_bundle(model)
    kind = bundle_input_spec(bundle).file_kind  # video-events models read video files
    root = Path(videos)
    clips = find_clips(root, kind)
    out = Path(out_dir) if out_dir is not None else Path("runs") / f"batch-{bundle.model_hash[:12]}"
    result = BatchResult(out_dir=out)
    todo = []
    for clip, label in clips:
        slot = out / _slot(root, clip)
        done = sorted(slot.glob("*.json")) if slot.is_dir() else []
        if done:
            result.records += done
            result.resumed += 1
            if on_clip:
                on_clip(str(clip), None)
        else:
            todo.append((clip, label, slot))
    workers = max(1, min(workers, len(todo) or 1))
    threads = 1 if workers > 1 else max(1, (os.cpu_count() or 1))
    args = [(str(c), kind, lab, str(bundle.path), str(s), views, executor, threads) for c, lab, s in todo]
    if workers == 1:
        outcomes = ((a[0], _call(a)) for a in args)
        for clip, (paths, err) in outcomes:
            _collect(result, clip, paths, err, on_clip)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_simulate_one, *a): a[0] for a in args}
            for fut in as_completed(futures):
                clip = futures[fut]
                try:
                    paths, err = fut.result(), None
                except SVFormerError as e:
                    paths, err = [], str(e)
                except Exception as e:  # noqa: BLE001 - a crashing clip must not stop the batch
                    paths, err = [], f"{type(e).__name__}: {e}"
                _collect(result, clip, paths, err, on_clip)
    result.records.sort()
    return result


def _call(args: tuple) -> tuple[list[str], str | None]:
    try:
        return _simulate_one(*args), None
    except SVFormerError as e:
        return [], str(e)


def _collect(result: BatchResult, clip: str, paths: list[str], err: str | None,
             on_clip: Callable[[str, str | None], None] | None) -> None:
    if err is None:
        result.records += [Path(p) for p in paths]
        result.simulated += 1
    else:
        result.failures.append((clip, " ".join(err.split())))
    if on_clip:
        on_clip(clip, err)
