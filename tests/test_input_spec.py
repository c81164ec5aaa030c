"""InputSpec: the one reading of a checkpoint's / bundle's ``preprocessing``, and its file loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from svformer_deploy.svformer.checkpoint import default_preprocessing
from svformer_deploy.svformer.config import SVFormerConfig
from svformer_deploy.svformer.data.datasets import InputSpec
from svformer_deploy.svformer.data.events import EVENT_DTYPE
from svformer_deploy.svformer.data.synthetic import generate_dataset
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.variants import variant_config

RGB = variant_config("3stg").replace(in_channels=3, img_size=32, time_steps=4)
DVS = variant_config("3stg").replace(img_size=32, time_steps=4)


@pytest.mark.parametrize("spec", [
    InputSpec("video", 4, 32, frame_stride=2, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    InputSpec("video", 4, 32),
    InputSpec("events", 4, 32, split="time", fit="pad", sensor_size=(34, 34)),
    InputSpec("video-events", 4, 32, frame_stride=3),
])
def test_preprocessing_round_trips_through_the_spec(spec: InputSpec) -> None:
    cfg = RGB if spec.kind == "video" else DVS
    assert InputSpec.from_preprocessing(spec.to_preprocessing(), cfg) == spec


def test_missing_preprocessing_means_the_configs_default() -> None:
    assert InputSpec.from_preprocessing(None, DVS) == InputSpec.from_preprocessing(default_preprocessing(DVS), DVS)
    assert InputSpec.from_preprocessing({}, RGB).kind == "video"
    assert InputSpec.from_preprocessing({}, DVS).kind == "events"


@pytest.mark.parametrize("prep, cfg, message", [
    ({"input": "audio"}, RGB, "input 'audio' is unknown"),
    ({"input": "video", "size": 48}, RGB, "does not match"),
    ({"input": "video", "time_steps": 8}, RGB, "does not match"),
    ({"input": "video"}, DVS, "says video input (3 channels) but the model takes 2"),
    ({"input": "video-events"}, RGB, "says video-events input (2 channels) but the model takes 3"),
    ({"input": "video", "frame_stride": 0}, RGB, "frame_stride must be an integer in 1..65536"),
    ({"input": "video", "mean": "grey"}, RGB, "mean must be a finite number"),
    ({"input": "video", "std": [0.2, 0.0, 0.2]}, RGB, "std must be > 0"),
    ({"input": "video", "mean": [0.1, 0.2]}, RGB, "one value or one per RGB channel"),
    ({"input": "events", "split": "sideways"}, DVS, "event split must be one of"),
    ({"input": "events", "sensor_size": [34]}, DVS, "sensor_size must be [width, height]"),
    (["video"], RGB, "must be a mapping"),
])
def test_malformed_or_inconsistent_preprocessing_is_refused(prep, cfg: SVFormerConfig, message: str) -> None:
    with pytest.raises(SVFormerError, match="^model.svfd: ") as e:
        InputSpec.from_preprocessing(prep, cfg, where="model.svfd")
    assert message in str(e.value)


def test_video_events_views_equal_the_training_clip(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "syn", num_classes=1, train_per_class=1, test_per_class=0, size=32,
                            frames=16, seed=0)
    clip = next(Path(root).rglob("*.mp4"))
    spec = InputSpec("video-events", time_steps=4, size=32, frame_stride=2)
    views, indices, details = spec.load_views(clip, 2, 1)
    assert views.shape == (2, 4, 2, 32, 32) and len(indices[0]) == 5 and details["frames"] == 16
    one, _, _ = spec.load_views(clip)
    assert torch.equal(one[0], spec.load_clip(clip)) and one[0].sum() > 0


def test_event_arrays_load_as_count_frames_with_one_view(tmp_path: Path) -> None:
    ev = np.zeros(40, EVENT_DTYPE)
    ev["x"], ev["y"], ev["t"], ev["p"] = np.arange(40) % 8, 3, np.arange(40) * 10, np.arange(40) % 2
    np.save(tmp_path / "r.npy", ev)
    spec = InputSpec("events", time_steps=4, size=8)
    views, indices, details = spec.load_views(tmp_path / "r.npy")
    assert views.shape == (1, 4, 2, 8, 8) and indices == [None] and details["events_framed"] == 40
    with pytest.raises(SVFormerError, match="one view"):
        spec.load_views(tmp_path / "r.npy", 2, 1)


def test_calibration_folders_of_event_arrays_are_framed_by_the_spec(tmp_path: Path) -> None:
    from svformer_deploy.export.passes.quantize import load_calibration

    ev = np.zeros(40, EVENT_DTYPE)
    ev["x"], ev["y"], ev["t"], ev["p"] = np.arange(40) % 8, 3, np.arange(40) * 10, 1
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", ev)
    np.save(tmp_path / "frames.npy", np.zeros((4, 2, 8, 8), np.float32))  # a tensor file stays a tensor
    spec = InputSpec("events", time_steps=4, size=8)
    x = load_calibration(tmp_path, spec)
    assert x.shape == (4, 4, 2, 8, 8)
    assert torch.equal(x[:, 0], spec.load_clip(tmp_path / "0.npy")) and x[:, 3].sum() == 0
