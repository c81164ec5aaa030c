"""Video clips (PyAV): probe a file, sample T frame indices as the authors' code does, decode, resize, crop.

**Stream.** The first video stream of the container that is not an attached picture (cover art) is
used; other streams (audio, subtitles) are ignored. Decoding uses FFmpeg's frame threads
(``thread_type="AUTO"``) and runs *sequentially* from the start of the stream, stopping right after
the last frame that is needed (no per-frame seeking, which is several times slower; see
``benchmarks/bench_decode.py``). Frame ``i`` is the i-th frame the decoder outputs, in presentation
order. Pixel aspect ratio and rotation metadata are ignored (as decord does in the reference code).

**Frame count.** ``VideoInfo.frames`` is the count the container declares (``nb_frames``: MP4, AVI),
``frames_source == "container"``; when it declares none (Matroska, WebM) the video packets are counted
by demuxing the file without decoding it, ``frames_source == "packets"``.

**Sampling** (UniFormer/SlowFast ``get_start_end_idx(use_offset=True)`` + ``temporal_sampling``, decord
path, native frame rate): a window of ``W = T * frame_stride`` raw frames (64 for T=16), and
``delta = max(num_frames - W, 0)``.

- training: ``start ~ Uniform(0, delta)`` (a float, drawn from the ``numpy.random.Generator``);
- testing with K temporal views: view ``i`` starts at ``i * floor(delta / (K - 1))``; with K = 1 the
  single view is centred, ``start = floor(delta / 2)``;
- the T indices are ``floor(linspace(start, start + W - 1, T))`` clamped to ``[0, num_frames - 1]``,
  so a clip shorter than the window repeats its last frame; a clip with fewer than T frames is an error.

**Spatial transform** (SlowFast ``random_short_side_scale_jitter`` + ``uniform_crop``): each sampled frame
is converted to RGB, scaled to [0, 1], its short side resized to ``size`` with bilinear interpolation
(``align_corners=False``; the long side becomes ``floor(long * size / short)``), cropped to
``size x size`` and normalised with ``(x - mean) / std`` on every channel (0.45 / 0.225). Test crops:
centre (``ceil((L - size) / 2)`` offset), or 3 crops along the long side: left/top, centre,
right/bottom. Training (``train=True``): the short side goes to a random length in
``[size, round(size * 8 / 7)]`` (256/224, SlowFast's jitter ratio), a uniformly random
``size x size`` crop is taken, and the clip is flipped horizontally with probability 0.5 unless
``hflip=False`` (the synthetic action set needs that: flipping swaps left/right and cw/ccw).

All failures a user can cause (missing, empty, truncated or corrupt file, no video stream, no decoder
for the codec, fewer than T frames) raise :class:`SVFormerError` with one line naming the file.
Truncation is caught where the container allows it: an MP4 without its index does not open; an AVI
whose last packets are cut has them flagged corrupt by FFmpeg when decoding reaches them; a Matroska/WebM
stream that ends more than 2 frames (and 1 %) before the duration its header declares is refused by
the probe; a stream that ends more than 2 frames short of the declared count while a needed frame is
still missing is refused by the decoder (within 2 frames, e.g. an edit list, the last frame repeats).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SVFormerError

__all__ = [
    "DEFAULT_MEAN",
    "DEFAULT_STD",
    "ClipViews",
    "VideoInfo",
    "decode_frames",
    "load_clip",
    "load_views",
    "check_pixel_budget",
    "probe_video",
    "read_views",
    "sample_indices",
    "spatial_crop_offsets",
]

DEFAULT_MEAN = 0.45
DEFAULT_STD = 0.225
TRAIN_SCALE_RATIO = 8 / 7  # short side jitter [size, size * 8/7] = SlowFast's [256, 320]/224 lower half
# a container that declares more frames than the stream delivers: tolerated (last frame repeated, like
# a short clip) up to this many missing frames, above it the file counts as truncated
_FRAME_COUNT_SLACK = 2
# Pixel budget, checked from the stream's metadata before decoding (and again on the decoded frames):
# a 1080p clip with 80 needed frames uses 166 M decoded and 7 M resized pixels.
MAX_FRAME_PIXELS = 1 << 26
"""Largest decoded frame (width x height; 8192 x 8192)."""
MAX_DECODED_PIXELS = 1 << 28
"""Largest total of decoded pixels held at once (all needed frames; 768 MB of RGB)."""
MAX_RESIZED_PIXELS = 1 << 26
"""Largest total of pixels after the short-side resize (all needed frames; 768 MB of float32 RGB)."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds (first video stream). ``fps`` in frames/s, ``duration_s`` in seconds."""

    path: str
    width: int
    height: int
    fps: float
    codec: str
    frames: int
    frames_source: str  # "container" (declared nb_frames) or "packets" (demuxed and counted)
    duration_s: float
    container: str
    pix_fmt: str | None = None
    stream_index: int = 0
    has_audio: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# opening files


