"""Datasets: the N-MNIST, folder, CSV and synthetic layouts; bad files skipped and counted; seeded order."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from svformer_deploy.svformer.data.datasets import (
    Augment,
    BadSample,
    InputSpec,
    SeededSampler,
    collate,
    csv_dataset,
    folder_dataset,
    make_loader,
    nmnist_dataset,
    split_holdout,
    synthetic_dataset,
)
from svformer_deploy.svformer.data.events import EVENT_DTYPE
from svformer_deploy.svformer.errors import SVFormerError

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SVFORMER_DATA", ROOT.parent / "shared" / "data"))
NMNIST = DATA / "events" / "nmnist-small"
EVENTS = InputSpec(kind="events", time_steps=4, size=34)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set SVFORMER_DATA to the shared data folder)")
    return path


def write_events(path: Path, seed: int, n: int = 200, size: int = 16) -> Path:
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, EVENT_DTYPE)
    ev["x"], ev["y"] = rng.integers(0, size, n), rng.integers(0, size, n)
    ev["t"], ev["p"] = np.sort(rng.integers(0, 100_000, n)), rng.integers(0, 2, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, ev)
    return path


def event_folder(root: Path, classes=("a", "b"), per_class: int = 3) -> Path:
    for k, c in enumerate(classes):
        for i in range(per_class):
            write_events(root / c / f"{i}.npy", seed=10 * k + i)
    return root


@pytest.fixture
def small_nmnist(tmp_path: Path) -> Path:
    """A 6-sample copy of the real N-MNIST layout with one corrupt file and one missing file."""
    src = need(NMNIST)
    dst = tmp_path / "nmnist"
    dst.mkdir()
    for n in (1, 2, 3, 4, 60001, 60002):
        shutil.copy(src / f"{n}.bs2", dst)
    (dst / "3.bs2").write_bytes(b"\x00\x01\x02")  # truncated
    (dst / "train1K.txt").write_text("#sample #class\n1\t5\n2\t0\n3\t4\n4\t1\n5\t9\n")  # 5.bs2 is missing
    (dst / "test100.txt").write_text("#sample #class\n60001\t7\n60002\t2\n")
    return dst


@pytest.mark.data
def test_nmnist_small_layout_has_1000_train_and_100_test_samples() -> None:
    train = nmnist_dataset(need(NMNIST), "train", EVENTS)
    test = nmnist_dataset(NMNIST, "test", EVENTS)
    assert (len(train), len(test)) == (1000, 100)
    assert train.class_names == [str(i) for i in range(10)]
    assert train.samples[0] == (str(NMNIST / "1.bs2"), 5)
    clip, label = test[0]
    assert clip.shape == (4, 2, 34, 34) and label == 7


@pytest.mark.data
def test_bad_files_in_a_dataset_are_reported_skipped_and_counted(small_nmnist: Path, capsys) -> None:
    ds = nmnist_dataset(small_nmnist, "train", EVENTS).scan()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert any(str(small_nmnist / "3.bs2") in line and "5-byte events" in line for line in err)
    assert any(str(small_nmnist / "5.bs2") in line and "no such event file" in line for line in err)
    assert len(ds) == 3
    summary = ds.summary()
    assert summary["samples"] == 3 and summary["skipped"] == 2


@pytest.mark.data
def test_a_bad_file_met_while_loading_is_left_out_of_the_batch(small_nmnist: Path, capsys) -> None:
    ds = nmnist_dataset(small_nmnist, "train", EVENTS)  # not scanned: the bad files surface in __getitem__
    items = [ds[i] for i in range(len(ds))]
    bad = [it for it in items if isinstance(it, BadSample)]
    assert sorted(Path(b.path).name for b in bad) == ["3.bs2", "5.bs2"]
    batch = collate(items)
    assert batch.clips.shape == (3, 4, 2, 34, 34) and batch.labels.tolist() == [5, 0, 1]
    for b in batch.bad:
        ds.skip(b.path, b.reason)
    assert len(ds) == 3 and len(ds.skipped) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2


def test_every_file_bad_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "ev"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.npy").write_bytes(b"not numpy")
    ds = folder_dataset(root, EVENTS)
    with pytest.raises(SVFormerError, match="every file is unreadable"):
        ds.scan()


def test_empty_dataset_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SVFormerError, match="empty dataset folder"):
        folder_dataset(tmp_path / "empty", EVENTS)
    (tmp_path / "classes_only" / "a").mkdir(parents=True)
    with pytest.raises(SVFormerError, match="empty dataset folder"):
        folder_dataset(tmp_path / "classes_only", EVENTS)


def test_class_folder_not_in_classes_txt_is_an_unknown_label(tmp_path: Path) -> None:
    root = event_folder(tmp_path / "ev", classes=("a", "b", "zzz"))
    (root / "classes.txt").write_text("a\nb\n")
    with pytest.raises(SVFormerError, match="zzz are not among"):
        folder_dataset(root, EVENTS)


def test_unknown_label_in_the_nmnist_label_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "train1K.txt").write_text("#sample #class\n1\t12\n")
    with pytest.raises(SVFormerError, match="unknown label 12"):
        nmnist_dataset(tmp_path, "train", EVENTS)


def test_csv_lists_resolve_paths_and_refuse_unknown_labels(tmp_path: Path) -> None:
    event_folder(tmp_path / "ev")
    (tmp_path / "list.csv").write_text("path,label\nev/a/0.npy,a\nev/b/1.npy,b\nev/a/2.npy,a\n")
    ds = csv_dataset(tmp_path / "list.csv", EVENTS)
    assert ds.class_names == ["a", "b"] and [y for _, y in ds.samples] == [0, 1, 0]
    assert ds.samples[0][0] == str(tmp_path / "ev" / "a" / "0.npy")
    (tmp_path / "test.csv").write_text("ev/a/1.npy,c\n")
    with pytest.raises(SVFormerError, match="unknown label 'c'"):
        csv_dataset(tmp_path / "test.csv", EVENTS, class_names=ds.class_names)


def test_holdout_split_is_stratified_and_seeded(tmp_path: Path) -> None:
    ds = folder_dataset(event_folder(tmp_path / "ev", per_class=5), EVENTS, train=True)
    train, held = split_holdout(ds, 0.4, seed=3)
    assert len(train) == 6 and len(held) == 4 and not held.train and train.train
    assert sorted(y for _, y in held.samples) == [0, 0, 1, 1]
    again, _ = split_holdout(ds, 0.4, seed=3)
    assert again.samples == train.samples


def test_shuffling_depends_only_on_seed_and_epoch() -> None:
    a, b = SeededSampler(50, seed=7), SeededSampler(50, seed=7)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(1)
    assert list(a) != list(b)
    assert list(SeededSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_worker_processes_give_the_same_augmented_batches(tmp_path: Path) -> None:
    ds = folder_dataset(event_folder(tmp_path / "ev", per_class=4), InputSpec(kind="events", time_steps=3, size=16),
                        train=True, augment=Augment(erase=0.5, shift=2), seed=5)
    serial = list(make_loader(ds, 3, epoch=2, shuffle=True, workers=0))
    parallel = list(make_loader(ds, 3, epoch=2, shuffle=True, workers=2))
    assert len(serial) == len(parallel) == 3
    for s, p in zip(serial, parallel, strict=True):
        assert torch.equal(s.clips, p.clips) and torch.equal(s.labels, p.labels)
    other = list(make_loader(ds, 3, epoch=3, shuffle=True, workers=0))
    assert not all(torch.equal(s.clips, o.clips) for s, o in zip(serial, other, strict=True))


def test_shift_and_erase_keep_the_clip_shape_and_flip_mirrors() -> None:
    clip = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).reshape(2, 2, 4, 4)
    rng = np.random.default_rng(0)
    assert torch.equal(Augment(flip=1.0)(clip, rng, noise_fill=False), clip.flip(-1))
    shifted = Augment(shift=1)(clip, np.random.default_rng(1), noise_fill=False)
    assert shifted.shape == clip.shape and shifted.sum() <= clip.sum()


def test_synthetic_layout_reads_classes_from_classes_txt(tmp_path: Path) -> None:
    from svformer_deploy.svformer.data.synthetic import generate_dataset

    root = generate_dataset(tmp_path / "syn", num_classes=2, train_per_class=2, test_per_class=1, size=32, frames=16)
    spec = InputSpec(kind="video", time_steps=4, size=32)
    train = synthetic_dataset(root, "train", spec, train=True)
    test = synthetic_dataset(root, "test", spec)
    assert train.class_names == (root / "classes.txt").read_text().split()
    assert (len(train), len(test)) == (4, 2)
    clip, label = train[0]
    assert clip.shape == (4, 3, 32, 32) and label == 0
    # a text file named .mp4 inside the set is skipped and counted, not fatal
    (root / "train" / train.class_names[1] / "9999.mp4").write_text("not a video")
    again = synthetic_dataset(root, "train", spec).scan()
    assert len(again) == 4 and again.summary()["skipped"] == 1
