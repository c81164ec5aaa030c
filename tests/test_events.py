"""Event-camera input: reading N-MNIST / AEDAT4 / .npy recordings and integrating events into frames."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from svformer_deploy.svformer.data.events import (
    EVENT_DTYPE,
    events_to_frames,
    load_event_clip,
    probe_events,
    read_events,
    slice_bounds,
)
from svformer_deploy.svformer.errors import SVFormerError

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SVFORMER_DATA", ROOT.parent / "shared" / "data"))
NMNIST = DATA / "events" / "nmnist-small"
AEDAT4 = DATA / "events" / "samples" / "davis346_sample.aedat4"
NMNIST_BIN = DATA / "events" / "samples" / "nmnist_sample.bin"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set SVFORMER_DATA to the shared data folder)")
    return path


def decode_by_hand(raw: bytes, count: int) -> list[tuple[int, int, int, int]]:
    """The N-MNIST format spelled out: x, y bytes, then 1 polarity bit + 23 timestamp bits, big-endian."""
    out = []
    for i in range(count):
        b = raw[5 * i:5 * i + 5]
        word = int.from_bytes(b[2:5], "big")
        out.append((b[0], b[1], word & 0x7FFFFF, word >> 23))
    return out


def random_events(rng: np.random.Generator, n: int, w: int, h: int) -> np.ndarray:
    ev = np.empty(n, EVENT_DTYPE)
    ev["x"] = rng.integers(0, w, n)
    ev["y"] = rng.integers(0, h, n)
    ev["t"] = np.sort(rng.integers(0, 10_000, n))
    ev["p"] = rng.integers(0, 2, n)
    return ev


# -- reading real recordings ---------------------------------------------------------------------
@pytest.mark.data
@pytest.mark.parametrize("path", [NMNIST / "1.bs2", NMNIST / "60001.bs2", NMNIST_BIN], ids=lambda p: p.name)
def test_nmnist_first_events_match_the_raw_bytes(path: Path) -> None:
    raw = need(path).read_bytes()
    events, sensor = read_events(path)
    assert sensor == (34, 34)
    assert len(events) == len(raw) // 5  # these recordings hold no timestamp-overflow events
    first = decode_by_hand(raw, 8)
    got = [(int(e["x"]), int(e["y"]), int(e["t"]), int(e["p"])) for e in events[:8]]
    assert got == first
    assert (np.diff(events["t"]) >= 0).all()
    assert events["x"].max() < 34 and events["y"].max() < 34


@pytest.mark.data
def test_nmnist_first_event_of_sample_1_is_x18_y16_t893_on() -> None:
    events, _ = read_events(need(NMNIST / "1.bs2"))
    # bytes 12 10 80 03 7d: x=0x12, y=0x10, polarity bit 1, t=0x00037d us
    assert tuple(int(v) for v in events[0].tolist()) == (18, 16, 893, 1)


@pytest.mark.data
def test_aedat4_recording_reads_with_its_sensor_size() -> None:
    events, sensor = read_events(need(AEDAT4))
    assert sensor == (320, 240)
    assert 100_000 < len(events) < 125_000
    assert (np.diff(events["t"]) >= 0).all()
    assert set(np.unique(events["p"]).tolist()) == {0, 1}
    assert events["x"].max() < 320 and events["y"].max() < 240
    duration_s = (events["t"][-1] - events["t"][0]) / 1e6
    assert 0.5 < duration_s < 0.7


@pytest.mark.data
def test_aedat4_clip_is_resized_without_losing_events() -> None:
    events, _ = read_events(need(AEDAT4))
    clip = load_event_clip(AEDAT4, time_steps=4, size=64)
    assert clip.shape == (4, 2, 64, 64) and clip.dtype.is_floating_point
    assert int(clip.sum()) == len(events)
    info = probe_events(AEDAT4, time_steps=4, size=64)
    assert info["fit"] == "resize" and info["dropped_events"] == 0
    assert sum(info["frame_events"]) == info["events"] == len(events)
    assert info["tensor_shape"] == [4, 2, 64, 64] and info["sensor_size"] == [320, 240]


# -- framing ---------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 400), t_steps=st.integers(1, 9), w=st.integers(1, 50), h=st.integers(1, 50),
       size=st.integers(1, 60), method=st.sampled_from(["number", "time"]), fit=st.sampled_from(["auto", "resize"]),
       seed=st.integers(0, 2**16))
def test_framing_conserves_the_event_count(n, t_steps, w, h, size, method, fit, seed) -> None:
    ev = random_events(np.random.default_rng(seed), n, w, h)
    frames = events_to_frames(ev, (w, h), t_steps, size, method=method, fit=fit)
    assert frames.shape == (t_steps, 2, size, size)
    if fit == "resize" or (w <= size and h <= size):
        assert int(frames.sum()) == n
        assert int(frames[:, 1].sum()) == int(ev["p"].sum())  # channel 1 = ON


def test_padding_centres_the_sensor_and_cropping_drops_only_events_outside() -> None:
    ev = np.zeros(3, EVENT_DTYPE)
    ev["x"], ev["y"], ev["t"], ev["p"] = [0, 5, 9], [0, 5, 9], [0, 1, 2], [1, 0, 1]
    padded = events_to_frames(ev, (10, 10), 1, 14, fit="pad")
    assert padded[0, 1, 2, 2] == 1 and padded[0, 0, 7, 7] == 1 and padded[0, 1, 11, 11] == 1
    cropped = events_to_frames(ev, (10, 10), 1, 6, fit="pad")  # keeps sensor pixels 2..7
    assert int(cropped.sum()) == 1 and cropped[0, 0, 3, 3] == 1


def test_equal_count_split_gives_frames_within_one_event_of_each_other() -> None:
    ev = random_events(np.random.default_rng(0), 1003, 34, 34)
    per_frame = events_to_frames(ev, (34, 34), 8, 34).sum(dim=(1, 2, 3))
    assert per_frame.max() - per_frame.min() <= 1 and int(per_frame.sum()) == 1003


def test_time_split_puts_each_event_in_its_time_bin() -> None:
    ev = random_events(np.random.default_rng(1), 500, 8, 8)
    bounds = slice_bounds(ev, 5, "time")
    t0, t1 = ev["t"][0], ev["t"][-1]
    for i in range(5):
        ts = ev["t"][bounds[i]:bounds[i + 1]]
        lo, hi = t0 + i * (t1 - t0) / 5, t0 + (i + 1) * (t1 - t0) / 5
        assert ((ts >= lo) & ((ts < hi) | (i == 4))).all()


# -- .npy arrays -------------------------------------------------------------------------------
def test_npy_structured_and_nx4_arrays_read_alike(tmp_path: Path) -> None:
    ev = random_events(np.random.default_rng(2), 50, 20, 12)
    structured = np.zeros(50, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "?")])
    for f in "xytp":
        structured[f] = ev[f]
    np.save(tmp_path / "s.npy", structured)
    np.save(tmp_path / "a.npy", np.stack([ev["x"], ev["y"], ev["t"], ev["p"]], axis=1).astype(np.int64))
    a, size_a = read_events(tmp_path / "s.npy")
    b, size_b = read_events(tmp_path / "a.npy")
    assert size_a == size_b == (int(ev["x"].max()) + 1, int(ev["y"].max()) + 1)
    assert (a == b).all() and (a["x"] == ev["x"]).all()
    _, given = read_events(tmp_path / "a.npy", sensor_size=(64, 48))
    assert given == (64, 48)


# -- bad input -----------------------------------------------------------------------------------
def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    files = {}
    (tmp_path / "empty.bin").write_bytes(b"")
    files["empty"] = (tmp_path / "empty.bin", "empty file")
    (tmp_path / "trunc.bs2").write_bytes(bytes([1, 2, 128, 0, 7, 3, 4]))
    files["truncated"] = (tmp_path / "trunc.bs2", "5-byte events")
    (tmp_path / "text.bin").write_bytes(b"hello world, this is not an N-MNIST recording".ljust(50, b"!"))
    files["text"] = (tmp_path / "text.bin", "timestamps go backwards")
    (tmp_path / "x.dat").write_bytes(b"\x00" * 20)
    files["unknown"] = (tmp_path / "x.dat", "unknown event file format")
    np.save(tmp_path / "wrong.npy", np.zeros((4, 3)))
    files["npy shape"] = (tmp_path / "wrong.npy", "N x 4")
    np.save(tmp_path / "none.npy", np.zeros((0, 4)))
    files["no events"] = (tmp_path / "none.npy", "no events")
    files["missing"] = (tmp_path / "missing.bs2", "no such event file")
    return files


@pytest.mark.parametrize("case", ["empty", "truncated", "text", "unknown", "npy shape", "no events", "missing"])
def test_unreadable_event_files_raise_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    path, reason = _bad_files(tmp_path)[case]
    with pytest.raises(SVFormerError) as err:
        read_events(path)
    msg = str(err.value)
    assert str(path) in msg and reason in msg and "\n" not in msg


@pytest.mark.data
def test_truncated_aedat4_is_reported_as_corrupt(tmp_path: Path) -> None:
    bad = tmp_path / "cut.aedat4"
    bad.write_bytes(need(AEDAT4).read_bytes()[:200_000])
    with pytest.raises(SVFormerError, match="corrupt or truncated AEDAT 4"):
        read_events(bad)


def test_older_aedat_versions_are_refused_with_the_reason(tmp_path: Path) -> None:
    f = tmp_path / "old.aedat"
    f.write_bytes(b"#!AER-DAT2.0\r\n# comment\r\n" + b"\x00" * 16)
    with pytest.raises(SVFormerError, match="AEDAT 2.0 recordings are not supported"):
        read_events(f)


# -- event frames emulated from video ------------------------------------------------------------
def test_video_event_frames_are_luma_changes_split_by_sign() -> None:
    import torch
    from svformer_deploy.svformer.data.events import video_to_event_frames

    rgb = torch.zeros(3, 3, 4, 4)
    rgb[1, :, 0, 0] = 1.0  # pixel (0, 0) turns white at step 1, back to black at step 2
    rgb[:, 0, 2, 2] = 0.5  # a static red pixel: no change, no events
    ev = video_to_event_frames(rgb)
    assert ev.shape == (2, 2, 4, 4)
    assert ev[0, 1, 0, 0] == pytest.approx(1.0) and ev[0, 0, 0, 0] == 0  # ON at step 0
    assert ev[1, 0, 0, 0] == pytest.approx(1.0) and ev[1, 1, 0, 0] == 0  # OFF at step 1
    assert float(ev.sum()) == pytest.approx(2.0)
    with pytest.raises(SVFormerError, match="expected RGB frames"):
        video_to_event_frames(rgb[:1])


def test_a_moving_shape_video_gives_events_and_a_still_one_none(tmp_path: Path) -> None:
    from svformer_deploy.svformer.data.events import load_video_events
    from svformer_deploy.svformer.data.synthetic import write_clip

    frames = np.zeros((12, 32, 32, 3), dtype=np.uint8)
    for i in range(12):
        frames[i, 10:20, 2 + 2 * i:8 + 2 * i] = 255  # a white bar moving right, 2 px per frame
    moving = write_clip(tmp_path / "moving.mp4", frames)
    still = write_clip(tmp_path / "still.mp4", np.repeat(frames[:1], 12, axis=0))
    ev = load_video_events(moving, time_steps=4, size=32, frame_stride=2)
    assert ev.shape == (4, 2, 32, 32) and ev.dtype.is_floating_point
    assert float(ev.sum()) > 10
    assert float(load_video_events(still, time_steps=4, size=32, frame_stride=2).abs().max()) < 0.05
