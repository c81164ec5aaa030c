"""The built-in synthetic action set: deterministic, motion-only classes, real decodable mp4 files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from svformer_deploy.svformer.data.synthetic import (
    BACKGROUND,
    FOREGROUND,
    SYNTHETIC_CLASSES,
    clip_paths,
    generate_dataset,
    hflip_class,
    render_clip,
    synthetic_classes,
    write_clip,
)
from svformer_deploy.svformer.data.video import decode_frames, load_clip, probe_video
from svformer_deploy.svformer.errors import SVFormerError

SIZE, FRAMES = 32, 16
# one pair of every kind of motion (what the motion detector below can name)
PAIRS = ["move_left", "move_right", "move_up", "move_down", "expand", "shrink", "rotate_cw", "rotate_ccw"]


def test_classes_come_in_a_documented_order_and_count():
    # translations first (4 classes: the cardinal directions, 8: all directions), then expand/shrink, then rotation
    assert SYNTHETIC_CLASSES == ["move_left", "move_right", "move_up", "move_down", "move_up_left", "move_up_right",
                                 "move_down_left", "move_down_right", "expand", "shrink", "rotate_cw", "rotate_ccw"]
    assert synthetic_classes(4) == PAIRS[:4]
    with pytest.raises(SVFormerError, match="has 12 classes; asked for 13"):
        synthetic_classes(13)
    with pytest.raises(SVFormerError):
        synthetic_classes(0)


def test_hflip_swaps_mirror_classes_only():
    assert hflip_class("move_left") == "move_right"
    assert hflip_class("rotate_cw") == "rotate_ccw"
    assert hflip_class("move_up_left") == "move_up_right"
    assert hflip_class("expand") == "expand" and hflip_class("move_up") == "move_up"
    assert all(hflip_class(hflip_class(c)) == c for c in SYNTHETIC_CLASSES)


def test_hflip_of_a_rendered_clip_looks_like_the_mirror_class():
    for name in ("move_left", "rotate_cw"):
        clip = render_clip(name, np.random.default_rng(3), SIZE, FRAMES)
        mirrored = clip[:, :, ::-1]
        assert _motion(mirrored) == _motion(render_clip(hflip_class(name), np.random.default_rng(3), SIZE, FRAMES))


def test_same_seed_renders_identical_pixels():
    for name in SYNTHETIC_CLASSES:
        a = render_clip(name, np.random.default_rng(11), SIZE, FRAMES)
        b = render_clip(name, np.random.default_rng(11), SIZE, FRAMES)
        assert a.dtype == np.uint8 and a.shape == (FRAMES, SIZE, SIZE, 3)
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(render_clip("expand", np.random.default_rng(1)), render_clip("expand",
                                                                                          np.random.default_rng(2)))


def test_every_clip_is_a_light_grey_shape_on_a_dark_grey_background():
    # fixed grey levels (see the module docstring): only anti-aliased edges lie in between
    for name in SYNTHETIC_CLASSES:
        clip = render_clip(name, np.random.default_rng(5), SIZE, FRAMES)
        assert (clip == clip[..., :1]).all()  # grey: R = G = B
        assert clip.min() == BACKGROUND and clip.max() == FOREGROUND
        assert np.isin(clip, (BACKGROUND, FOREGROUND)).mean() > 0.8


def test_unknown_class_is_an_error():
    with pytest.raises(SVFormerError, match="unknown synthetic class 'jump'"):
        render_clip("jump", np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------
# single frames are class-independent; motion tells the class


def _shape_stats(frame: np.ndarray, background: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y) circular centroid of the shape (pixels, wrap-aware), its area fraction and principal-axis angle."""
    size = frame.shape[0]
    mask = np.abs(frame.astype(np.float32) - background).sum(-1) > 90
    ys, xs = np.nonzero(mask)
    cx = np.angle(np.exp(2j * np.pi * xs / size).mean()) * size / (2 * np.pi) % size
    cy = np.angle(np.exp(2j * np.pi * ys / size).mean()) * size / (2 * np.pi) % size
    rx = (xs - cx + size / 2) % size - size / 2
    ry = (ys - cy + size / 2) % size - size / 2
    phi = 0.5 * np.arctan2(2 * (rx * ry).mean(), (rx * rx).mean() - (ry * ry).mean())
    return cx, cy, mask.mean(), phi


