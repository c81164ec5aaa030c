"""Event-camera input: read recordings and integrate their events into T frames of 2 polarity channels.

Formats (told apart by their first bytes, then by extension):

- **AEDAT 4** (``#!AER-DAT4.0`` header; DAVIS/DVXplorer recordings from DV): read with tonic's
  ``tonic.io.read_aedat4`` (which decodes through the ``aedat`` package); the first event stream is
  used and the sensor size comes from that stream's header.
- **N-MNIST / N-Caltech101 binaries** (``.bin``, ``.bs2``; no header): read with tonic's
  ``tonic.io.read_mnist_file``. 5 bytes per event, big-endian: x (8 bit), y (8 bit), polarity (1 bit)
  and timestamp in µs (23 bit); ``y == 240`` marks a timestamp-overflow event (+2^13 µs).
  The sensor is 34 x 34 when every event fits (N-MNIST), else the bounding box of the events.
- **NumPy** (``.npy``): a structured array with fields ``x, y, t, p`` or an ``N x 4`` array whose
  columns are x, y, t, p. The sensor size is given by the caller or taken as the bounding box.

Events are returned as a structured array with fields ``x, y`` (pixels), ``t`` (µs, non-decreasing)
and ``p`` (0 = OFF, 1 = ON), plus the sensor size ``(W, H)`` in pixels.

Framing (:func:`events_to_frames`) follows SpikingJelly's ``integrate_events_by_fixed_frames_number``:
the events are split into T consecutive slices, either by **equal event counts** (``"number"``,
the default: slice i holds events ``floor(i·N/T) .. floor((i+1)·N/T) - 1``) or by **equal time bins**
(``"time"``: slice i covers ``[t0 + i·D/T, t0 + (i+1)·D/T)``, the last one closed at t_max), and
each slice is accumulated into a frame ``[2, S, S]`` of per-pixel event counts, channel 0 = OFF,
channel 1 = ON. Every event lands in exactly one frame, so a frame stack sums to the event count
(unless cropping drops events outside the field of view, see ``fit``).

Fitting the sensor to the model's ``S x S`` input (``fit``):

- ``"pad"``: keep 1 pixel = 1 pixel and centre the sensor in the S x S frame; a sensor larger than S
  is centre-cropped (events outside are dropped and counted in :func:`probe_events`).
- ``"resize"``: scale event coordinates by ``S / max(W, H)`` (aspect ratio kept, the shorter side
  centred) and accumulate into the smaller grid, so each output pixel sums the events of the sensor
  pixels it covers: nothing is dropped (area down-sampling of count frames).
- ``"auto"`` (default): ``"pad"`` when the sensor fits in S x S, otherwise ``"resize"``.

**Event frames from a video** (:func:`load_video_events`, an event-camera emulation for the 2-channel
DVS models): T + 1 frames are sampled as for an RGB clip (:func:`svformer.data.video.load_clip`, window
of (T + 1) x ``frame_stride`` frames, short side resized to S, crop), converted to luma
Y = 0.299 R + 0.587 G + 0.114 B in [0, 1], and frame t is the change between sampled frames t and t + 1:
channel 0 (OFF) = max(Y_t - Y_{t+1}, 0), channel 1 (ON) = max(Y_{t+1} - Y_t, 0). The values are
brightness changes (not event counts); a static scene gives all-zero frames, as a DVS would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import SVFormerError

EVENT_DTYPE = np.dtype([("x", np.int32), ("y", np.int32), ("t", np.int64), ("p", np.uint8)])
"""Events as returned by :func:`read_events`: x, y in pixels, t in µs, p in {0 (OFF), 1 (ON)}."""

NMNIST_SENSOR = (34, 34)
MAX_SENSOR_SIDE = 1 << 16
"""Largest sensor width/height accepted (event coordinates must lie below it; DVS sensors have <= 1280)."""
MAX_TIMESTAMP_US = 1 << 62
SPLIT_METHODS = ("number", "time")
FIT_METHODS = ("auto", "pad", "resize")

_AEDAT4_MAGIC = b"#!AER-DAT4.0"
_AEDAT_MAGIC = b"#!AER-DAT"
_NPY_MAGIC = b"\x93NUMPY"


def read_events(
    path: str | os.PathLike, sensor_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Read an event recording: ``(events, (W, H))`` with events sorted by time (see module docstring).

    ``sensor_size`` overrides the sensor size (needed for ``.npy`` arrays recorded on a larger sensor
    than their events span). Raises :class:`SVFormerError` naming the file for a missing, empty,
    truncated or corrupt file, a file without events and an unknown format.
    """
    path = Path(path)
    if not path.exists():
        raise SVFormerError(f"{path}: no such event file")
    if path.is_dir():
        raise SVFormerError(f"{path}: is a directory, not an event file")
    size = path.stat().st_size
    if size == 0:
        raise SVFormerError(f"{path}: empty file, not an event recording")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise SVFormerError(f"{path}: cannot read ({e.strerror or e})") from None
    suffix = path.suffix.lower()
    if head.startswith(_AEDAT4_MAGIC):
        events, sensor = _read_aedat4(path)
    elif head.startswith(_AEDAT_MAGIC):
        version = head[len(_AEDAT_MAGIC):].split(b"\r")[0].split(b"\n")[0].decode("ascii", "replace")
        raise SVFormerError(
            f"{path}: AEDAT {version} recordings are not supported (their event layout depends on the "
            "camera); convert to AEDAT 4 with DV or save the events as .npy (x, y, t, p)"
        )
    elif head.startswith(_NPY_MAGIC) or suffix == ".npy":
        events, sensor = _read_npy(path)
    elif suffix in (".bin", ".bs2"):
        events, sensor = _read_nmnist(path, size)
    else:
        raise SVFormerError(
            f"{path}: unknown event file format (expected an AEDAT 4 recording, an N-MNIST .bin/.bs2 "
            "binary or a .npy array of x, y, t, p)"
        )
    if len(events) == 0:
        raise SVFormerError(f"{path}: the recording holds no events")
    if sensor_size is not None:
        sensor = (int(sensor_size[0]), int(sensor_size[1]))
        _check_sensor(path, sensor, "given sensor size")
        if events["x"].max() >= sensor[0] or events["y"].max() >= sensor[1]:
            raise SVFormerError(
                f"{path}: events reach x={int(events['x'].max())}, y={int(events['y'].max())}, outside the "
                f"given sensor size {sensor[0]}x{sensor[1]}"
            )
    _check_sensor(path, sensor, "sensor size")
    return events, sensor


