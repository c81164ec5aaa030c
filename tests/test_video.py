"""Video decoding and frame sampling (PyAV), on generated clips and on the shared real clips."""

from __future__ import annotations

import math
import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from svformer_deploy.svformer.data.synthetic import write_clip
from svformer_deploy.svformer.data.video import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    decode_frames,
    load_clip,
    load_views,
    probe_video,
    read_views,
    sample_indices,
    spatial_crop_offsets,
)
from svformer_deploy.svformer.errors import SVFormerError

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SVFORMER_DATA", REPO.parent / "shared" / "data"))
VIDEO_DIR = DATA / "video"
# frame counts from the data README (container-declared counts, verified by decoding)
REAL_FRAMES = {
    "eye_makeup_ucf101.avi": 164,
    "arm_wrestling_kinetics.mp4": 280,
    "ntu_drink_water_1080p.avi": 103,
    "clean_and_jerk.mp4": 300,
    "tai_chi.mp4": 300,
    "chaplin_bw.mp4": 241,
}

# ---------------------------------------------------------------------------------------------
# clips whose frames carry their own index: 8 horizontal bands of 8 pixels, band b white when bit b
# of the frame index is set. Full-width bands survive any crop along the width and any codec.

BANDS, BAND_H = 8, 8


def coded_frames(n: int, width: int = 96, height: int = BANDS * BAND_H) -> np.ndarray:
    frames = np.zeros((n, height, width, 3), np.uint8)
    for i in range(n):
        for b in range(BANDS):
            if (i >> b) & 1:
                frames[i, b * BAND_H:(b + 1) * BAND_H] = 255
    return frames


def read_codes(rgb: np.ndarray) -> list[int]:
    """Frame indices from ``uint8 [N, H, W, 3]`` frames of :func:`coded_frames` (any height)."""
    n, h = rgb.shape[:2]
    band = h / BANDS
    codes = []
    for f in rgb.astype(np.float32):
        bits = [f[int(band * b + band * 0.3):int(band * b + band * 0.7) + 1].mean() > 127 for b in range(BANDS)]
        codes.append(sum(1 << b for b, on in enumerate(bits) if on))
    return codes


def tensor_codes(clip: torch.Tensor) -> list[int]:
    """Frame indices encoded in a normalised ``[T, 3, S, S]`` clip."""
    rgb = (clip * DEFAULT_STD + DEFAULT_MEAN).clamp(0, 1).mul(255).permute(0, 2, 3, 1).numpy()
    return read_codes(rgb)


def encoder_available(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
        return True
    except Exception:  # noqa: BLE001
        return False


def _write_intra_clip(path: Path, frames: np.ndarray, codec: str) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.bit_rate = 2_000_000
        s.codec_context.gop_size = 1
        for rgb in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def clip40(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("v") / "coded40.mp4", coded_frames(40))


CONTAINERS = [
    ("mp4", "libx264"),
    ("avi", "mpeg4"),
    ("avi", "msmpeg4"),
    ("mkv", "libx264"),
    ("webm", "libvpx"),
    ("webm", "libvpx-vp9"),
]


# ---------------------------------------------------------------------------------------------
# sampling rule


def test_centre_view_follows_the_reference_offset_rule():
    # 300 frames, window 64: delta 236, one view starts at floor(236 / 2) = 118, step 63/15 = 4.2
    (view,) = sample_indices(300, 16, 4)
    assert view == [int(math.floor(118 + k * 63 / 15)) for k in range(16)]
    assert view[:4] == [118, 122, 126, 130] and view[-1] == 181


def test_five_temporal_views_start_at_multiples_of_floor_delta_over_four():
    views = sample_indices(300, 16, 4, temporal_views=5)
    assert [v[0] for v in views] == [0, 59, 118, 177, 236]
    assert views[-1][-1] == 299  # the last view ends on the last frame


def test_clip_shorter_than_window_clamps_to_its_last_frame():
    (view,) = sample_indices(40, 16, 4)
    assert view == [min(int(math.floor(k * 63 / 15)), 39) for k in range(16)]
    assert view[-3:] == [39, 39, 39]


def test_fewer_frames_than_time_steps_is_an_error():
    with pytest.raises(SVFormerError, match="shorter than T=16"):
        sample_indices(15, 16)


def test_training_window_start_is_random_but_reproducible():
    a = sample_indices(300, 8, 4, temporal_views=6, train=True, rng=np.random.default_rng(1))
    b = sample_indices(300, 8, 4, temporal_views=6, train=True, rng=np.random.default_rng(1))
    assert a == b
    assert len({v[0] for v in a}) > 1
    assert all(0 <= v[0] <= 300 - 32 for v in a)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), t=st.integers(1, 32), stride=st.integers(1, 6), k=st.integers(1, 6),
       train=st.booleans(), seed=st.integers(0, 2**16))
