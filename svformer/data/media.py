"""File name suffixes of the inputs the toolchain reads: the one list every folder scan uses."""

from __future__ import annotations

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv")
"""Video containers decoded through PyAV (lower case; compare with ``path.suffix.lower()``)."""

EVENT_EXTENSIONS = (".aedat4", ".bin", ".bs2", ".npy")
"""Event recordings :func:`svformer.data.events.read_events` reads (AEDAT 4, N-MNIST binary, NumPy)."""
