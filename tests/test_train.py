"""Training: optimiser groups, schedule, checkpoints and metrics every epoch, --resume, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_in_process as run_cli
from svformer_deploy.svformer.checkpoint import load_checkpoint
from svformer_deploy.svformer.data.events import EVENT_DTYPE
from svformer_deploy.svformer.train import TrainConfig, lr_at, param_groups, train_model
from svformer_deploy.svformer.variants import create_model

TINY = ["--arch", "3stg", "--size", "16", "-T", "3", "--dims", "8,16,32", "--depths", "1,1,1", "--head-dim", "8",
        "--first-patch", "2"]
TINY_MODEL = {"img_size": 16, "time_steps": 3, "dims": [8, 16, 32], "depths": [1, 1, 1], "head_dim": 8,
              "first_patch": 2}


def write_events(path: Path, label: int, seed: int) -> None:
    """A recording whose events drift left (label 0) or right (label 1) over time."""
    rng = np.random.default_rng(seed)
    n = 300
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, 100_000, n))
    drift = (ev["t"] / 100_000 * 10).astype(int)
    ev["x"] = np.clip(rng.integers(3, 6, n) + (drift if label else 10 - drift), 0, 15)
    ev["y"], ev["p"] = rng.integers(0, 16, n), rng.integers(0, 2, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, ev)


@pytest.fixture
def event_set(tmp_path: Path) -> Path:
    """train/: 3 + 2 recordings (5 clips: with batch 2 the last batch holds one clip), test/: 1 + 1."""
    root = tmp_path / "events"
    for split, counts in (("train", (3, 2)), ("test", (1, 1))):
        for label, (name, count) in enumerate(zip(("left", "right"), counts, strict=True)):
            for i in range(count):
                seed = 100 * label + i + (50 if split == "test" else 0)
                write_events(root / split / name / f"{i}.npy", label, seed)
    return root


def test_param_groups_decay_weights_and_plif_scalars_but_not_bn_or_biases() -> None:
    model = create_model("3stg", img_size=16, time_steps=2, dims=(8, 16, 32), head_dim=8, num_classes=3)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    spared = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "blocks1.0.act1.w" in decayed and model.get_parameter("blocks1.0.act1.w").ndim == 0
    assert "head.weight" in decayed and "dwconv_bf_head.weight" in decayed
    assert "head.bias" in spared and "dwconv_bn.weight" in spared and "patch_embed1.norm.weight" in spared
    assert len(decayed) + len(spared) == len(list(model.parameters()))


def test_schedule_warms_up_linearly_then_follows_a_cosine_to_min_lr() -> None:
    cfg = TrainConfig(source="synthetic", epochs=10, lr=1e-2, warmup_epochs=2, warmup_lr=1e-6, min_lr=1e-5)
    assert lr_at(cfg, 0) == pytest.approx(1e-6)
    assert lr_at(cfg, 1) == pytest.approx((1e-2 + 1e-6) / 2)
    assert lr_at(cfg, 2) == pytest.approx(1e-2)
    assert lr_at(cfg, 6) == pytest.approx(1e-5 + (1e-2 - 1e-5) / 2)
    assert lr_at(cfg, 10) == pytest.approx(1e-5)


def test_training_writes_checkpoints_and_metrics_and_resume_continues(event_set: Path, tmp_path: Path,
                                                                     capsys) -> None:
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", "--events", event_set, *TINY, "--epochs", "1", "-b", "2",
                                "--warmup-epochs", "1", "-o", out, "--json", "--quiet")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["metrics"]["epoch"] == 1 and result["class_names"] == ["left", "right"]
    assert result["metrics"]["skipped_batches"] == 1  # the 5th clip alone cannot pass BatchNorm3d
    assert sorted(p.name for p in out.iterdir()) == ["epoch-001.pt", "last.pt", "metrics.jsonl", "summary.json"]
    ckpt = load_checkpoint(out / "epoch-001.pt")  # weights_only=True inside
    assert ckpt.training["epoch"] == 1 and ckpt.config.in_channels == 2 and ckpt.class_names == ["left", "right"]
    assert ckpt.preprocessing["input"] == "events" and ckpt.preprocessing["time_steps"] == 3
    assert ckpt.training["optimizer"]["state"], "optimizer state must be stored for --resume"
    torch.load(out / "last.pt", weights_only=True)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1
    assert {"epoch", "loss", "lr", "train_acc", "test_top1", "test_top5", "seconds"} <= set(lines[0])

    code, stdout, err = run_cli(capsys, "train", "--resume", out / "last.pt", "--epochs", "2", "--json", "--quiet")
    assert code == 0, err
    resumed = json.loads(stdout)
    assert resumed["resumed_from"] == 1 and [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][0] == lines[0]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert load_checkpoint(out / "last.pt").training["epoch"] == 2 and (out / "epoch-002.pt").exists()

    # the interrupted-and-resumed run ends with exactly the weights of an uninterrupted one
    straight = train_model(TrainConfig(source="events", data=str(event_set), arch="3stg", model=TINY_MODEL,
                                       epochs=2, batch_size=2, warmup_epochs=1, out_dir=str(tmp_path / "straight"),
                                       quiet=True))
    a = load_checkpoint(straight.checkpoint).state_dict
    b = load_checkpoint(out / "last.pt").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("(see:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def test_empty_dataset_folder_through_the_cli_is_one_error_line_and_exit_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli(capsys, "train", "--videos", tmp_path / "empty", "--arch", "3stg", "-o", tmp_path / "o")
    assert code == 2 and out == ""
    assert "empty dataset folder" in _one_error_line(err) and str(tmp_path / "empty") in err


def test_unknown_label_through_the_cli_is_one_error_line_and_exit_2(event_set: Path, tmp_path: Path, capsys) -> None:
    (event_set / "train" / "classes.txt").write_text("left\n")
    code, _, err = run_cli(capsys, "train", "--events", event_set, *TINY, "-o", tmp_path / "o")
    assert code == 2 and "right are not among" in _one_error_line(err)


def test_unreadable_event_files_through_the_cli_exit_2(tmp_path: Path, capsys) -> None:
    for split in ("train", "test"):
        for i in range(2):
            (tmp_path / "bad" / split / "a" / f"{i}.bs2").parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "bad" / split / "a" / f"{i}.bs2").write_bytes(b"\x01\x02\x03")
    code, _, err = run_cli(capsys, "train", "--events", tmp_path / "bad", *TINY, "-o", tmp_path / "o")
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error:") and "every file is unreadable" in lines[-1]
    assert all(line.startswith("warning: skipping") for line in lines[:-1])  # each bad file named once
    assert "5-byte events" in err and str(tmp_path / "bad" / "train" / "a" / "0.bs2") in err


@pytest.mark.parametrize("args, message", [
    (["--synthetic", "--arch", "3stg", "-b", "1"], "batch size must be >= 2"),
    (["--arch", "3stg"], "give a data source"),
    (["--synthetic", "--nmnist", "x", "--arch", "3stg"], "give one data source"),
    (["--synthetic"], "--arch"),
])
def test_bad_training_options_are_one_error_line_and_exit_2(tmp_path: Path, capsys, args, message) -> None:
    code, _, err = run_cli(capsys, "train", *args, "-o", tmp_path / "o")
    assert code == 2 and message in _one_error_line(err)


def test_resume_refuses_model_options_and_non_training_checkpoints(tmp_path: Path, capsys) -> None:
    from svformer_deploy.svformer.checkpoint import save_checkpoint

    plain = tmp_path / "plain.pt"
    save_checkpoint(plain, create_model("3stg", img_size=16, time_steps=2, dims=(8, 16, 32), head_dim=8,
                                        num_classes=2))
    code, _, err = run_cli(capsys, "train", "--resume", plain, "--dims", "8,8,8")
    assert code == 2 and "cannot change" in _one_error_line(err)
    code, _, err = run_cli(capsys, "train", "--resume", plain)
    assert code == 2 and "not a training checkpoint" in _one_error_line(err)


def test_synthetic_set_trains_from_emulated_events_through_the_cli(tmp_path: Path, capsys) -> None:
    code, stdout, err = run_cli(capsys, "train", "--synthetic", "--synthetic-classes", "2", "--synthetic-train", "2",
                                "--synthetic-test", "1", "--synthetic-size", "32", "--synthetic-frames", "16",
                                "--video-input", "events", *TINY, "--frame-stride", "2", "--epochs", "1", "-b", "2",
                                "-o", tmp_path / "syn", "--json", "--quiet")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["class_names"] == ["move_left", "move_right"] and result["train_data"]["samples"] == 4
    ckpt = load_checkpoint(result["checkpoint"])
    assert ckpt.config.in_channels == 2 and ckpt.preprocessing["input"] == "video-events"
    assert ckpt.preprocessing["frame_stride"] == 2
    assert (tmp_path / "syn" / "synthetic-data" / "classes.txt").is_file()