def _background(clip: np.ndarray) -> np.ndarray:
    return np.median(clip[0].reshape(-1, 3).astype(np.float32), axis=0)


def _frame_features(frame: np.ndarray, background: np.ndarray) -> np.ndarray:
    """What one frame shows: shape area, position and orientation (angles as cos/sin); the grey levels are fixed."""
    cx, cy, area, phi = _shape_stats(frame, background)
    size = frame.shape[0]
    a, b = 2 * np.pi * cx / size, 2 * np.pi * cy / size
    return np.array([area * 10, np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(2 * phi), np.sin(2 * phi)])


def _motion(clip: np.ndarray, step: float = 1.0) -> str:
    """The motion in a clip, measured from pixels: the typical change of area, centroid or angle per time step.

    ``step``: raw frames between consecutive frames of ``clip``.
    """
    size = clip.shape[1]
    stats = np.array([_shape_stats(f, _background(clip)) for f in clip])
    dlog_area = np.median(np.diff(np.log(stats[:, 2])))
    dx = np.median((np.diff(stats[:, 0]) + size / 2) % size - size / 2)
    dy = np.median((np.diff(stats[:, 1]) + size / 2) % size - size / 2)
    dphi = np.mean(np.sign((np.diff(stats[:, 3]) + np.pi / 2) % np.pi - np.pi / 2))
    if abs(dlog_area) > 0.03 * step:  # the area changes steadily (expand/shrink: 0.066 per raw frame)
        return "expand" if dlog_area > 0 else "shrink"
    if max(abs(dx), abs(dy)) > 0.2:
        if abs(dx) > abs(dy):
            return "move_left" if dx < 0 else "move_right"
        return "move_up" if dy < 0 else "move_down"
    return "rotate_cw" if dphi > 0 else "rotate_ccw"


def _nearest_mean_accuracy(train: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> float:
    names = list(train)
    means = np.stack([train[c].mean(0) for c in names])
    hits = total = 0
    for label, c in enumerate(names):
        pred = np.argmin(((test[c][:, None, :] - means[None]) ** 2).sum(-1), axis=1)
        hits += int((pred == label).sum())
        total += len(pred)
    return hits / total


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[np.ndarray]]:
    return {c: [render_clip(c, np.random.default_rng([99, k, i]), SIZE, FRAMES) for i in range(40)]
            for k, c in enumerate(PAIRS)}


