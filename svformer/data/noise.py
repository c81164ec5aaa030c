"""Input noise for robustness tests, as the SVFormer paper defines it (Sec. 4.2, Table 2).

Both kinds act on one decoded RGB frame ``[H, W, 3]`` with values in 0..255, before resizing and
normalisation (the paper adds noise "to the original frame"):

- **Gaussian** ``gaussian:a``: ``x' = x + n``, ``n ~ N(0, σ²)`` drawn per value (pixel and channel),
  with ``σ = a · σ_ori`` where ``σ_ori`` is the standard deviation of the original frame (over all its
  pixels and channels). The result is clipped to the pixel range 0..255 (a frame cannot hold other
  values; the paper does not say, and its Fig. 4 frames are images).
- **Salt-and-pepper** ``salt-pepper:P``: every pixel (all three channels together) is, with
  probability P, set to the frame's lowest value (with probability P/2) or its highest value
  (P/2); "lowest" and "highest" are the minimum and maximum over the whole frame.

Randomness is seeded per frame (:func:`frame_rng`): a function of the seed, the clip, the noise
kind and level and the frame index only, so results do not depend on workers, views or order.
Event recordings have no frames; noise is refused for them (:data:`EVENTS_REFUSAL`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import SVFormerError

KINDS = ("gaussian", "salt-pepper")
MAX_LEVELS = 32
EVENTS_REFUSAL = ("--noise applies to decoded video frames (the paper's Gaussian and salt-and-pepper noise); "
                  "event recordings have no frames to add it to")

FrameTransform = Callable[[int, np.ndarray], np.ndarray]  # (frame index, RGB uint8 [H, W, 3]) -> frame


@dataclass(frozen=True)
class Noise:
    """One noise condition: ``kind`` (:data:`KINDS`) and its ``level`` (a for Gaussian, P for salt-and-pepper)."""

    kind: str
    level: float

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.level:g}"

    @property
    def symbol(self) -> str:
        """The paper's name of the level: ``a`` (Gaussian) or ``P`` (salt-and-pepper)."""
        return "a" if self.kind == "gaussian" else "P"

    def apply(self, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The noisy copy of ``frame`` (float32 [H, W, 3] in 0..255)."""
        if self.kind == "gaussian":
            return gaussian_noise(frame, self.level, rng)
        return salt_pepper_noise(frame, self.level, rng)


def parse_noise(specs: Sequence[str]) -> list[Noise]:
    """``["gaussian:0.1,0.3", "salt-pepper:0.01"]`` -> the noise conditions, in order; one error for bad text."""
    out: list[Noise] = []
    for spec in specs:
        kind, sep, levels = spec.partition(":")
        kind = kind.strip().lower().replace("_", "-")
        if kind in ("salt-and-pepper", "saltpepper", "sp"):
            kind = "salt-pepper"
        if not sep or kind not in KINDS or not levels.strip():
            raise SVFormerError(f"--noise {spec!r}: expected KIND:LEVEL[,LEVEL...] with KIND one of "
                                f"{', '.join(KINDS)}, e.g. gaussian:0.1,0.5")
        for text in levels.split(","):
            try:
                level = float(text)
            except ValueError:
                raise SVFormerError(f"--noise {spec!r}: {text.strip()!r} is not a number") from None
            if kind == "gaussian" and not 0 <= level <= 100:
                raise SVFormerError(f"--noise {spec!r}: the Gaussian level a must be in 0..100, got {level:g}")
            if kind == "salt-pepper" and not 0 <= level <= 1:
                raise SVFormerError(f"--noise {spec!r}: the salt-and-pepper probability P must be in 0..1, "
                                    f"got {level:g}")
            n = Noise(kind, level)
            if n not in out:
                out.append(n)
    if len(out) > MAX_LEVELS:
        raise SVFormerError(f"--noise: {len(out)} noise levels, at most {MAX_LEVELS}")
    return out


def gaussian_noise(frame: np.ndarray, a: float, rng: np.random.Generator) -> np.ndarray:
    """``clip(x + N(0, (a·σ_ori)²), 0, 255)`` with σ_ori the std of ``frame`` (float32, same shape)."""
    x = np.asarray(frame, dtype=np.float64)
    sigma = a * float(x.std())
    noisy = x + rng.normal(0.0, 1.0, size=x.shape) * sigma
    return np.clip(noisy, 0.0, 255.0).astype(np.float32)


def salt_pepper_noise(frame: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Each pixel with probability ``p`` set to the frame's minimum (p/2) or maximum (p/2) (float32)."""
    x = np.asarray(frame, dtype=np.float32).copy()
    u = rng.random(x.shape[:2])
    lo, hi = float(x.min()), float(x.max())
    x[u < p / 2] = lo
    x[(u >= p / 2) & (u < p)] = hi
    return x


def frame_rng(seed: int, clip_key: str, noise: Noise, frame_index: int) -> np.random.Generator:
    """The generator of one frame's noise: a function of (seed, clip, kind, level, frame index) only."""
    digest = hashlib.sha256(f"{clip_key}\0{noise.kind}\0{noise.level!r}".encode("utf-8", "surrogateescape"))
    return np.random.default_rng([int(seed), int.from_bytes(digest.digest()[:8], "little"), int(frame_index)])


def frame_transform(noise: Noise | None, seed: int, clip_key: str) -> FrameTransform | None:
    """The per-frame transform that adds ``noise`` to the frames of one clip (None: no noise)."""
    if noise is None:
        return None
    return lambda index, frame: noise.apply(frame, frame_rng(seed, clip_key, noise, index))


__all__ = ["EVENTS_REFUSAL", "KINDS", "FrameTransform", "Noise", "frame_rng", "frame_transform", "gaussian_noise",
           "parse_noise", "salt_pepper_noise"]