def _check_sensor(path: Path, sensor: tuple[int, int], what: str) -> None:
    if not all(1 <= s <= MAX_SENSOR_SIDE for s in sensor):
        raise SVFormerError(f"{path}: {what} {sensor[0]}x{sensor[1]} is outside 1..{MAX_SENSOR_SIDE} pixels per side")


def _as_events(x: Any, y: Any, t: Any, p: Any) -> np.ndarray:
    events = np.empty(len(x), dtype=EVENT_DTYPE)
    events["x"], events["y"], events["t"] = x, y, t
    events["p"] = np.asarray(p) != 0
    if len(events) > 1 and np.any(np.diff(events["t"]) < 0):
        events = events[np.argsort(events["t"], kind="stable")]
    return events


def _read_aedat4(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    try:
        import aedat
        from tonic.io import read_aedat4
    except ImportError as e:  # pragma: no cover - aedat is a declared dependency
        raise SVFormerError(f"{path}: reading AEDAT 4 needs the 'aedat' package ({e})") from None
    try:
        streams = aedat.Decoder(str(path)).id_to_stream()
    except (RuntimeError, OSError, ValueError) as e:
        raise SVFormerError(f"{path}: corrupt or truncated AEDAT 4 header ({e})") from None
    ev_streams = sorted(i for i, s in streams.items() if s.get("type") == "events")
    if not ev_streams:
        kinds = ", ".join(sorted({str(s.get("type")) for s in streams.values()})) or "none"
        raise SVFormerError(f"{path}: the AEDAT 4 recording has no event stream (streams: {kinds})")
    info = streams[ev_streams[0]]
    try:
        raw = read_aedat4(str(path))
    except (RuntimeError, OSError, ValueError) as e:
        raise SVFormerError(f"{path}: corrupt or truncated AEDAT 4 recording ({e})") from None
    sensor = (int(info["width"]), int(info["height"]))
    _check_sensor(path, sensor, "AEDAT 4 sensor size")
    events = _as_events(raw["x"], raw["y"], raw["t"].astype(np.int64), raw["p"])
    if len(events) and (events["x"].max() >= sensor[0] or events["y"].max() >= sensor[1]):
        raise SVFormerError(f"{path}: corrupt AEDAT 4 recording (events outside the {sensor[0]}x{sensor[1]} sensor)")
    return events, sensor


def _read_nmnist(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    from tonic.io import events_struct, read_mnist_file

    if size % 5:
        raise SVFormerError(
            f"{path}: truncated or corrupt N-MNIST binary ({size} bytes is not a whole number of 5-byte events)"
        )
    raw = read_mnist_file(str(path), dtype=events_struct)
    t = raw["t"].astype(np.int64)
    if len(t) > 1 and np.any(np.diff(t) < 0):
        raise SVFormerError(f"{path}: not an N-MNIST binary (timestamps go backwards; corrupt or another format)")
    events = _as_events(raw["x"], raw["y"], t, raw["p"])
    if len(events) == 0:
        return events, NMNIST_SENSOR
    w, h = int(events["x"].max()) + 1, int(events["y"].max()) + 1
    sensor = NMNIST_SENSOR if w <= NMNIST_SENSOR[0] and h <= NMNIST_SENSOR[1] else (w, h)
    return events, sensor


def _read_npy(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SVFormerError(f"{path}: not a readable .npy event array ({first})") from None
    if arr.dtype.names:
        missing = [f for f in "xytp" if f not in arr.dtype.names]
        if missing:
            raise SVFormerError(
                f"{path}: structured event array lacks field(s) {', '.join(missing)} (needs x, y, t, p)"
            )
        x, y, t, p = (arr[f].reshape(-1) for f in "xytp")
    elif arr.ndim == 2 and arr.shape[1] == 4 and np.issubdtype(arr.dtype, np.number):
        x, y, t, p = arr.T
    else:
        raise SVFormerError(
            f"{path}: expected a structured array with fields x, y, t, p or an N x 4 array, "
            f"got dtype {arr.dtype} shape {list(arr.shape)}"
        )
    if len(x) == 0:
        return np.empty(0, EVENT_DTYPE), (1, 1)
    cols = {"x": x, "y": y, "t": t}
    limits = {"x": MAX_SENSOR_SIDE, "y": MAX_SENSOR_SIDE, "t": MAX_TIMESTAMP_US}
    for name, col in cols.items():
        col = np.asarray(col)
        if col.dtype.kind not in "biuf":
            raise SVFormerError(f"{path}: column {name} has dtype {col.dtype}, not numbers")
        if not np.all(np.isfinite(col)) or np.any(col < 0) or np.any(col != np.floor(col)):
            raise SVFormerError(f"{path}: column {name} must hold non-negative integers")
        if np.any(col >= limits[name]):  # checked before the cast to int32/int64, which would wrap silently
            raise SVFormerError(f"{path}: column {name} reaches {int(np.max(col))}, beyond the limit "
                                f"{limits[name]} ({'pixels' if name != 't' else 'µs'})")
    events = _as_events(np.asarray(x, np.int64), np.asarray(y, np.int64), np.asarray(t, np.int64), p)
    return events, (int(events["x"].max()) + 1, int(events["y"].max()) + 1)


# -- framing -------------------------------------------------------------------------------------
def slice_bounds(events: np.ndarray, time_steps: int, method: str = "number") -> np.ndarray:
    """Index boundaries ``[T + 1]`` of the T event slices (``events[b[i]:b[i+1]]`` is slice i)."""
    if method not in SPLIT_METHODS:
        raise SVFormerError(f"unknown event split method {method!r}; use one of {', '.join(SPLIT_METHODS)}")
    if time_steps < 1:
        raise SVFormerError(f"time_steps must be >= 1, got {time_steps}")
    n = len(events)
    if method == "number":
        return (np.arange(time_steps + 1, dtype=np.int64) * n) // time_steps
    t = events["t"]
    t0, t1 = int(t[0]), int(t[-1])
    edges = t0 + (np.arange(1, time_steps, dtype=np.float64) * (t1 - t0)) / time_steps
    inner = np.searchsorted(t, edges, side="left")
    return np.concatenate(([0], inner, [n])).astype(np.int64)


def fit_coordinates(
    events: np.ndarray, sensor_size: tuple[int, int], size: int, fit: str = "auto"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map event coordinates onto an ``size x size`` grid: ``(x, y, inside)`` (see ``fit`` in the module docstring)."""
    if fit not in FIT_METHODS:
        raise SVFormerError(f"unknown fit method {fit!r}; use one of {', '.join(FIT_METHODS)}")
    w, h = int(sensor_size[0]), int(sensor_size[1])
    if fit == "auto":
        fit = "pad" if w <= size and h <= size else "resize"
    x = events["x"].astype(np.int64)
    y = events["y"].astype(np.int64)
    if fit == "resize":  # x' = floor(x * size / max(W, H)) in integer arithmetic, the image centred
        m = max(w, h)
        x = (x * size) // m + (size - ((w - 1) * size // m + 1)) // 2
        y = (y * size) // m + (size - ((h - 1) * size // m + 1)) // 2
    else:
        x = x + (size - w) // 2
        y = y + (size - h) // 2
    inside = (x >= 0) & (x < size) & (y >= 0) & (y < size)
    return x, y, inside


def events_to_frames(
    events: np.ndarray,
    sensor_size: tuple[int, int],
    time_steps: int,
    size: int,
    method: str = "number",
    fit: str = "auto",
) -> Tensor:
    """Integrate events into ``[T, 2, size, size]`` float32 frames of per-pixel event counts.

    Channel 0 counts OFF events, channel 1 ON events; slices by ``method`` (``"number"``: equal event
    counts, ``"time"``: equal time bins), fitted to ``size`` by ``fit`` (module docstring).
    """
    if len(events) == 0:
        raise SVFormerError("no events to integrate into frames")
    if size < 1:
        raise SVFormerError(f"frame size must be >= 1, got {size}")
    bounds = slice_bounds(events, time_steps, method)
    x, y, inside = fit_coordinates(events, sensor_size, size, fit)
    step = np.repeat(np.arange(time_steps, dtype=np.int64), np.diff(bounds))
    p = events["p"].astype(np.int64)
    flat = ((step * 2 + p) * size + y) * size + x
    counts = np.bincount(flat[inside], minlength=time_steps * 2 * size * size)
    return torch.from_numpy(counts.astype(np.float32).reshape(time_steps, 2, size, size))


def load_event_clip(
    path: str | os.PathLike,
    time_steps: int,
    size: int,
    method: str = "number",
    fit: str = "auto",
    sensor_size: tuple[int, int] | None = None,
) -> Tensor:
    """Read an event file and return the model input ``[T, 2, size, size]`` (float32 event counts)."""
    events, sensor = read_events(path, sensor_size)
    return events_to_frames(events, sensor, time_steps, size, method, fit)


LUMA = (0.299, 0.587, 0.114)


def video_to_event_frames(rgb: Tensor) -> Tensor:
    """``[T + 1, 3, H, W]`` RGB in [0, 1] -> ``[T, 2, H, W]`` luma changes (channel 0 OFF, 1 ON)."""
    if rgb.dim() != 4 or rgb.shape[1] != 3 or rgb.shape[0] < 2:
        raise SVFormerError(f"expected RGB frames [T + 1, 3, H, W] with T >= 1, got {list(rgb.shape)}")
    w = torch.tensor(LUMA, dtype=rgb.dtype).view(1, 3, 1, 1)
    y = (rgb * w).sum(1)
    d = y[1:] - y[:-1]
    return torch.stack([(-d).clamp(min=0), d.clamp(min=0)], dim=1).float().contiguous()


def load_video_events(
    path: str | os.PathLike,
    time_steps: int,
    size: int,
    frame_stride: int = 4,
    train: bool = False,
    rng: np.random.Generator | None = None,
) -> Tensor:
    """A video as ``[T, 2, size, size]`` emulated event frames (luma changes; see the module docstring)."""
    from .video import load_clip

    rgb = load_clip(path, time_steps=time_steps + 1, size=size, frame_stride=frame_stride, train=train, rng=rng,
                    mean=0.0, std=1.0, hflip=False)
    return video_to_event_frames(rgb)


def probe_events(
    path: str | os.PathLike,
    time_steps: int,
    size: int,
    method: str = "number",
    fit: str = "auto",
    sensor_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """What the model will see of an event file (for ``probe --events``), as a JSON-ready dict.

    Fields: ``format``, ``sensor_size`` ([W, H] pixels), ``events`` (count), ``on_events``,
    ``off_events``, ``duration_us``, ``t_start_us``, ``split``, ``fit``, ``frame_events`` (events
    per frame, T ints), ``frame_duration_us`` (time span of each slice), ``dropped_events`` (outside
    the field of view after cropping), ``tensor_shape`` ([T, 2, S, S]).
    """
    path = Path(path)
    events, sensor = read_events(path, sensor_size)
    frames = events_to_frames(events, sensor, time_steps, size, method, fit)
    bounds = slice_bounds(events, time_steps, method)
    t = events["t"]
    spans = [
        int(t[b1 - 1] - t[b0]) if b1 > b0 else 0 for b0, b1 in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    with open(path, "rb") as f:
        head = f.read(16)
    fmt = "aedat4" if head.startswith(_AEDAT4_MAGIC) else "npy" if head.startswith(_NPY_MAGIC) else "nmnist"
    w, h = sensor
    return {
        "file": str(path),
        "format": fmt,
        "sensor_size": [int(w), int(h)],
        "events": int(len(events)),
        "on_events": int(events["p"].sum()),
        "off_events": int(len(events) - events["p"].sum()),
        "duration_us": int(t[-1] - t[0]),
        "t_start_us": int(t[0]),
        "split": method,
        "fit": ("pad" if w <= size and h <= size else "resize") if fit == "auto" else fit,
        "frame_events": [int(v) for v in np.diff(bounds)],
        "frame_duration_us": spans,
        "dropped_events": int(len(events) - round(float(frames.sum()))),
        "tensor_shape": list(frames.shape),
    }