def test_every_view_has_t_non_decreasing_indices_inside_the_clip(n, t, stride, k, train, seed):
    if n < t:
        with pytest.raises(SVFormerError):
            sample_indices(n, t, stride, k, train, np.random.default_rng(seed))
        return
    views = sample_indices(n, t, stride, k, train, np.random.default_rng(seed))
    assert len(views) == k
    for v in views:
        assert len(v) == t
        assert all(0 <= i < n for i in v)
        assert all(b >= a for a, b in zip(v, v[1:], strict=False))
        assert v[-1] - v[0] <= t * stride - 1


def test_three_crops_run_along_the_long_side():
    assert spatial_crop_offsets(224, 298, 224, 3) == [(0, 0), (0, 37), (0, 74)]
    assert spatial_crop_offsets(298, 224, 224, 3) == [(0, 0), (37, 0), (74, 0)]
    assert spatial_crop_offsets(224, 224, 224, 1) == [(0, 0)]


# ---------------------------------------------------------------------------------------------
# generated clips: pixel content proves the frame order


@pytest.mark.parametrize(("ext", "codec"), CONTAINERS, ids=[f"{e}-{c}" for e, c in CONTAINERS])
def test_every_container_decodes_frames_in_order(tmp_path, ext, codec):
    if not encoder_available(codec):
        pytest.skip(f"this FFmpeg build has no {codec} encoder")
    if codec == "msmpeg4":
        # FFmpeg's msmpeg4 *encoder* gets P-frames of this hard-edged pattern wrong (stale macroblocks, with
        # any thread setting and bit rate), so this clip is intra-only: it checks the decoder and the AVI path
        path = _write_intra_clip(tmp_path / f"clip.{ext}", coded_frames(40), codec)
    else:
        path = write_clip(tmp_path / f"clip.{ext}", coded_frames(40), codec=codec)
    info = probe_video(path)
    assert (info.width, info.height, info.frames) == (96, 64, 40)
    assert info.fps == pytest.approx(25.0)
    assert read_codes(decode_frames(path, range(40))) == list(range(40))
    assert read_codes(decode_frames(path, [3, 3, 17, 0])) == [3, 3, 17, 0]
    views = read_views(path, time_steps=8, size=32, temporal_views=2, spatial_crops=3, frame_stride=2)
    assert views.tensor.shape == (6, 8, 3, 32, 32)
    for clip, idx in zip(views.tensor, views.indices, strict=True):
        assert tensor_codes(clip) == idx


def test_matroska_frames_are_counted_from_packets(tmp_path):
    path = write_clip(tmp_path / "c.mkv", coded_frames(24))
    info = probe_video(path)
    assert (info.frames, info.frames_source, info.container) == (24, "packets", "matroska,webm")


def test_decoding_stops_after_the_last_needed_frame(clip40):
    # T=4, stride 2: window 8, centred at floor((40 - 8) / 2) = 16 -> frames 16..23
    views = read_views(clip40, time_steps=4, size=32, frame_stride=2)
    assert views.indices == [[16, 18, 20, 23]]
    assert views.frames_decoded == 24
    assert tensor_codes(views.tensor[0]) == [16, 18, 20, 23]


def test_short_clip_repeats_its_last_frame(tmp_path):
    path = write_clip(tmp_path / "short.mp4", coded_frames(20))
    clip = load_clip(path, time_steps=8, size=32, frame_stride=4)
    assert tensor_codes(clip) == [0, 4, 8, 13, 17, 19, 19, 19]


def test_test_clip_is_normalised_centre_crop_of_the_resized_frames(clip40):
    clip = load_clip(clip40, time_steps=8, size=32, frame_stride=4)
    (idx,) = sample_indices(40, 8, 4)
    rgb = torch.from_numpy(decode_frames(clip40, idx)).permute(0, 3, 1, 2).float() / 255
    resized = F.interpolate(rgb, size=(32, 48), mode="bilinear", align_corners=False)  # 64x96 -> 32x48
    expected = (resized[:, :, :, 8:40] - 0.45) / 0.225
    assert clip.dtype == torch.float32 and clip.shape == (8, 3, 32, 32)
    torch.testing.assert_close(clip, expected)


def test_training_clips_are_random_windows_reproducible_from_the_generator(tmp_path):
    path = write_clip(tmp_path / "long.mp4", coded_frames(100))
    a = load_clip(path, time_steps=8, size=32, frame_stride=4, train=True, rng=np.random.default_rng(5), hflip=False)
    b = load_clip(path, time_steps=8, size=32, frame_stride=4, train=True, rng=np.random.default_rng(5), hflip=False)
    torch.testing.assert_close(a, b)
    starts = set()
    for seed in range(6):
        clip = load_clip(path, time_steps=8, size=32, train=True, rng=np.random.default_rng(seed), hflip=False)
        codes = tensor_codes(clip)
        assert codes == sorted(codes) and codes[-1] - codes[0] in (30, 31)  # floor(linspace(s, s+31, 8))
        starts.add(codes[0])
    assert len(starts) > 1


def test_training_flip_mirrors_the_frame(tmp_path):
    frames = np.zeros((16, 32, 32, 3), np.uint8)
    frames[:, :, :16] = 255  # left half white
    path = write_clip(tmp_path / "half.mp4", frames)
    flipped = [load_clip(path, 8, 32, 2, train=True, rng=np.random.default_rng(s)) for s in range(12)]
    left_white = [bool(c[:, :, :, :8].mean() > c[:, :, :, -8:].mean()) for c in flipped]
    assert True in left_white and False in left_white  # flipped with probability 0.5
    kept = [load_clip(path, 8, 32, 2, train=True, rng=np.random.default_rng(s), hflip=False) for s in range(12)]
    assert all(c[:, :, :, :8].mean() > c[:, :, :, -8:].mean() for c in kept)


# ---------------------------------------------------------------------------------------------
# the shared real clips


def real_clips() -> list[Path]:
    return sorted(VIDEO_DIR.glob("*")) if VIDEO_DIR.is_dir() else []


@pytest.mark.data
@pytest.mark.skipif(not VIDEO_DIR.is_dir(), reason=f"real clips not found at {VIDEO_DIR} (set SVFORMER_DATA)")
@pytest.mark.parametrize("path", real_clips(), ids=lambda p: p.name)
def test_real_clip_gives_a_normalised_16x3x224x224_tensor(path):
    info = probe_video(path)
    if path.name in REAL_FRAMES:
        assert info.frames == REAL_FRAMES[path.name]
    views = read_views(path)
    clip = views.tensor[0]
    assert clip.shape == (16, 3, 224, 224) and clip.dtype == torch.float32
    assert torch.isfinite(clip).all()
    assert clip.min() >= (0 - 0.45) / 0.225 - 1e-5 and clip.max() <= (1 - 0.45) / 0.225 + 1e-5
    assert clip.std() > 0.05  # real content, not a flat frame
    assert views.indices == sample_indices(info.frames, 16, 4)
    assert views.frames_decoded == views.indices[0][-1] + 1
    # consecutive time steps are different frames of a moving scene
    assert (clip[1:] - clip[:-1]).abs().mean() > 1e-3


@pytest.mark.data
@pytest.mark.skipif(not VIDEO_DIR.is_dir(), reason=f"real clips not found at {VIDEO_DIR} (set SVFORMER_DATA)")
def test_real_clip_views_match_decode_frames_pixels():
    path = VIDEO_DIR / "eye_makeup_ucf101.avi"
    if not path.exists():
        pytest.skip(f"{path} absent")
    tensor, indices = load_views(path, temporal_views=2, spatial_crops=3)
    assert tensor.shape == (6, 16, 3, 224, 224)
    rgb = torch.from_numpy(decode_frames(path, indices[3])).permute(0, 3, 1, 2).float() / 255
    resized = F.interpolate(rgb, size=(224, 298), mode="bilinear", align_corners=False)  # 320x240 -> 298x224
    torch.testing.assert_close(tensor[5], (resized[:, :, :, 74:] - 0.45) / 0.225)  # right crop, 2nd view


# ---------------------------------------------------------------------------------------------
# bad input: one SVFormerError line naming the file


def _bad_inputs(root: Path) -> dict[str, Path]:
    """Every kind of bad file, generated: name -> path (shared with the CLI tests)."""
    bad = {}
    bad["empty"] = root / "empty.mp4"
    bad["empty"].write_bytes(b"")
    bad["text"] = root / "notes.mp4"
    bad["text"].write_text("this is a text file, not a video\n" * 20)
    good = write_clip(root / "good.mp4", coded_frames(40)).read_bytes()
    bad["truncated_mp4"] = root / "truncated.mp4"
    bad["truncated_mp4"].write_bytes(good[: len(good) * 9 // 10])
    good_mkv = write_clip(root / "good.mkv", coded_frames(40)).read_bytes()
    bad["truncated_mkv"] = root / "truncated.mkv"
    bad["truncated_mkv"].write_bytes(good_mkv[: len(good_mkv) * 8 // 10])
    good_avi = write_clip(root / "good.avi", coded_frames(40)).read_bytes()
    bad["truncated_avi"] = root / "truncated.avi"
    bad["truncated_avi"].write_bytes(good_avi[: len(good_avi) * 9 // 10])
    bad["audio_only"] = root / "speech.mp4"
    with av.open(str(bad["audio_only"]), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(4):
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    bad["few_frames"] = write_clip(root / "few.mp4", coded_frames(10))
    # an AVI whose FourCC no FFmpeg decoder knows
    bad["unknown_codec"] = root / "unknown.avi"
    bad["unknown_codec"].write_bytes(good_avi.replace(b"FMP4", b"ZQX9"))
    bad["missing"] = root / "does_not_exist.mp4"
    return bad


BAD_REASONS = {
    "empty": "empty file",
    "text": "not a readable video",
    "truncated_mp4": "not a readable video",
    "truncated_mkv": "truncated",
    "truncated_avi": "truncated",
    "audio_only": "no video stream",
    "few_frames": "fewer than T=16",
    "unknown_codec": "unsupported video codec",
    "missing": "no such file",
}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    return _bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("kind", sorted(BAD_REASONS))
def test_bad_video_raises_one_line_error_naming_the_file(bad_inputs, kind):
    path = bad_inputs[kind]
    with pytest.raises(SVFormerError) as err:
        load_clip(path, time_steps=16, size=32)
    msg = str(err.value)
    assert str(path) in msg and BAD_REASONS[kind] in msg and "\n" not in msg


def test_truncated_avi_fails_when_decoding_reaches_the_damage(bad_inputs):
    path = bad_inputs["truncated_avi"]
    assert probe_video(path).frames == 40  # the header is intact
    assert read_codes(decode_frames(path, [0, 5, 10])) == [0, 5, 10]  # so is the start
    with pytest.raises(SVFormerError, match="truncated"):
        decode_frames(path, [39])


def test_frame_index_beyond_the_clip_is_an_error(clip40):
    with pytest.raises(SVFormerError, match="has 40 frames"):
        decode_frames(clip40, [40])


def test_per_channel_mean_and_std_normalise_each_channel(clip40):
    plain = load_clip(clip40, time_steps=4, size=32)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    custom = load_clip(clip40, time_steps=4, size=32, mean=mean, std=std)
    rgb = plain * DEFAULT_STD + DEFAULT_MEAN
    expected = (rgb - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(custom, expected, atol=1e-5, rtol=1e-5)