def test_single_frames_do_not_reveal_the_class(rendered):
    # a nearest-class-mean classifier on what a frame shows (area, position, orientation),
    # fitted on 20 clips per class and tested on 20 others, stays near chance (1/8) at the first, a middle
    # and the last frame: the per-frame distribution is the same for every class by construction
    for t in (0, FRAMES // 2, FRAMES - 1):
        feats = {c: np.stack([_frame_features(clip[t], _background(clip)) for clip in clips])
                 for c, clips in rendered.items()}
        acc = _nearest_mean_accuracy({c: f[:20] for c, f in feats.items()}, {c: f[20:] for c, f in feats.items()})
        assert acc < 1 / len(PAIRS) + 0.15, f"frame {t}: frame-only accuracy {acc:.2f}"


def test_motion_reveals_the_class(rendered):
    # the same clips that defeat the frame-only classifier: a hand-made detector of area, centroid and
    # principal-axis change between frames (crude on 32-pixel shapes) names the class of >= 90 % of them
    for c, clips in rendered.items():
        measured = [_motion(clip[::2], step=2) for clip in clips]
        assert np.mean([m == c for m in measured]) >= 0.9, (c, measured)


def test_motion_survives_the_models_frame_sampling(rendered):
    # T=8 from a 32-frame clip: time steps 4-5 frames apart; the motion per step is still unambiguous
    clips = {c: [render_clip(c, np.random.default_rng([5, i]), SIZE, 32) for i in range(10)] for c in PAIRS}
    idx = [int(np.floor(k * 31 / 7)) for k in range(8)]
    for c, cs in clips.items():
        assert np.mean([_motion(clip[idx], step=31 / 7) == c for clip in cs]) >= 0.9, c


# ---------------------------------------------------------------------------------------------
# files


def test_generated_set_has_the_documented_layout_and_decodes(tmp_path):
    root = generate_dataset(tmp_path / "syn", num_classes=3, train_per_class=2, test_per_class=1, size=SIZE,
                            frames=FRAMES, seed=4)
    assert (root / "classes.txt").read_text().splitlines() == SYNTHETIC_CLASSES[:3]
    manifest = json.loads((root / "dataset.json").read_text())
    assert manifest["classes"] == SYNTHETIC_CLASSES[:3] and manifest["seed"] == 4
    train, test = clip_paths(root, "train"), clip_paths(root, "test")
    assert [(p.relative_to(root).as_posix(), y) for p, y in test] == [
        ("test/move_left/0000.mp4", 0), ("test/move_right/0000.mp4", 1), ("test/move_up/0000.mp4", 2)]
    assert len(train) == 6
    for path, _ in train + test:
        info = probe_video(path)
        assert (info.codec, info.pix_fmt, info.width, info.frames) == ("h264", "yuv420p", SIZE, FRAMES)
        clip = load_clip(path, time_steps=8, size=SIZE)
        assert clip.shape == (8, 3, SIZE, SIZE)
    # the file holds the rendered clip (up to H.264 / 4:2:0 coding error)
    path, label = test[2]
    rendered = render_clip(SYNTHETIC_CLASSES[label], np.random.default_rng([4, 1, label, 0]), SIZE, FRAMES)
    decoded = decode_frames(path, range(FRAMES)).astype(np.float32)
    assert np.abs(decoded - rendered).mean() < 4.0


def test_same_seed_writes_identical_pixels(tmp_path):
    kwargs = dict(num_classes=2, train_per_class=1, test_per_class=1, size=SIZE, frames=FRAMES, seed=7)
    a = generate_dataset(tmp_path / "a", **kwargs)
    b = generate_dataset(tmp_path / "b", **kwargs)
    c = generate_dataset(tmp_path / "c", **{**kwargs, "seed": 8})
    for (pa, _), (pb, _), (pc, _) in zip(clip_paths(a, "train"), clip_paths(b, "train"), clip_paths(c, "train"),
                                         strict=True):
        fa, fb, fc = (decode_frames(p, range(FRAMES)) for p in (pa, pb, pc))
        np.testing.assert_array_equal(fa, fb)
        assert not np.array_equal(fa, fc)


def test_a_clip_does_not_depend_on_how_many_classes_were_asked_for(tmp_path):
    small = generate_dataset(tmp_path / "two", num_classes=2, train_per_class=1, test_per_class=0, size=SIZE,
                             frames=FRAMES)
    large = generate_dataset(tmp_path / "four", num_classes=4, train_per_class=1, test_per_class=0, size=SIZE,
                             frames=FRAMES)
    rel = "train/move_right/0000.mp4"
    np.testing.assert_array_equal(decode_frames(small / rel, [0, 9]), decode_frames(large / rel, [0, 9]))


def test_existing_set_is_reused_and_a_different_one_refused(tmp_path):
    kwargs = dict(num_classes=2, train_per_class=1, test_per_class=1, size=SIZE, frames=FRAMES)
    root = generate_dataset(tmp_path / "syn", **kwargs)
    stamp = (root / "train/move_left/0000.mp4").stat().st_mtime_ns
    assert generate_dataset(root, **kwargs) == root
    assert (root / "train/move_left/0000.mp4").stat().st_mtime_ns == stamp
    with pytest.raises(SVFormerError, match="other parameters"):
        generate_dataset(root, **{**kwargs, "seed": 1})
    generate_dataset(root, **{**kwargs, "seed": 1}, overwrite=True)
    assert json.loads((root / "dataset.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]  # no temporary folder left behind


def test_write_clip_refuses_odd_sizes_and_leaves_nothing(tmp_path):
    with pytest.raises(SVFormerError, match="must be even"):
        write_clip(tmp_path / "odd.mp4", np.zeros((4, 33, 32, 3), np.uint8))
    with pytest.raises(SVFormerError, match="unsupported extension"):
        write_clip(tmp_path / "clip.gif", np.zeros((4, 32, 32, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []
