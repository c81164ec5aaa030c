"""The built-in synthetic action set: moving shapes whose class only motion over time reveals.

Every clip shows one light grey polygon on a dark grey background. The class is the *motion*:

================  =====================================================================
class             motion (pixel coordinates, y pointing down)
================  =====================================================================
move_left/right   translation along -x / +x
move_up/down      translation along -y / +y
move_up_left ...  diagonal translations (up_left, up_right, down_left, down_right)
expand/shrink     the shape's radius grows / shrinks exponentially; when it reaches one end of
                  the size range the sweep restarts from the other end at a new random place
rotate_cw/ccw     rotation about the shape's centroid, clockwise / counter-clockwise on screen
================  =====================================================================

``SYNTHETIC_CLASSES`` lists them in that order, from the easiest to the hardest for a small spiking model
(measured, see below); asking for N classes takes the first N, so 2 and 4 classes are opposite
translations (left/right, then up/down) and 8 classes are the 8 directions of translation.

**A single frame says nothing about the class, by construction.** Per clip the generator draws, from
the same distributions for every class: the shape (one of ``SHAPES``), a position uniform over the frame,
an orientation uniform in [0, 2*pi), a radius log-uniform in ``[R_MIN, R_MAX] * size`` and a speed.
The frame is a torus (a shape leaving one edge re-enters at the opposite one), so the position of a
translating shape stays uniform at every time; the orientation of a rotating shape stays uniform; the
log-radius of an expanding or shrinking shape is a sawtooth (period ``SIZE_PERIOD`` frames) with a
uniform random phase, so it stays log-uniform, and each restart happens at a fresh uniform position.
Hence the distribution of every single frame is the same for all classes, and a frame-only
classifier is at chance; only the change between frames tells the class.

**Fixed grey levels** (``BACKGROUND`` and ``FOREGROUND``): a spiking network's first neurons threshold
``conv(frame)`` and can only compute motion through their membranes (the SVFormer head is linear in the
last spikes), so the direction cue is a threshold crossing whose margin scales with the contrast and
shifts with the background level. With random colours per clip (generator version 2) a small RGB
SVFormer stayed at chance on move_left/move_right for 40 epochs; with random grey levels (random
background, fixed contrast, or random contrast) it needed 2-3 times more epochs; with fixed grey
levels it learns the 4 translations in a few CPU minutes (``benchmarks/train_synthetic.py``).
Rotation sense and expand/shrink need features that relate the motion of an edge to where the body of
the shape is, and were not learnt by such a model in 15 epochs; they come last.

**Motion is large compared with the model's frame sampling** (T frames from a window of 4T, i.e.
about 4.4 raw frames per time step for 32 frames and T=8). Speeds scale with ``size``; at 64 pixels a
time step moves a shape 6-10 pixels, turns it 18-35 degrees (less than 90, so 2-fold symmetric
views stay unambiguous) or scales its radius by 15 % (its area by 33 %). A 32-frame expand/shrink clip
holds about one restart (a jump to another place), so most steps show the steady size change.

Horizontal flips change labels (left <-> right, cw <-> ccw): train with ``hflip=False`` in
:func:`svformer.data.video.load_clip`, or swap the label with :func:`hflip_class`.

Clips are rendered with 4x4 supersampling (PIL polygon fill), written as H.264 (yuv420p, CRF 17) MP4
through PyAV. Everything is deterministic from the seed: clip ``i`` of class ``c`` in split ``s``
uses ``numpy.random.default_rng([seed, s, index of c in SYNTHETIC_CLASSES, i])``, independent of the
number of classes asked for.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import SVFormerError
from ..fileio import atomic_directory, atomic_path

__all__ = [
    "GENERATOR_VERSION",
    "SHAPES",
    "SYNTHETIC_CLASSES",
    "generate_dataset",
    "dataset_manifest",
    "read_dataset_manifest",
    "clip_paths",
    "hflip_class",
    "render_clip",
    "synthetic_classes",
    "write_clip",
]

GENERATOR_VERSION = 4  # bumped whenever the pixels of a (seed, class, i) clip change

SYNTHETIC_CLASSES: list[str] = [
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "move_up_left",
    "move_up_right",
    "move_down_left",
    "move_down_right",
    "expand",
    "shrink",
    "rotate_cw",
    "rotate_ccw",
]

_DIRECTIONS = {
    "move_left": (-1.0, 0.0),
    "move_right": (1.0, 0.0),
    "move_up": (0.0, -1.0),
    "move_down": (0.0, 1.0),
    "move_up_left": (-math.sqrt(0.5), -math.sqrt(0.5)),
    "move_up_right": (math.sqrt(0.5), -math.sqrt(0.5)),
    "move_down_left": (-math.sqrt(0.5), math.sqrt(0.5)),
    "move_down_right": (math.sqrt(0.5), math.sqrt(0.5)),
}

# polygons, none rotationally symmetric; centred on their area centroid, farthest vertex at radius 1 (below)
SHAPES: dict[str, np.ndarray] = {
    "triangle": np.array([(1.0, 0.0), (-0.62, 0.62), (-0.62, -0.62)]),
    "arrow": np.array([(1.0, 0.0), (0.1, 0.75), (0.1, 0.3), (-0.95, 0.3), (-0.95, -0.3), (0.1, -0.3),
                       (0.1, -0.75)]),
    "ell": np.array([(-0.6, -0.6), (0.75, -0.6), (0.75, -0.2), (-0.2, -0.2), (-0.2, 0.75), (-0.6, 0.75)]),
    "tee": np.array([(-0.75, -0.6), (0.75, -0.6), (0.75, -0.2), (0.22, -0.2), (0.22, 0.9), (-0.22, 0.9),
                     (-0.22, -0.2), (-0.75, -0.2)]),
    "kite": np.array([(1.0, 0.0), (0.0, 0.5), (-0.55, 0.0), (0.0, -0.5)]),
}



def _centred(poly: np.ndarray) -> np.ndarray:
    """Move a polygon's area centroid to the origin and scale its farthest vertex to radius 1."""
    x, y = poly[:, 0], poly[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2
    cx = ((x + np.roll(x, -1)) * cross).sum() / (6 * area)
    cy = ((y + np.roll(y, -1)) * cross).sum() / (6 * area)
    out = poly - (cx, cy)
    return out / np.linalg.norm(out, axis=1).max()


SHAPES = {name: _centred(poly) for name, poly in SHAPES.items()}

R_MIN, R_MAX = 0.14, 0.40  # shape radius as a fraction of the frame size (log-uniform in between)
SPEED = (1.4 / 64, 2.4 / 64)  # translation, frame sizes per frame
SPIN = (math.radians(4.0), math.radians(8.0))  # rotation, radians per frame
SIZE_PERIOD = 32  # frames for one sweep of the radius over [R_MIN, R_MAX] (expand / shrink)
BACKGROUND, FOREGROUND = 40, 215  # grey levels (0-255) of the background and of the shape, the same in every clip
_SUPERSAMPLE = 4
_SPLITS = {"train": 0, "test": 1}
_FORMATS = {".mp4": ("mp4", "libx264"), ".mkv": ("matroska", "libx264"), ".avi": ("avi", "mpeg4"),
            ".webm": ("webm", "libvpx-vp9")}


def synthetic_classes(num_classes: int) -> list[str]:
    """The first ``num_classes`` names of :data:`SYNTHETIC_CLASSES`."""
    if not 1 <= num_classes <= len(SYNTHETIC_CLASSES):
        raise SVFormerError(
            f"the synthetic action set has {len(SYNTHETIC_CLASSES)} classes; asked for {num_classes}"
        )
    return list(SYNTHETIC_CLASSES[:num_classes])


def hflip_class(class_name: str) -> str:
    """The class a horizontally flipped clip of ``class_name`` belongs to (left <-> right, cw <-> ccw)."""
    _check_class(class_name)
    swaps = {"left": "right", "right": "left", "cw": "ccw", "ccw": "cw"}
    return "_".join(swaps.get(part, part) for part in class_name.split("_"))


def _check_class(class_name: str) -> None:
    if class_name not in SYNTHETIC_CLASSES:
        raise SVFormerError(f"unknown synthetic class {class_name!r}; known: {', '.join(SYNTHETIC_CLASSES)}")


def render_clip(class_name: str, rng: np.random.Generator, size: int = 64, frames: int = 32) -> np.ndarray:
    """Render one clip of ``class_name``: ``uint8 [frames, size, size, 3]`` RGB (see the module docstring)."""
    _check_class(class_name)
    if size < 8:
        raise SVFormerError(f"synthetic clips need a size of at least 8 pixels, got {size}")
    if frames < 1:
        raise SVFormerError(f"synthetic clips need at least 1 frame, got {frames}")
    # every clip draws the same parameters in the same order, whatever its class
    shape_name = list(SHAPES)[int(rng.integers(len(SHAPES)))]
    cx, cy = rng.uniform(0.0, size, size=2)
    theta0 = float(rng.uniform(0.0, 2 * math.pi))
    radius_u = float(rng.uniform(0.0, 1.0))  # log-radius position in [R_MIN, R_MAX]: fixed, or sawtooth phase
    speed = float(rng.uniform(*SPEED)) * size
    spin = float(rng.uniform(*SPIN))
    # where an expanding/shrinking shape reappears after each restart of its size sweep
    restarts = rng.uniform(0.0, size, size=(frames // SIZE_PERIOD + 2, 2))

    # per-frame pose: centre (x, y) in pixels, orientation theta in radians, radius position u in [0, 1)
    t = np.arange(frames, dtype=np.float64)
    x, y = np.full(frames, cx), np.full(frames, cy)
    theta, u = np.full(frames, theta0), np.full(frames, radius_u)
    if class_name in _DIRECTIONS:
        dx, dy = _DIRECTIONS[class_name]
        x, y = cx + dx * speed * t, cy + dy * speed * t
    elif class_name == "rotate_cw":  # y points down: a growing angle turns clockwise on screen
        theta = theta0 + spin * t
    elif class_name == "rotate_ccw":
        theta = theta0 - spin * t
    elif class_name in ("expand", "shrink"):
        phase = radius_u + (t if class_name == "expand" else -t) / SIZE_PERIOD
        u = phase % 1.0
        sweep = np.abs(np.floor(phase)).astype(np.int64)  # 0 for the first sweep, then 1, 2, ...
        if sweep.max() > 0:
            x = np.where(sweep == 0, cx, restarts[np.maximum(sweep - 1, 0), 0])
            y = np.where(sweep == 0, cy, restarts[np.maximum(sweep - 1, 0), 1])
    radius = R_MIN * (R_MAX / R_MIN) ** u * size

    # rasterise at _SUPERSAMPLE x the resolution (PIL polygon fill), drawn at the 9 torus offsets so a shape
    # crossing an edge re-enters at the opposite one, then box-filter down: anti-aliased coverage in [0, 1]
    ss = _SUPERSAMPLE
    big = size * ss
    shifts = [(ox, oy) for ox in (-size, 0, size) for oy in (-size, 0, size)]
    poly = SHAPES[shape_name]
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for k in range(frames):
        c, s = math.cos(theta[k]), math.sin(theta[k])
        vx = x[k] % size + radius[k] * (c * poly[:, 0] - s * poly[:, 1])
        vy = y[k] % size + radius[k] * (s * poly[:, 0] + c * poly[:, 1])
        mask = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(mask)
        for ox, oy in shifts:
            draw.polygon([((px + ox) * ss - 0.5, (py + oy) * ss - 0.5) for px, py in zip(vx, vy, strict=True)],
                         fill=255)
        cover = np.asarray(mask.reduce(ss), dtype=np.float32)[..., None] / 255  # box average of ss x ss samples
        out[k] = np.rint(BACKGROUND + (FOREGROUND - BACKGROUND) * cover).astype(np.uint8)
    return out


def write_clip(path: str | os.PathLike, frames: np.ndarray, fps: int = 25, crf: int = 17,
               codec: str | None = None) -> Path:
    """Write ``uint8 [F, H, W, 3]`` RGB frames as a video file, atomically; ``fps`` in frames/s.

    The codec follows the extension unless ``codec`` names an FFmpeg encoder: ``.mp4``/``.mkv`` H.264
    (libx264, yuv420p, CRF ``crf``; ``crf=0`` is lossless, QP 0), ``.avi`` MPEG-4 part 2 (~1 bit/pixel),
    ``.webm`` VP9 (constant quality). H and W must be even (4:2:0 chroma). One encoder thread.

    Lossy libx264 output is not reproducible here: encoding the same frames twice in one process gave
    different bitstreams and decoded pixels differing by up to 24 levels, with any thread setting and with
    adaptive quantisation off; lossless H.264 decodes to the same pixels every time, so the synthetic set
    (:func:`generate_dataset`) is written lossless.
    """
    import av

    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise SVFormerError(f"{path}: frames must be uint8 [F, H, W, 3] with F >= 1, got {frames.dtype} "
                            f"{list(frames.shape)}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise SVFormerError(f"{path}: frame size {width}x{height} must be even for 4:2:0 video")
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise SVFormerError(f"{path}: unsupported extension {suffix!r}; use one of {', '.join(_FORMATS)}")
    fmt, default_codec = _FORMATS[suffix]
    codec = codec or default_codec

    try:
        av.codec.Codec(codec, "w")
    except (ValueError, av.error.FFmpegError) as e:
        raise SVFormerError(f"{path}: this FFmpeg build has no encoder {codec!r}") from e
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            stream.options = {"qp" if crf == 0 else "crf": str(crf), "preset": "veryfast"}
        elif codec in ("libvpx", "libvpx-vp9"):
            stream.options = {"crf": str(crf + 10), "b": "0", "threads": "1"}
        else:  # mpeg4, msmpeg4, ...: a high bit rate, ~1 bit per pixel
            stream.bit_rate = width * height * int(fps)
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def dataset_manifest(num_classes: int, train_per_class: int, test_per_class: int, size: int, frames: int, seed: int,
                     fps: int = 25) -> dict:
    """The ``dataset.json`` that :func:`generate_dataset` writes for these parameters."""
    return {
        "generator": "svformer.data.synthetic",
        "version": GENERATOR_VERSION,
        "classes": synthetic_classes(num_classes),
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "size": size,
        "frames": frames,
        "fps": fps,
        "seed": seed,
    }


def generate_dataset(
    root: str | os.PathLike,
    num_classes: int = 4,
    train_per_class: int = 40,
    test_per_class: int = 10,
    size: int = 64,
    frames: int = 32,
    seed: int = 0,
    fps: int = 25,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic action set to ``root`` and return it.

    Layout: ``root/train/<class>/<i>.mp4``, ``root/test/<class>/<i>.mp4`` (``i`` zero-padded to 4 digits),
    ``root/classes.txt`` (one class per line, label order) and ``root/dataset.json`` (the parameters).
    A ``root`` already generated with the same parameters is reused as is; one with other parameters is
    an error unless ``overwrite``. The folder appears atomically (built beside it, then renamed).
    """
    from ..progress import progress

    root = Path(root)
    for name, value in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if value < 0:
            raise SVFormerError(f"{name} must be >= 0, got {value}")
    if size % 2:
        raise SVFormerError(f"synthetic clip size must be even (4:2:0 video), got {size}")
    manifest = dataset_manifest(num_classes, train_per_class, test_per_class, size, frames, seed, fps)
    if root.exists():
        existing = read_dataset_manifest(root)
        if existing == manifest:
            return root
        if not overwrite:
            what = "holds a synthetic set with other parameters" if existing else "exists and is not a synthetic set"
            raise SVFormerError(f"{root}: {what}; choose another folder or overwrite it")
    classes = manifest["classes"]
    jobs = [(split, c, i) for split, n in (("train", train_per_class), ("test", test_per_class))
            for c in classes for i in range(n)]
    with atomic_directory(root, force=overwrite) as tmp:
        for split, class_name, i in progress(jobs, desc="synthetic clips", total=len(jobs), unit="clip"):
            rng = np.random.default_rng([seed, _SPLITS[split], SYNTHETIC_CLASSES.index(class_name), i])
            clip = render_clip(class_name, rng, size=size, frames=frames)
            write_clip(tmp / split / class_name / f"{i:04d}.mp4", clip, fps=fps, crf=0)  # lossless: reproducible
        for split in _SPLITS:
            for class_name in classes:
                (tmp / split / class_name).mkdir(parents=True, exist_ok=True)
        (tmp / "classes.txt").write_text("\n".join(classes) + "\n")
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return root


def read_dataset_manifest(root: str | os.PathLike) -> dict | None:
    """The ``dataset.json`` of a generated set (None when missing or unreadable)."""
    try:
        data = json.loads((Path(root) / "dataset.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def clip_paths(root: str | os.PathLike, split: str) -> list[tuple[Path, int]]:
    """``(path, label)`` of every clip of one split of a generated set, in label then index order."""
    root = Path(root)
    if split not in _SPLITS:
        raise SVFormerError(f"split must be one of {', '.join(_SPLITS)}, got {split!r}")
    classes = _read_classes(root)
    return [(p, label) for label, c in enumerate(classes) for p in sorted((root / split / c).glob("*.mp4"))]


def _read_classes(root: Path) -> Sequence[str]:
    try:
        return [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    except OSError as e:
        raise SVFormerError(f"{root}: not a synthetic action set (no classes.txt)") from e
