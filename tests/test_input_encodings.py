"""Every input encoding end to end through the CLI: train a tiny model for one epoch, export it, simulate a
held-out file with the bundle; the simulator must see the input exactly as training encoded it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_path
from fixtures_models import single_thread  # noqa: F401
from svformer_deploy.deploy.cli import main
from svformer_deploy.export.bundle import load_bundle
from svformer_deploy.svformer.checkpoint import load_checkpoint
from svformer_deploy.svformer.data.datasets import InputSpec
from svformer_deploy.svformer.data.events import EVENT_DTYPE

TINY = ["--arch", "3stg", "--size", "16", "-T", "4", "--dims", "8,16,32", "--depths", "1,1,1", "--head-dim", "8",
        "--first-patch", "2", "--epochs", "1", "-b", "2", "--warmup-epochs", "1"]
SYNTHETIC = ["--synthetic", "--synthetic-classes", "2", "--synthetic-train", "2", "--synthetic-test", "1",
             "--synthetic-size", "32", "--synthetic-frames", "16", "--frame-stride", "2"]


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def drifting_events(label: int, seed: int, n: int = 300, sensor: int = 16) -> np.ndarray:
    """Events drifting left (label 0) or right (label 1) over 0.1 s on a ``sensor`` x ``sensor`` pixel array."""
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, 100_000, n))
    drift = (ev["t"] / 100_000 * (sensor - 6)).astype(int)
    ev["x"] = np.clip(rng.integers(0, 3, n) + (drift if label else sensor - 6 - drift), 0, sensor - 1)
    ev["y"], ev["p"] = rng.integers(0, sensor, n), rng.integers(0, 2, n)
    return ev


def write_nmnist_bin(path: Path, ev: np.ndarray) -> None:
    """The original N-MNIST binary: 5 bytes per event, x, y, then polarity (1 bit) and t in µs (23 bits)."""
    raw = np.zeros((len(ev), 5), np.uint8)
    t = ev["t"].astype(np.int64)
    raw[:, 0], raw[:, 1] = ev["x"], ev["y"]
    raw[:, 2] = (ev["p"].astype(np.int64) << 7) | ((t >> 16) & 0x7F)
    raw[:, 3], raw[:, 4] = (t >> 8) & 0xFF, t & 0xFF
    path.write_bytes(raw.tobytes())


def npy_event_set(root: Path) -> tuple[list[str], Path]:
    """``root/{train,test}/<class>/<i>.npy``: 2 + 2 training and 1 + 1 held-out recordings."""
    for split, count in (("train", 2), ("test", 1)):
        for label, name in enumerate(("left", "right")):
            for i in range(count):
                path = root / split / name / f"{i}.npy"
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, drifting_events(label, 100 * label + i + (50 if split == "test" else 0)))
    return ["--events", str(root)], root / "test" / "right" / "0.npy"


def nmnist_set(root: Path) -> tuple[list[str], Path]:
    """The N-MNIST small layout (``<n>.bs2``, ``train1K.txt``, ``test100.txt``) with 4 + 2 written recordings."""
    root.mkdir(parents=True)
    labels = {1: 0, 2: 1, 3: 0, 4: 1, 60001: 0, 60002: 1}
    for n, label in labels.items():
        write_nmnist_bin(root / f"{n}.bs2", drifting_events(label, n, sensor=34))
    (root / "train1K.txt").write_text("#sample #class\n" + "".join(f"{n} {y}\n" for n, y in labels.items() if n < 9))
    (root / "test100.txt").write_text("#sample #class\n60001 0\n60002 1\n")
    return ["--nmnist", str(root)], root / "60002.bs2"


def real_nmnist_set(root: Path) -> tuple[list[str], Path]:
    """4 + 2 real N-MNIST recordings from $SVFORMER_DATA in the small layout (copied to the test's tmp folder)."""
    src = data_path("events", "nmnist-small")
    root.mkdir(parents=True)
    train = [line.split() for line in (src / "train1K.txt").read_text().splitlines()[1:5]]
    test = [line.split() for line in (src / "test100.txt").read_text().splitlines()[1:3]]
    for n, _ in train + test:
        shutil.copy(src / f"{n}.bs2", root)
    (root / "train1K.txt").write_text("#sample #class\n" + "".join(f"{n} {y}\n" for n, y in train))
    (root / "test100.txt").write_text("#sample #class\n" + "".join(f"{n} {y}\n" for n, y in test))
    return ["--nmnist", str(root)], root / f"{test[0][0]}.bs2"


def synthetic_set(root: Path, video_input: str) -> tuple[list[str], Path]:
    return [*SYNTHETIC, "--video-input", video_input], root / "run" / "synthetic-data" / "test" / "move_left" / "0000.mp4"


CASES = {
    "video": (lambda tmp: synthetic_set(tmp, "rgb"), "video", 3),
    "video-events": (lambda tmp: synthetic_set(tmp, "events"), "video", 2),
    "events": (lambda tmp: npy_event_set(tmp / "events"), "events", 2),
    "nmnist": (lambda tmp: nmnist_set(tmp / "nmnist"), "events", 2),
    "nmnist-real": (lambda tmp: real_nmnist_set(tmp / "nmnist"), "events", 2),
}
ENCODING = {"video": "video", "video-events": "video-events", "events": "events", "nmnist": "events",
            "nmnist-real": "events"}


@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.data) if c.endswith("-real") else c
                                  for c in CASES])
def test_each_input_encoding_trains_exports_and_simulates(case: str, tmp_path: Path, capsys) -> None:
    make, file_kind, channels = CASES[case]
    source, clip = make(tmp_path)
    code, out, err = cli(capsys, "train", *source, *TINY, "-o", tmp_path / "run", "--json", "--quiet")
    assert code == 0, err
    ckpt_path = Path(json.loads(out)["checkpoint"])
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt.preprocessing["input"] == ENCODING[case] and ckpt.config.in_channels == channels

    code, out, err = cli(capsys, "export", ckpt_path, "-o", tmp_path / "m.svfd", "--targets", "nir", "--json",
                         "--quiet")
    assert code == 0, err
    inputs = json.loads(out)["inputs"]
    assert inputs["kind"] == ENCODING[case] and inputs["check"].startswith("held-out split"), inputs

    code, out, err = cli(capsys, "simulate", f"--{file_kind}", clip, "--model", tmp_path / "m.svfd", "--out",
                         tmp_path / "runs", "--json", "--quiet")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["input_kind"] == file_kind and doc["input_encoding"] == ENCODING[case]
    assert doc["input_shape"] == [4, channels, 16, 16] and len(doc["top5"]) == min(5, len(ckpt.class_names))

    # the bundle reads its input as training encoded it, and the simulator's logits are the model's on that clip
    bundle = load_bundle(tmp_path / "m.svfd")
    spec = InputSpec.from_preprocessing(bundle.manifest["preprocessing"], ckpt.config)
    assert spec == InputSpec.from_preprocessing(ckpt.preprocessing, ckpt.config)
    x = spec.load_clip(clip)
    assert x.shape == (4, channels, 16, 16) and x.abs().sum() > 0
    with torch.no_grad():
        want = ckpt.build_model().double().forward_sequence(x[:, None].double())[0]
    np.testing.assert_allclose(doc["logits"], want.numpy(), atol=1e-4)