def _fail(path: str | os.PathLike, reason: str) -> SVFormerError:
    return SVFormerError(f"{path}: {reason}")


def _ffmpeg_reason(exc: BaseException) -> str:
    msg = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(msg).split())


def _open(path: str | os.PathLike):
    """Open ``path`` with PyAV and return ``(container, stream)``: the first real video stream."""
    import av

    p = Path(path)
    if not p.exists():
        raise _fail(path, "no such file")
    if p.is_dir():
        raise _fail(path, "is a directory, not a video file")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise _fail(path, f"cannot read ({e.strerror})") from e
    if size == 0:
        raise _fail(path, "empty file (0 bytes)")
    try:
        container = av.open(str(p), mode="r")
    except av.error.InvalidDataError as e:
        raise _fail(path, "not a readable video file (FFmpeg found invalid data): truncated, damaged or not a video") \
            from e
    except (av.error.FFmpegError, OSError) as e:
        raise _fail(path, f"cannot open ({_ffmpeg_reason(e)})") from e
    try:
        stream = _first_video_stream(container)
        if stream is None:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise _fail(path, f"no video stream (streams: {kinds})")
        if stream.codec_context is None:
            raise _fail(path, "unknown or unsupported video codec (this FFmpeg build has no decoder for it)")
        stream.thread_type = "AUTO"
    except BaseException:
        container.close()
        raise
    return container, stream


def _first_video_stream(container):
    import av

    attached = getattr(getattr(av.stream, "Disposition", None), "attached_pic", None)
    for s in container.streams.video:
        if attached is not None and s.disposition & attached:
            continue  # cover art inside an audio file is not a video
        return s
    return None


