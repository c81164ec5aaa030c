"""Labelled datasets of video clips and event recordings for training and evaluation.

Layouts (each builder returns a :class:`ClipDataset`):

- **folder per class** (:func:`folder_dataset`): ``root/<class>/<file>``; class names are the sorted
  sub-folder names, or the lines of ``root/classes.txt`` (or ``root/../classes.txt``) when present.
  Files whose extension is not a video (or, for event models, an event) extension are ignored.
- **CSV list** (:func:`csv_dataset`): lines ``path,label`` (an optional ``path,label`` header);
  relative paths are relative to the CSV file; labels are class names, or integers ``0..K-1``.
- **N-MNIST small** (:func:`nmnist_dataset`): ``root/<sample>.bs2`` plus label files
  ``train1K.txt`` / ``test100.txt`` (header ``#sample #class``, then ``<sample> <class>`` lines).
- **synthetic action set** (:func:`synthetic_dataset`): ``root/{train,test}/<class>/<i>.mp4`` with
  ``root/classes.txt`` (written by :func:`svformer.data.synthetic.generate_dataset`).

An item is ``(clip, label)`` with ``clip`` float32 ``[T, C, S, S]`` (video: normalised RGB; events:
per-pixel event counts of 2 polarity channels). A file that cannot be read does not stop training:
the item comes back as a :class:`BadSample` (path and reason), :func:`collate` leaves it out of the
batch and lists it, and :meth:`ClipDataset.skip` records it, prints one ``warning:`` line on stderr
naming it and the reason, and drops it from later epochs; :meth:`ClipDataset.scan` finds such files
before training. Empty datasets and unknown labels raise :class:`SVFormerError`.

Randomness (augmentation, shuffling) is a function of ``(seed, epoch, index)`` only, so results do not
depend on the number of DataLoader worker processes.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ..checks import is_number, short
from ..config import LIMITS
from ..errors import SVFormerError
from .events import (
    FIT_METHODS,
    MAX_SENSOR_SIDE,
    SPLIT_METHODS,
    load_event_clip,
    load_video_events,
    read_events,
    video_to_event_frames,
)
from .media import EVENT_EXTENSIONS, VIDEO_EXTENSIONS

KINDS = ("video", "events", "video-events")
MAX_NORMALISATION = 1e6  # bound on |mean| and std of a preprocessing object


@dataclass(frozen=True)
class InputSpec:
    """How a file becomes a model input ``[T, C, S, S]``: the one reading of a checkpoint's ``preprocessing``
    (and an export bundle's), used by training, export, calibration, simulation and the folder commands.

    ``kind`` (the encoding) is ``"video"`` (T frames, linspace over a window of T·``frame_stride`` frames,
    short side resized to S, crop, normalised by ``mean``/``std``: one value or one per channel),
    ``"events"`` (event recordings, N-MNIST binaries included: events split into T slices by ``split``,
    2 polarity channels of event counts, sensor fitted to S by ``fit``) or ``"video-events"`` (video files
    turned into 2-channel luma-change frames, an event-camera emulation); see :mod:`svformer.data.events`.
    """

    kind: str = "video"
    time_steps: int = 16
    size: int = 224
    frame_stride: int = 4
    mean: float | tuple[float, ...] = 0.45
    std: float | tuple[float, ...] = 0.225
    split: str = "number"
    fit: str = "auto"
    sensor_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SVFormerError(f"input kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.time_steps < 1 or self.size < 1:
            raise SVFormerError("time_steps and size must be >= 1")
        if self.frame_stride < 1:
            raise SVFormerError(f"frame_stride must be >= 1, got {self.frame_stride}")
        if self.split not in SPLIT_METHODS:
            raise SVFormerError(f"event split must be one of {', '.join(SPLIT_METHODS)}, got {self.split!r}")
        if self.fit not in FIT_METHODS:
            raise SVFormerError(f"event fit must be one of {', '.join(FIT_METHODS)}, got {self.fit!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if isinstance(v, tuple) and len(v) not in (1, 3):
                raise SVFormerError(f"{name} must be one value or one per RGB channel, got {len(v)} values")
        if any(s <= 0 for s in _values(self.std)):
            raise SVFormerError(f"std must be > 0, got {self.std}")
        if self.sensor_size is not None and (len(self.sensor_size) != 2 or min(self.sensor_size) < 1):
            raise SVFormerError(f"sensor_size must be (width, height) >= 1 pixel, got {self.sensor_size}")

    @property
    def encoding(self) -> str:
        """The input encoding (same as ``kind``)."""
        return self.kind

    @property
    def channels(self) -> int:
        return 3 if self.kind == "video" else 2

    @property
    def file_kind(self) -> str:
        """What files it reads: ``"events"`` (event recordings) or ``"video"`` (video files, also for video-events)."""
        return "events" if self.kind == "events" else "video"

    @property
    def extensions(self) -> tuple[str, ...]:
        return EVENT_EXTENSIONS if self.kind == "events" else VIDEO_EXTENSIONS

    @classmethod
    def from_preprocessing(cls, prep: Mapping[str, Any] | None, config: Any = None, where: str = "",
                           match_model: bool = True) -> InputSpec:
        """Validate and read a ``preprocessing`` dict (:meth:`to_preprocessing`'s format).

        ``config`` (an :class:`svformer.config.SVFormerConfig`) fills what ``prep`` leaves out (an empty or
        missing ``prep`` means the config's default: events for 2 input channels, else video) and must agree
        with it (time steps, size, channels) unless ``match_model`` is False. Values are bounded (time steps
        and size by the model limits of :data:`svformer.config.LIMITS`, |mean|, std <= 1e6, sensor sides
        below 2^16). ``where`` prefixes error messages (e.g. the file). Raises :class:`SVFormerError` for
        anything inconsistent or malformed; this is the one validation of a ``preprocessing`` object.
        """
        at = f"{where}: " if where else ""
        if prep is not None and not isinstance(prep, Mapping):
            raise SVFormerError(f"{at}preprocessing must be a mapping, got {type(prep).__name__}")
        p = dict(prep or {})
        if "input" not in p and config is None:
            raise SVFormerError(f"{at}preprocessing names no input kind ('input': {', '.join(KINDS)})")
        kind = p.get("input", "events" if config is not None and config.in_channels == 2 else "video")
        if not isinstance(kind, str) or kind not in KINDS:
            raise SVFormerError(f"{at}preprocessing input {short(kind)} is unknown; "
                                f"expected one of {', '.join(KINDS)}")

        def integer(key: str, default: Any, hi: int) -> int:
            v = p.get(key, default)
            if not (is_number(v) and v == int(v) and 1 <= v <= hi):
                raise SVFormerError(f"{at}preprocessing {key} must be an integer in 1..{hi}, got {short(v)}")
            return int(v)

        def text(key: str, default: str) -> str:
            v = p.get(key, default)
            if not isinstance(v, str):
                raise SVFormerError(f"{at}preprocessing {key} must be a string, got {short(v)}")
            return v

        def numbers(key: str, default: float) -> float | tuple[float, ...]:
            v = p.get(key, default)
            vals = list(v) if isinstance(v, list | tuple) else [v]
            if not vals or len(vals) > 64 or not all(is_number(x) and abs(x) <= MAX_NORMALISATION for x in vals):
                raise SVFormerError(f"{at}preprocessing {key} must be a finite number or a list of them, "
                                    f"got {short(v)}")
            vals = [float(x) for x in vals]
            return vals[0] if len(set(vals)) == 1 else tuple(vals)

        steps = integer("time_steps", config.time_steps if config is not None else None, LIMITS["time_steps"])
        size = integer("size", config.img_size if config is not None else None, LIMITS["img_size"])
        if "polarities" in p:
            integer("polarities", None, 2)
        sensor = p.get("sensor_size")
        if sensor is not None:
            if not (isinstance(sensor, list | tuple) and len(sensor) == 2
                    and all(is_number(s) and s == int(s) and 1 <= s <= MAX_SENSOR_SIDE for s in sensor)):
                raise SVFormerError(f"{at}preprocessing sensor_size must be [width, height] in "
                                    f"1..{MAX_SENSOR_SIDE}, got {short(sensor)}")
            sensor = (int(sensor[0]), int(sensor[1]))
        try:
            spec = cls(kind=kind, time_steps=steps, size=size, frame_stride=integer("frame_stride", 4, 1 << 16),
                       mean=numbers("mean", 0.45), std=numbers("std", 0.225), split=text("split", "number"),
                       fit=text("fit", "auto"), sensor_size=sensor)
        except SVFormerError as e:
            raise SVFormerError(f"{at}preprocessing: {e}") from None
        if config is not None and match_model:
            spec.check_shape((config.in_channels, config.img_size, config.img_size), config.time_steps, where)
        return spec

    def check_shape(self, shape: Sequence[int], time_steps: int, where: str = "") -> None:
        """Refuse a model whose input ``shape`` ``(C, H, W)`` per step, over ``time_steps``, is not this spec's."""
        at = f"{where}: " if where else ""
        c, h, w = (int(v) for v in shape)
        if h != w or self.size != h or self.time_steps != time_steps:
            raise SVFormerError(f"{at}preprocessing (T={self.time_steps}, size {self.size}) does not match the "
                                f"model's input (T={time_steps}, {c}x{h}x{w}); re-export the model")
        if self.channels != c:
            raise SVFormerError(f"{at}preprocessing says {self.kind} input ({self.channels} channels) but the "
                                f"model takes {c} channels")

    def to_preprocessing(self) -> dict[str, Any]:
        """The checkpoint ``preprocessing`` dict for models trained on this input."""
        if self.kind == "video-events":
            return {"input": "video-events", "time_steps": self.time_steps, "size": self.size,
                    "frame_stride": self.frame_stride, "polarities": 2,
                    "values": "luma change between consecutive sampled frames (Y in [0, 1]); channel 0 OFF, 1 ON"}
        if self.kind == "events":
            out: dict[str, Any] = {"input": "events", "time_steps": self.time_steps, "size": self.size,
                                   "polarities": 2, "split": self.split, "fit": self.fit, "values": "event counts"}
            if self.sensor_size is not None:
                out["sensor_size"] = list(self.sensor_size)
            return out
        return {"input": "video", "time_steps": self.time_steps, "size": self.size,
                "frame_stride": self.frame_stride, "mean": _per_channel(self.mean), "std": _per_channel(self.std)}

    def load_clip(self, path: str | os.PathLike, train: bool = False,
                  rng: np.random.Generator | None = None) -> Tensor:
        """One file as the model input ``[T, C, S, S]`` float32 (raises :class:`SVFormerError` for a bad file).

        ``train`` with ``rng``: the decode-time random window and crop of a video (no flip; flips are
        :class:`Augment`'s job); otherwise deterministic (centred window, centre crop).
        """
        train = train and rng is not None
        if self.kind == "events":
            return load_event_clip(path, self.time_steps, self.size, self.split, self.fit, self.sensor_size)
        if self.kind == "video-events":
            return load_video_events(path, self.time_steps, self.size, self.frame_stride, train=train, rng=rng)
        from .video import load_clip

        return load_clip(path, time_steps=self.time_steps, size=self.size, frame_stride=self.frame_stride,
                         train=train, rng=rng, mean=self.mean, std=self.std, hflip=False)

    def load_views(self, path: str | os.PathLike, temporal_views: int = 1, spatial_crops: int = 1,
                   frame_transform: Any = None) -> tuple[Tensor, list[list[int] | None], dict[str, Any]]:
        """Test-time views ``[V, T, C, S, S]`` of one file, their frame indices and details of the source.

        Videos (and video-events) give ``temporal_views x spatial_crops`` views decoded once; view
        ``(0, 0)`` of a 1x1 request equals :meth:`load_clip`. Event recordings give exactly one view.
        ``frame_transform(index, rgb)`` changes every decoded frame before resizing and normalisation
        (input noise, :mod:`svformer.data.noise`); event recordings have no frames and refuse it.
        """
        if self.kind == "events":
            if frame_transform is not None:
                from .noise import EVENTS_REFUSAL

                raise SVFormerError(EVENTS_REFUSAL)
            if (temporal_views, spatial_crops) != (1, 1):
                raise SVFormerError(f"--views {temporal_views}x{spatial_crops}: event recordings give one view; "
                                    "use 1x1")
            clip = self.load_clip(path)
            return clip[None], [None], {"events_framed": int(clip.sum())}
        from .video import read_views

        pairs = self.kind == "video-events"  # T + 1 frames in [0, 1] give T luma-change frames
        cv = read_views(path, time_steps=self.time_steps + (1 if pairs else 0), size=self.size,
                        temporal_views=temporal_views, spatial_crops=spatial_crops, frame_stride=self.frame_stride,
                        mean=0.0 if pairs else self.mean, std=1.0 if pairs else self.std,
                        frame_transform=frame_transform)
        tensor = torch.stack([video_to_event_frames(v) for v in cv.tensor]) if pairs else cv.tensor
        details = {"width": cv.info.width, "height": cv.info.height, "fps": cv.info.fps, "frames": cv.info.frames,
                   "codec": cv.info.codec, "crops": [list(c) for c in cv.crops]}
        return tensor, [list(i) for i in cv.indices], details


def _values(v: float | tuple[float, ...]) -> tuple[float, ...]:
    return v if isinstance(v, tuple) else (v,)


def _per_channel(v: float | tuple[float, ...]) -> list[float]:
    return list(v) if isinstance(v, tuple) and len(v) == 3 else [_values(v)[0]] * 3


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation of a clip ``[T, C, S, S]`` (one draw per clip, shared by all frames).

    ``flip``: probability of a horizontal flip (leave 0 when left/right carries the label, e.g.
    digits or direction of motion). ``erase``: probability of random erasing of one box (area 2-33%
    of the frame, aspect 0.3-3.3; video boxes get N(0, 1) noise as in timm's pixel mode, event boxes
    are zeroed). ``shift``: random translation by up to this many pixels with zero fill (the
    random-crop analogue for event frames; video clips are randomly cropped while decoding instead).
    """

    flip: float = 0.0
    erase: float = 0.0
    shift: int = 0

    def __call__(self, clip: Tensor, rng: np.random.Generator, noise_fill: bool) -> Tensor:
        _, _, h, w = clip.shape
        if self.shift > 0:
            dx, dy = (int(v) for v in rng.integers(-self.shift, self.shift + 1, size=2))
            if dx or dy:
                out = torch.zeros_like(clip)
                out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                    clip[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
                clip = out
        if self.flip > 0 and rng.random() < self.flip:
            clip = clip.flip(-1)
        if self.erase > 0 and rng.random() < self.erase:
            clip = clip.clone()
            for _ in range(10):  # timm's RandomErasing: up to 10 attempts to place the box
                area = rng.uniform(0.02, 1 / 3) * h * w
                aspect = float(np.exp(rng.uniform(np.log(0.3), np.log(1 / 0.3))))
                eh, ew = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
                if 0 < eh < h and 0 < ew < w:
                    top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
                    box = clip[..., top:top + eh, left:left + ew]
                    if noise_fill:
                        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
                        box.copy_(torch.randn(box.shape, generator=gen))
                    else:
                        box.zero_()
                    break
        return clip


class BadSample(NamedTuple):
    """An item that could not be loaded: the file and the reason (one line)."""

    path: str
    reason: str


@dataclass
class ClipDataset(Dataset):
    """Labelled clips: ``samples`` are ``(path, label index)``; items are ``(clip [T,C,S,S], label)``."""

    samples: list[tuple[str, int]]
    class_names: list[str]
    spec: InputSpec
    train: bool = False
    augment: Augment = field(default_factory=Augment)
    seed: int = 0
    source: str = ""
    skipped: dict[str, str] = field(default_factory=dict)
    epoch: int = 0
    cache: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        where = self.source or "dataset"
        if not self.class_names:
            raise SVFormerError(f"{where}: no classes")
        if not self.samples:
            raise SVFormerError(f"{where}: no {self.spec.kind} files found")
        bad = [(p, y) for p, y in self.samples if not 0 <= y < len(self.class_names)]
        if bad:
            path, label = bad[0]
            raise SVFormerError(f"{where}: label {label} of {path} is not among the {len(self.class_names)} classes")

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before creating the epoch's iterator)."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The random generator of one item in the current epoch (independent of worker processes)."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def load(self, path: str, rng: np.random.Generator | None) -> Tensor:
        """Load one file as a clip ``[T, C, S, S]`` (raises :class:`SVFormerError` for a bad file)."""
        return self.spec.load_clip(path, train=self.train, rng=rng)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | BadSample:
        path, label = self.samples[index]
        return self.item(path, label, self.rng(index) if self.train else None)

    def item(self, path: str, label: int, rng: np.random.Generator | None) -> tuple[Tensor, int] | BadSample:
        """One item: the (cached or loaded) clip, augmented when ``rng`` is given; a bad file gives a BadSample."""
        try:
            clip = self.cache[path] if path in self.cache else self.load(path, rng)
        except SVFormerError as e:
            return BadSample(path, _reason(e, path))
        except (OSError, ValueError, RuntimeError) as e:  # unexpected decoder failures: still one file
            return BadSample(path, f"{type(e).__name__}: {' '.join(str(e).split())}")
        if rng is not None:
            clip = self.augment(clip, rng, noise_fill=self.spec.kind == "video")
        return clip, label

    def tensor_bytes(self) -> int:
        """Memory that :meth:`preload` would take (float32 clips), in bytes."""
        s = self.spec
        return len(self.samples) * s.time_steps * s.channels * s.size * s.size * 4

    def preload(self, workers: int = 0) -> ClipDataset:
        """Decode every file once and keep the clips in memory (bad files are skipped and reported).

        Clips are loaded deterministically (video: centred window, centre crop); training-time
        augmentation then acts on the cached tensors only (:class:`Augment`: shift, flip, erasing), so a
        cached video dataset trades the decode-time random crop/jitter for random shifts. The cache goes
        to DataLoader workers with the dataset.
        """
        from torch.utils.data import DataLoader

        from ..progress import bar

        todo = [(p, y) for p, y in self.samples if p not in self.cache]
        pbar = bar(len(todo), f"loading {self.source or 'clips'}", unit="clip")
        loader = DataLoader(_Preload(self, todo), batch_size=None, num_workers=workers,
                            worker_init_fn=_worker_init if workers > 0 else None)
        try:
            for (path, _), item in zip(todo, loader, strict=True):
                if isinstance(item, BadSample):
                    self.skip(item.path, item.reason)
                else:
                    self.cache[path] = item[0]
                pbar.update(1)
        finally:
            pbar.close()
        return self

    # -- bad files ---------------------------------------------------------------------------------
    def skip(self, path: str, reason: str) -> None:
        """Record a bad file: one ``warning:`` line on stderr, and leave it out from now on."""
        if path in self.skipped:
            return
        self.skipped[path] = reason
        print(f"warning: skipping {path}: {reason}", file=sys.stderr, flush=True)
        self.samples = [(p, y) for p, y in self.samples if p != path]
        if not self.samples:
            raise SVFormerError(f"{self.source or 'dataset'}: every file is unreadable (last: {path}: {reason})")

    def scan(self) -> ClipDataset:
        """Check every file once (event files are decoded; videos are probed) and skip the bad ones."""
        from ..progress import progress

        check = _check_events if self.spec.kind == "events" else _check_video
        for path, _ in progress(list(self.samples), desc=f"checking {self.source or 'files'}", unit="file"):
            try:
                check(path, self.spec)
            except SVFormerError as e:
                self.skip(path, _reason(e, path))
            except (OSError, ValueError, RuntimeError) as e:
                self.skip(path, f"{type(e).__name__}: {' '.join(str(e).split())}")
        return self

    def summary(self) -> dict[str, Any]:
        """Counts for reports: ``samples`` usable, ``skipped`` (count) and ``skipped_files`` (path -> reason)."""
        counts = [0] * len(self.class_names)
        for _, y in self.samples:
            counts[y] += 1
        return {"source": self.source, "samples": len(self.samples), "skipped": len(self.skipped),
                "skipped_files": dict(self.skipped), "classes": len(self.class_names),
                "per_class": dict(zip(self.class_names, counts, strict=True))}


class _Preload(Dataset):
    """Deterministic (unaugmented) loading of a fixed list of files, for :meth:`ClipDataset.preload`."""

    def __init__(self, dataset: ClipDataset, samples: list[tuple[str, int]]):
        self.dataset, self.samples = dataset, samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | BadSample:
        path, label = self.samples[index]
        return self.dataset.item(path, label, None)


def _reason(e: Exception, path: str) -> str:
    msg = " ".join(str(e).split())
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def _check_events(path: str, spec: InputSpec) -> None:
    read_events(path, spec.sensor_size)


def _check_video(path: str, spec: InputSpec) -> None:
    from .video import probe_video

    probe_video(path)


# -- batching ------------------------------------------------------------------------------------
class Batch(NamedTuple):
    """A collated batch: clips ``[B, T, C, S, S]``, labels ``[B]``, and the bad files met on the way."""

    clips: Tensor
    labels: Tensor
    bad: list[BadSample]


def collate(items: Sequence[tuple[Tensor, int] | BadSample]) -> Batch:
    """Stack good items; list bad ones (so the main process can report and skip them)."""
    good = [it for it in items if not isinstance(it, BadSample)]
    bad = [it for it in items if isinstance(it, BadSample)]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), bad)
    clips = torch.stack([c for c, _ in good])
    labels = torch.tensor([y for _, y in good], dtype=torch.long)
    return Batch(clips, labels, bad)


class SeededSampler(Sampler[int]):
    """Indices in an order that depends only on ``(seed, epoch)``: a permutation when shuffling."""

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.size))
        return iter(np.random.default_rng([self.seed, self.epoch, 1]).permutation(self.size).tolist())

    def __len__(self) -> int:
        return self.size


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(dataset: ClipDataset, batch_size: int, epoch: int = 0, shuffle: bool = False, workers: int = 0,
                drop_last: bool = False, shard: tuple[int, int] | None = None) -> DataLoader:
    """A DataLoader over ``dataset`` for one epoch: seeded order and augmentation, :func:`collate` batches.

    ``shard=(rank, world_size)``: this rank's part of the epoch (``DistributedSampler``, seeded with the
    dataset's seed: the ranks' parts are disjoint and, padded by repeating clips, equally long).
    """
    dataset.set_epoch(epoch)
    if shard is not None:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, num_replicas=shard[1], rank=shard[0], shuffle=shuffle,
                                     seed=dataset.seed)
    else:
        sampler = SeededSampler(len(dataset), dataset.seed, shuffle)
    sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                      drop_last=drop_last, worker_init_fn=_worker_init if workers > 0 else None)


# -- layouts -------------------------------------------------------------------------------------
def _read_class_file(path: Path) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise SVFormerError(f"{path}: cannot read the class list ({e})") from None
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise SVFormerError(f"{path}: the class list is empty")
    if len(set(names)) != len(names):
        raise SVFormerError(f"{path}: the class list names a class twice")
    return names


def _class_file_near(root: Path) -> Path | None:
    for cand in (root / "classes.txt", root.parent / "classes.txt"):
        if cand.is_file():
            return cand
    return None


def folder_dataset(root: str | os.PathLike, spec: InputSpec, class_names: Sequence[str] | None = None,
                   **kwargs: Any) -> ClipDataset:
    """``root/<class>/<file>`` (class names: ``class_names``, else ``classes.txt``, else sorted folders).

    A class folder not among the given or listed class names is an unknown label (error).
    """
    root = Path(root)
    if not root.is_dir():
        raise SVFormerError(f"{root}: no such dataset folder")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    class_file = _class_file_near(root)
    if class_names is not None:
        names = list(class_names)
    elif class_file is not None:
        names = _read_class_file(class_file)
    else:
        names = folders
    if not folders:
        raise SVFormerError(f"{root}: empty dataset folder (expected one sub-folder per class)")
    unknown = [f for f in folders if f not in names]
    if unknown:
        known_from = "the training classes" if class_names is not None else str(class_file)
        raise SVFormerError(f"{root}: class folder(s) {', '.join(unknown[:5])} are not among {known_from}")
    index = {n: i for i, n in enumerate(names)}
    samples = []
    for folder in folders:
        for f in sorted((root / folder).iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in spec.extensions:
                samples.append((str(f), index[folder]))
    if not samples:
        raise SVFormerError(f"{root}: empty dataset folder (no {spec.kind} files with extensions "
                            f"{', '.join(spec.extensions[:4])}, ... in its class folders)")
    return ClipDataset(samples, names, spec, source=str(root), **kwargs)


def csv_dataset(csv_path: str | os.PathLike, spec: InputSpec, class_names: Sequence[str] | None = None,
                **kwargs: Any) -> ClipDataset:
    """Lines ``path,label``; labels are names (classes: ``class_names``, else ``classes.txt`` beside the CSV,
    else the sorted distinct labels) or integer indices. A label outside the classes is an error."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise SVFormerError(f"{csv_path}: no such CSV file")
    try:
        rows = list(csv.reader(csv_path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SVFormerError(f"{csv_path}: cannot read the CSV list ({e})") from None
    rows = [r for r in rows if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    if not rows:
        raise SVFormerError(f"{csv_path}: empty CSV list (expected lines 'path,label')")
    for n, r in enumerate(rows, 1):
        if len(r) < 2 or not r[0].strip() or not r[1].strip():
            raise SVFormerError(f"{csv_path}: row {n} is not 'path,label': {','.join(r)!r}")
    labels = [r[1].strip() for r in rows]
    class_file = csv_path.parent / "classes.txt"
    if class_names is not None:
        names = list(class_names)
    elif class_file.is_file():
        names = _read_class_file(class_file)
    elif all(lab.isdigit() for lab in labels):
        names = [f"class_{i}" for i in range(max(int(lab) for lab in labels) + 1)]
    else:
        names = sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    samples = []
    for r, lab in zip(rows, labels, strict=True):
        if lab in index:
            y = index[lab]
        elif lab.isdigit() and int(lab) < len(names):
            y = int(lab)
        else:
            raise SVFormerError(f"{csv_path}: unknown label {lab!r} for {r[0].strip()} "
                                f"(known: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
        p = Path(r[0].strip())
        samples.append((str(p if p.is_absolute() else csv_path.parent / p), y))
    return ClipDataset(samples, names, spec, source=str(csv_path), **kwargs)


NMNIST_CLASSES = [str(i) for i in range(10)]
NMNIST_LABEL_FILES = {"train": "train1K.txt", "test": "test100.txt"}


def nmnist_dataset(root: str | os.PathLike, split: str, spec: InputSpec, label_file: str | None = None,
                   **kwargs: Any) -> ClipDataset:
    """The N-MNIST small layout: ``root/<sample>.bs2`` (or ``.bin``) and a label file per split.

    ``label_file`` defaults to ``train1K.txt`` / ``test100.txt``; its lines are ``<sample> <class>``
    (classes 0-9; ``#`` lines are comments). A class outside 0-9 is an unknown label (error); a missing
    sample file is a bad file (reported and skipped).
    """
    root = Path(root)
    if not root.is_dir():
        raise SVFormerError(f"{root}: no such N-MNIST folder")
    if split not in NMNIST_LABEL_FILES and label_file is None:
        raise SVFormerError(f"N-MNIST split must be 'train' or 'test', got {split!r}")
    lf = root / (label_file or NMNIST_LABEL_FILES[split])
    if not lf.is_file():
        raise SVFormerError(f"{lf}: no such label file (the N-MNIST layout has train1K.txt and test100.txt)")
    try:
        lines = lf.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SVFormerError(f"{lf}: cannot read the label file ({e})") from None
    samples = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise SVFormerError(f"{lf}: line {n} is not '<sample> <class>': {line!r}")
        label = int(parts[1])
        if not 0 <= label < len(NMNIST_CLASSES):
            raise SVFormerError(f"{lf}: line {n}: unknown label {label} (N-MNIST classes are 0-9)")
        path = next((root / f"{parts[0]}{ext}" for ext in (".bs2", ".bin") if (root / f"{parts[0]}{ext}").exists()),
                    root / f"{parts[0]}.bs2")
        samples.append((str(path), label))
    if not samples:
        raise SVFormerError(f"{lf}: the label file lists no samples")
    return ClipDataset(samples, list(NMNIST_CLASSES), spec, source=str(lf), **kwargs)


def synthetic_dataset(root: str | os.PathLike, split: str, spec: InputSpec, **kwargs: Any) -> ClipDataset:
    """The synthetic action set written by :func:`svformer.data.synthetic.generate_dataset`:
    ``root/<split>/<class>/<i>.mp4`` with class names in ``root/classes.txt``."""
    root = Path(root)
    if split not in ("train", "test"):
        raise SVFormerError(f"synthetic split must be 'train' or 'test', got {split!r}")
    class_file = root / "classes.txt"
    if not class_file.is_file():
        raise SVFormerError(f"{class_file}: missing; not a synthetic action set folder")
    return folder_dataset(root / split, spec, class_names=_read_class_file(class_file), **kwargs)


def split_holdout(dataset: ClipDataset, fraction: float, seed: int = 0) -> tuple[ClipDataset, ClipDataset]:
    """Split into (train, held-out) with ``fraction`` of every class held out, chosen by ``seed``."""
    if not 0 < fraction < 1:
        raise SVFormerError(f"held-out fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng([seed, 2])
    train, held = [], []
    for y in range(len(dataset.class_names)):
        items = [s for s in dataset.samples if s[1] == y]
        order = rng.permutation(len(items))
        k = int(round(len(items) * fraction)) if len(items) > 1 else 0
        held += [items[i] for i in order[:k]]
        train += [items[i] for i in order[k:]]
    if not held:
        raise SVFormerError(f"{dataset.source}: too few files to hold out {fraction:.0%} for testing")
    common = {"class_names": dataset.class_names, "spec": dataset.spec, "augment": dataset.augment, "seed": seed}
    return (ClipDataset(sorted(train), train=dataset.train, source=f"{dataset.source} (train split)", **common),
            ClipDataset(sorted(held), train=False, source=f"{dataset.source} (held-out split)", **common))


__all__ = [
    "Augment", "BadSample", "Batch", "ClipDataset", "InputSpec", "SeededSampler", "VIDEO_EXTENSIONS", "collate",
    "csv_dataset", "folder_dataset", "make_loader", "nmnist_dataset", "split_holdout", "synthetic_dataset",
]
