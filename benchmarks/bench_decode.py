"""Decode time of 16 sampled frames per shared clip, sequential decoding vs seeking to every frame.

For each clip in ``$SVFORMER_DATA/video`` (default ``../shared/data/video``) this prints, as medians over
``--repeat`` runs after one warm-up:

- ``decode``: :func:`svformer.data.video.decode_frames` of the 16 indices of the centred test view
  (sequential decoding from the start, stopping after the last needed frame; RGB uint8 out);
- ``clip``: :func:`svformer.data.video.load_clip` (the same plus resize, crop and normalisation to
  ``[16, 3, 224, 224]``);
- ``seek``: the same 16 frames read by seeking to each one (``container.seek`` to its timestamp, which lands
  on the previous keyframe, then decoding forward to the frame with that timestamp), as random-access
  readers do; the pixels are checked against the sequential result;
- ``seek/seq``: how many times slower seeking is than sequential decoding.

Target (issue 3): the 1080p clip decodes its 16 frames in under 1 s.

    .venv/bin/python benchmarks/bench_decode.py [--repeat 5] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from svformer_deploy.svformer.data.video import decode_frames, load_clip, probe_video, sample_indices  # noqa: E402


def frame_pts(path: Path) -> list[int]:
    """Presentation timestamps of every frame in decoder output order (one full pass, not timed)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        return [f.pts for f in c.decode(s)]


def decode_by_seeking(path: Path, indices: list[int], pts: list[int]) -> np.ndarray:
    """Read each frame by seeking to it: the random-access pattern sequential decoding avoids."""
    out = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for i in indices:
            # frames are matched by their own pts label: in AVI files with B-frames the labels FFmpeg attaches
            # to decoded frames are not monotonic (eye_makeup: 1, 2, 4, 3, 5, 7, 6, ...), so ">= target" would
            # stop on the wrong frame
            target = pts[i]
            c.seek(target, stream=s, backward=True, any_frame=False)
            for frame in c.decode(s):
                if frame.pts == target:
                    out.append(frame.to_ndarray(format="rgb24"))
                    break
    return np.stack(out)


def median_time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("SVFORMER_DATA", REPO.parent / "shared" / "data")) / "video")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--time-steps", type=int, default=16)
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"no clips: {args.data} does not exist (set SVFORMER_DATA)", file=sys.stderr)
        return 2
    print(f"PyAV {av.__version__}, FFmpeg libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}, "
          f"{os.cpu_count()} CPUs, median of {args.repeat} runs, T={args.time_steps}")
    header = f"{'clip':<28} {'size':>10} {'codec':>6} {'frames':>6} {'last idx':>8} {'decode':>9} {'clip':>9} " \
             f"{'seek':>9} {'seek/seq':>8}"
    print(header)
    print("-" * len(header))
    for path in sorted(args.data.iterdir()):
        info = probe_video(path)
        (idx,) = sample_indices(info.frames, args.time_steps)
        pts = frame_pts(path)
        seq = decode_frames(path, idx)
        seek = decode_by_seeking(path, idx, pts)
        same = np.array_equal(seq, seek)
        t_seq = median_time(lambda p=path, i=idx: decode_frames(p, i), args.repeat)
        t_clip = median_time(lambda p=path: load_clip(p, time_steps=args.time_steps), args.repeat)
        t_seek = median_time(lambda p=path, i=idx, q=pts: decode_by_seeking(p, i, q), args.repeat)
        print(f"{path.name:<28} {info.width:>5}x{info.height:<4} {info.codec:>6} {info.frames:>6} {idx[-1]:>8} "
              f"{t_seq * 1e3:>7.0f}ms {t_clip * 1e3:>7.0f}ms {t_seek * 1e3:>7.0f}ms {t_seek / t_seq:>7.1f}x"
              + ("" if same else "  (seeking returned different pixels)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