def _stream_fps(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _count_packets(path: str | os.PathLike, stream_index: int) -> tuple[int, float | None]:
    """Demux the file (no decoding) and count the packets of one stream; also return its end time in seconds."""
    import av

    n, end = 0, None
    try:
        with av.open(str(path), mode="r") as container:
            stream = container.streams[stream_index]
            tb = stream.time_base
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                n += 1
                if packet.pts is not None and tb:
                    t = float((packet.pts + (packet.duration or 0)) * tb)
                    end = t if end is None else max(end, t)
            if end is not None and stream.start_time is not None and tb:
                end -= float(stream.start_time * tb)
    except av.error.FFmpegError as e:
        raise _fail(path, f"corrupt video stream (FFmpeg: {_ffmpeg_reason(e)})") from e
    return n, end


def _declared_duration(container, stream) -> float | None:
    """The stream duration in seconds the file's headers declare, if any."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        try:
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            pass
    if container.duration and len(container.streams) == 1:
        return container.duration / 1_000_000
    return None


def _info(path: str | os.PathLike, container, stream) -> VideoInfo:
    cc = stream.codec_context
    fps = _stream_fps(stream)
    declared_duration = _declared_duration(container, stream)
    if stream.frames and stream.frames > 0:
        frames, source = int(stream.frames), "container"
    else:
        frames, end = _count_packets(path, stream.index)
        source = "packets"
        if declared_duration and end is not None and fps > 0:
            missing = (declared_duration - end) * fps
            if missing > max(_FRAME_COUNT_SLACK, 0.01 * declared_duration * fps):
                raise _fail(
                    path,
                    f"truncated file: the header declares {declared_duration:.2f} s of video but the stream "
                    f"ends after {end:.2f} s ({frames} frames)",
                )
    if declared_duration is not None:
        duration = declared_duration
    elif container.duration:
        duration = container.duration / 1_000_000
    else:
        duration = frames / fps if fps > 0 else 0.0
    return VideoInfo(
        path=str(path),
        width=int(cc.width),
        height=int(cc.height),
        fps=fps,
        codec=str(cc.name),
        frames=int(frames),
        frames_source=source,
        duration_s=float(duration),
        container=str(container.format.name),
        pix_fmt=cc.pix_fmt,
        stream_index=int(stream.index),
        has_audio=len(container.streams.audio) > 0,
    )


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Stream information of the first video stream (no frame is decoded; see the module docstring)."""
    container, stream = _open(path)
    try:
        info = _info(path, container, stream)
    finally:
        container.close()
    if info.frames <= 0:
        raise _fail(path, "the video stream holds no frames")
    return info


# --------------------------------------------------------------------------------------------------
# temporal sampling


def _window_indices(start: float, num_frames: int, time_steps: int, window: int) -> list[int]:
    pos = np.linspace(start, start + window - 1, time_steps)
    idx = np.clip(np.floor(pos).astype(np.int64), 0, num_frames - 1)
    return [int(i) for i in idx]


def sample_indices(
    num_frames: int,
    time_steps: int,
    frame_stride: int = 4,
    temporal_views: int = 1,
    train: bool = False,
    rng: np.random.Generator | None = None,
) -> list[list[int]]:
    """Frame indices (0-based, decoder output order) of each temporal view: ``temporal_views`` lists of T ints.

    The window is ``time_steps * frame_stride`` frames; see the module docstring for the exact rule.
    With ``train=True`` each view gets an independent uniform random window start from ``rng``.
    """
    if time_steps < 1:
        raise SVFormerError(f"time steps must be >= 1, got {time_steps}")
    if frame_stride < 1:
        raise SVFormerError(f"frame stride must be >= 1, got {frame_stride}")
    if temporal_views < 1:
        raise SVFormerError(f"temporal views must be >= 1, got {temporal_views}")
    if num_frames < time_steps:
        raise SVFormerError(f"a clip of {num_frames} frames is shorter than T={time_steps} time steps")
    window = time_steps * frame_stride
    delta = max(num_frames - window, 0)
    views = []
    for i in range(temporal_views):
        if train:
            gen = rng if rng is not None else np.random.default_rng()
            start = float(gen.uniform(0.0, delta)) if delta > 0 else 0.0
        elif temporal_views == 1:
            start = float(math.floor(delta / 2))
        else:
            start = float(i * math.floor(delta / (temporal_views - 1)))
        views.append(_window_indices(start, num_frames, time_steps, window))
    return views


# --------------------------------------------------------------------------------------------------
# decoding


def _iter_frames(path: str | os.PathLike, container, stream) -> Iterator[Any]:
    """Decoded ``av.VideoFrame`` s in output order; corrupt packets and decoder errors become SVFormerError."""
    import av

    try:
        for packet in container.demux(stream):
            if packet.is_corrupt:
                raise _fail(path, "corrupt or truncated video data (FFmpeg flagged a damaged packet)")
            yield from packet.decode()  # the empty packet at the end flushes the decoder
    except av.error.FFmpegError as e:
        raise _fail(path, f"corrupt or truncated video data (FFmpeg: {_ffmpeg_reason(e)})") from e


def _decode_needed(path: str | os.PathLike, container, stream, needed: Iterable[int], expected: int, convert):
    """Decode sequentially up to the largest needed index; return ``{index: convert(frame)}`` and frames decoded.

    ``expected`` is the frame count the caller sampled from (0 = unknown). A stream that ends before a
    needed index is truncated when it delivers more than ``_FRAME_COUNT_SLACK`` frames fewer than expected;
    within the slack (header rounding, edit lists) its last frame stands in, as for a short clip.
    """
    wanted = sorted({int(i) for i in needed})
    if not wanted:
        return {}, 0
    if wanted[0] < 0:
        raise _fail(path, f"frame index {wanted[0]} is negative")
    if expected and wanted[-1] >= expected:
        raise _fail(path, f"frame {wanted[-1]} requested but the video has {expected} frames")
    last_needed = wanted[-1]
    want = set(wanted)
    out: dict[int, Any] = {}
    n = 0
    previous = None
    for frame in _iter_frames(path, container, stream):
        if n in want:
            if frame.width * frame.height > MAX_FRAME_PIXELS:
                raise _fail(path, f"frame {n} is {frame.width}x{frame.height} pixels, above the limit of "
                                  f"{MAX_FRAME_PIXELS}")
            out[n] = convert(frame)
        previous = frame
        n += 1
        if n > last_needed:
            break
    if n == 0:
        raise _fail(path, "no frame could be decoded from the video stream")
    missing = [i for i in wanted if i not in out]
    if missing:
        if not expected:
            raise _fail(path, f"frame {missing[0]} requested but the stream has only {n} frames")
        if expected - n > _FRAME_COUNT_SLACK:
            raise _fail(path, f"truncated or corrupt file: {expected} frames expected but the stream ends after {n}")
        last = out[n - 1] if (n - 1) in out else convert(previous)
        for i in missing:
            out[i] = last
    return out, n


def _to_rgb(frame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def decode_frames(path: str | os.PathLike, indices: Sequence[int]) -> np.ndarray:
    """Frames at ``indices`` as RGB ``uint8 [len(indices), H, W, 3]``, decoded sequentially, stopping early."""
    container, stream = _open(path)
    try:
        frames, _ = _decode_needed(path, container, stream, indices, int(stream.frames or 0), _to_rgb)
    finally:
        container.close()
    if not len(indices):
        cc = stream.codec_context
        return np.zeros((0, cc.height, cc.width, 3), np.uint8)
    return np.stack([frames[int(i)] for i in indices])


# --------------------------------------------------------------------------------------------------
# spatial transforms


def _short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """``(h, w)`` after resizing the short side to ``short`` pixels (the long side is floored, as SlowFast does)."""
    if width < height:
        return int(math.floor(height / width * short)), short
    return short, int(math.floor(width / height * short))


_RESIZE_CHUNK = 1 << 24  # values per interpolate call (64 MB of float32)


def _resized_stack(rgb: dict[int, np.ndarray], short: int, mean: float | Sequence[float] = 0.0,
                   std: float | Sequence[float] = 1.0) -> tuple[list[int], torch.Tensor]:
    """Frame indices (sorted) and their frames as float ``[N, 3, h, w]``, short side ``short`` pixels,
    normalised as ``(x / 255 - mean) / std`` (before resizing, which is the same: bilinear weights sum to 1).

    Resizing runs after decoding (torch's intra-op threads competing with FFmpeg's frame threads made
    decoding 5-8x slower on 2 cores), on whole batches: a few large torch calls instead of several per
    frame, because each call's thread barrier is costly on a busy machine (16 frames took 1 s instead of
    0.1 s with per-frame calls at load 5 on 2 cores). The RGB frames are held meanwhile (uint8, 6 MB per
    1080p frame). A stream that changes resolution is resized to the size of its first needed frame.
    """
    keys = sorted(rgb)
    for name, v in (("mean", mean), ("std", std)):
        a = np.asarray(v, dtype=np.float64)
        if a.ndim > 1 or a.size not in (1, 3) or not np.isfinite(a).all() or (name == "std" and (a <= 0).any()):
            raise SVFormerError(f"normalisation {name} must be one finite number or 3 (RGB){', > 0' * (name == 'std')}"
                                f", got {v!r}")
    scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float32))).astype(np.float32)
    shift = (np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)).astype(np.float32)
    h0, w0 = rgb[keys[0]].shape[:2]
    new_hw = _short_side_size(h0, w0, short)
    if len(keys) * new_hw[0] * new_hw[1] > MAX_RESIZED_PIXELS:
        raise SVFormerError(f"{len(keys)} frames of {w0}x{h0} resized to {new_hw[1]}x{new_hw[0]} pixels are above "
                            f"the budget of {MAX_RESIZED_PIXELS} pixels")
    out = torch.empty((len(keys), 3, *new_hw), dtype=torch.float32)
    groups: dict[tuple[int, int], list[int]] = {}
    for pos, k in enumerate(keys):
        groups.setdefault(rgb[k].shape[:2], []).append(pos)
    for (h, w), positions in groups.items():
        per_call = max(1, _RESIZE_CHUNK // (h * w * 3))
        for c0 in range(0, len(positions), per_call):
            chunk = positions[c0:c0 + per_call]
            # uint8 -> float and normalisation in numpy: no torch thread barrier per operation
            arr = np.stack([rgb[keys[p]] for p in chunk]).astype(np.float32)
            arr *= scale
            arr -= shift
            x = torch.from_numpy(arr).permute(0, 3, 1, 2)
            if (h, w) != new_hw:
                x = F.interpolate(x, size=new_hw, mode="bilinear", align_corners=False)
            out[chunk] = x
    return keys, out


def spatial_crop_offsets(height: int, width: int, size: int, spatial_crops: int = 1) -> list[tuple[int, int]]:
    """``(y, x)`` offsets of the test crops of a ``height x width`` frame (short side already == size).

    1 crop: the centre; 3 crops: left/centre/right (or top/centre/bottom for portrait frames).
    """
    if spatial_crops not in (1, 3):
        raise SVFormerError(f"spatial crops must be 1 or 3, got {spatial_crops}")
    cy, cx = int(math.ceil((height - size) / 2)), int(math.ceil((width - size) / 2))
    if spatial_crops == 1:
        return [(cy, cx)]
    if height > width:
        return [(0, cx), (cy, cx), (height - size, cx)]
    return [(cy, 0), (cy, cx), (cy, width - size)]


def check_pixel_budget(path: str | os.PathLike, width: int, height: int, frames: int, short: int) -> None:
    """Refuse, before decoding, work beyond the pixel budget: ``frames`` frames of ``width x height`` decoded
    and resized to a short side of ``short`` (an 8000 x 2 video resized to 224 would be 224 x 896,000)."""
    if width <= 0 or height <= 0:
        return  # unknown until decoded: checked on the frames themselves
    if width * height > MAX_FRAME_PIXELS:
        raise _fail(path, f"frames of {width}x{height} pixels are above the limit of {MAX_FRAME_PIXELS} pixels")
    if frames * width * height > MAX_DECODED_PIXELS:
        raise _fail(path, f"{frames} frames of {width}x{height} pixels are above the decoding budget of "
                          f"{MAX_DECODED_PIXELS} pixels; use fewer views")
    h, w = _short_side_size(height, width, short)
    if frames * h * w > MAX_RESIZED_PIXELS:
        raise _fail(path, f"{width}x{height} frames resized to a short side of {short} become {w}x{h} pixels; "
                          f"{frames} of them are above the budget of {MAX_RESIZED_PIXELS} pixels (aspect ratio "
                          f"{max(width, height) / min(width, height):.0f}:1)")


def _check_sizes(time_steps: int, size: int) -> None:
    if size < 1:
        raise SVFormerError(f"size must be >= 1 pixel, got {size}")
    if time_steps < 1:
        raise SVFormerError(f"time steps must be >= 1, got {time_steps}")


@dataclass
class ClipViews:
    """Test-time views of one file: the tensor, where each view comes from, and what decoding cost."""

    tensor: torch.Tensor  # float32 [V, T, 3, size, size], normalised
    indices: list[list[int]]  # frame indices of each of the V views
    crops: list[tuple[int, int]]  # (y, x) crop offset of each view, in the resized frame
    resized_hw: tuple[int, int]  # frame size after the short-side resize, pixels
    frames_decoded: int  # frames the decoder delivered before stopping (the last needed index + 1)
    info: VideoInfo


def read_views(
    path: str | os.PathLike,
    time_steps: int = 16,
    size: int = 224,
    temporal_views: int = 1,
    spatial_crops: int = 1,
    frame_stride: int = 4,
    mean: float | Sequence[float] = DEFAULT_MEAN,
    std: float | Sequence[float] = DEFAULT_STD,
    frame_transform: Callable[[int, np.ndarray], np.ndarray] | None = None,
) -> ClipViews:
    """Decode the file once and cut ``temporal_views x spatial_crops`` test views (see :func:`load_views`).

    ``frame_transform(index, rgb)``: applied to every decoded RGB frame (``uint8 [H, W, 3]``, its frame
    index) before resizing and normalisation; returns values in 0..255 (e.g. :mod:`svformer.data.noise`).
    """
    _check_sizes(time_steps, size)
    if spatial_crops not in (1, 3):
        raise SVFormerError(f"spatial crops must be 1 or 3, got {spatial_crops}")
    container, stream = _open(path)
    try:
        info = _info(path, container, stream)
        if info.frames < time_steps:
            raise _fail(path, f"has {info.frames} frames, fewer than T={time_steps} time steps")
        temporal = sample_indices(info.frames, time_steps, frame_stride, temporal_views, train=False)
        needed = {i for view in temporal for i in view}
        check_pixel_budget(path, info.width, info.height, len(needed), size)
        rgb, decoded = _decode_needed(path, container, stream, needed, info.frames, _to_rgb)
    finally:
        container.close()
    if frame_transform is not None:
        rgb = {i: frame_transform(i, f) for i, f in rgb.items()}
    keys, frames = _resized_stack(rgb, size, mean, std)
    h, w = frames.shape[2:]
    offsets = spatial_crop_offsets(h, w, size, spatial_crops)
    row = {k: i for i, k in enumerate(keys)}
    picked = frames[torch.tensor([[row[i] for i in idx] for idx in temporal])]  # [K, T, 3, h, w]
    clips, view_indices, crops = [], [], []
    for k, idx in enumerate(temporal):
        for y, x in offsets:
            clips.append(picked[k, :, :, y:y + size, x:x + size])
            view_indices.append(list(idx))
            crops.append((y, x))
    return ClipViews(torch.stack(clips), view_indices, crops, (int(h), int(w)), decoded, info)


def load_views(
    path: str | os.PathLike,
    time_steps: int = 16,
    size: int = 224,
    temporal_views: int = 1,
    spatial_crops: int = 1,
    frame_stride: int = 4,
    mean: float | Sequence[float] = DEFAULT_MEAN,
    std: float | Sequence[float] = DEFAULT_STD,
) -> tuple[torch.Tensor, list[list[int]]]:
    """Test-time views of a clip, decoding the file once.

    Returns ``float32 [V, T, 3, size, size]`` with ``V = temporal_views * spatial_crops`` (temporal-major:
    view ``k * spatial_crops + j`` is temporal view k, crop j) and the frame indices of each of the V views.
    Multi-view testing sums the model's logits over the V views.
    """
    views = read_views(path, time_steps, size, temporal_views, spatial_crops, frame_stride, mean, std)
    return views.tensor, views.indices


def load_clip(
    path: str | os.PathLike,
    time_steps: int = 16,
    size: int = 224,
    frame_stride: int = 4,
    train: bool = False,
    rng: np.random.Generator | None = None,
    mean: float | Sequence[float] = DEFAULT_MEAN,
    std: float | Sequence[float] = DEFAULT_STD,
    hflip: bool = True,
) -> torch.Tensor:
    """One clip, ``float32 [T, 3, size, size]``, normalised (see the module docstring).

    ``train=False``: the centred window and the centre crop (deterministic). ``train=True``: random window
    start, short-side jitter, random crop, and a horizontal flip with probability 0.5 when ``hflip``.
    """
    if not train:
        clip, _ = load_views(path, time_steps, size, 1, 1, frame_stride, mean, std)
        return clip[0]
    _check_sizes(time_steps, size)
    gen = rng if rng is not None else np.random.default_rng()
    container, stream = _open(path)
    try:
        info = _info(path, container, stream)
        if info.frames < time_steps:
            raise _fail(path, f"has {info.frames} frames, fewer than T={time_steps} time steps")
        (idx,) = sample_indices(info.frames, time_steps, frame_stride, 1, train=True, rng=gen)
        short = int(gen.integers(size, max(size, round(size * TRAIN_SCALE_RATIO)) + 1))
        check_pixel_budget(path, info.width, info.height, len(set(idx)), short)
        rgb, _ = _decode_needed(path, container, stream, idx, info.frames, _to_rgb)
    finally:
        container.close()
    keys, frames = _resized_stack(rgb, short, mean, std)
    row = {k: i for i, k in enumerate(keys)}
    stack = frames[torch.tensor([row[i] for i in idx])]  # [T, 3, h, w], normalised
    h, w = stack.shape[2:]
    y = int(gen.integers(0, h - size + 1))
    x = int(gen.integers(0, w - size + 1))
    stack = stack[:, :, y:y + size, x:x + size]
    if hflip and gen.random() < 0.5:
        stack = stack.flip(-1)
    return stack.contiguous()

