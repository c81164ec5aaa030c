"""CPU training of SVFormer models (the authors' recipe scaled down to a CPU).

- **Optimiser**: AdamW (betas 0.9/0.999, eps 1e-8). No weight decay on BatchNorm parameters and on
  1-D parameters (biases); every other parameter, including the 0-D PLIF scalar ``w``, is decayed
  (as the authors' ``get_param_groups`` does).
- **Schedule**: per iteration, linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_epochs``,
  then cosine decay to ``min_lr`` at the end of ``epochs`` (a function of the fractional epoch, so
  ``--resume`` continues exactly).
- **Loss**: cross-entropy with label smoothing (0.1); gradient-norm clipping (20).
- **Neurons**: the model resets every membrane at the start of each forward call, so every batch
  starts from rest (``functional.reset_net`` per batch).
- **Augmentation** (training only): videos get the random window start, short-side jitter and
  random crop of :func:`svformer.data.video.load_clip`; then :class:`svformer.data.datasets.Augment`
  (horizontal flip, random erasing, random shift for event frames). Flip is off by default where it
  changes the label (digits; the synthetic set's left/right and clockwise/anticlockwise motions).
- **Caching**: when all clips fit in 2 GiB (or with ``cache=True``) every file is decoded once into
  memory (:meth:`svformer.data.datasets.ClipDataset.preload`); cached videos are then augmented as
  tensors, with a random shift of size/16 pixels in place of the decode-time random crop.
- **BatchNorm3d** in the head needs at least 2 clips per training batch: a last batch holding one
  clip (after bad files are left out) is skipped and counted; ``batch_size`` must be >= 2.
- **Several processes** (``--nproc N`` or ``torchrun``; :mod:`svformer.distributed`): DDP with
  ``batch_size`` clips per rank (global batch N x ``batch_size``), a ``DistributedSampler`` shard
  per rank and epoch, BatchNorm statistics over the global batch; rank 0 alone evaluates, writes
  every output and shows progress. Checkpoints hold nothing specific to N (``--resume`` with any N).
- **Outputs** (``out_dir``, every file written atomically): ``epoch-NNN.pt`` after every epoch and
  ``last.pt`` (the checkpoint format of :mod:`svformer.checkpoint`, loadable with
  ``weights_only=True``; its ``training`` dict holds the epoch, the step, the metrics history, the
  optimiser state, the schedule state and this config), ``metrics.jsonl`` (one JSON object per
  epoch: ``epoch``, ``loss``, ``lr``, ``train_acc``, ``test_top1``, ``test_top5``, ``test_loss``,
  ``seconds``, ...) and ``summary.json`` (the :class:`TrainResult`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .data.datasets import (
    Augment,
    ClipDataset,
    InputSpec,
    csv_dataset,
    folder_dataset,
    make_loader,
    nmnist_dataset,
    split_holdout,
    synthetic_dataset,
)
from .errors import SVFormerError
from .fileio import write_json_atomic, write_text_atomic
from .model import SVFormer
from .progress import bar, set_quiet
from .variants import variant_config

SOURCES = ("videos", "csv", "nmnist", "events", "synthetic")


@dataclass
class TrainConfig:
    """Everything one training run needs (plain data; stored in every checkpoint for ``--resume``).

    Data: ``source`` is one of :data:`SOURCES`; ``data`` the folder/CSV (``videos``, ``events``: a folder
    per class, or ``train/`` and ``test/`` folders of that layout; ``csv``: a ``path,label`` list;
    ``nmnist``: the N-MNIST small folder; ``synthetic``: the generated set's folder, created there when
    missing). ``test_data`` names a separate held-out folder/CSV; otherwise ``holdout`` of every class
    is held out (seeded). Model: ``arch`` plus ``model`` overrides (any :class:`SVFormerConfig` field);
    ``in_channels`` and ``num_classes`` follow the data. Times are in epochs; ``lr`` is the peak rate.
    """

    source: str = "synthetic"
    data: str | None = None
    test_data: str | None = None
    holdout: float = 0.2
    arch: str = "3stg"
    model: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 16
    lr: float = 5e-3
    min_lr: float = 1e-6
    warmup_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    clip_grad: float | None = 20.0
    flip: float | None = None
    erase: float = 0.25
    shift: int | None = None
    frame_stride: int = 4
    video_input: str = "rgb"
    event_split: str = "number"
    event_fit: str = "auto"
    sensor_size: tuple[int, int] | None = None
    synthetic: dict[str, Any] = field(default_factory=dict)
    cache: bool | None = None
    seed: int = 0
    workers: int = 0
    eval_every: int = 1
    keep: int | None = None
    out_dir: str = "train-out"
    resume: str | None = None
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise SVFormerError(f"unknown data source {self.source!r}; use one of {', '.join(SOURCES)}")
        if self.source != "synthetic" and not self.data:
            raise SVFormerError(f"training on {self.source} needs a data path")
        if self.epochs < 1:
            raise SVFormerError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise SVFormerError(f"batch size must be >= 2 for training (the head's BatchNorm3d), got {self.batch_size}")
        if not self.lr > 0:
            raise SVFormerError(f"learning rate must be > 0, got {self.lr}")
        if self.workers < 0:
            raise SVFormerError(f"workers must be >= 0, got {self.workers}")
        if self.video_input not in ("rgb", "events"):
            raise SVFormerError(f"video input must be 'rgb' or 'events', got {self.video_input!r}")
        if self.sensor_size is not None:
            self.sensor_size = (int(self.sensor_size[0]), int(self.sensor_size[1]))

    @property
    def kind(self) -> str:
        """The :class:`InputSpec` kind: ``events`` (event files), ``video`` (RGB frames) or ``video-events``."""
        if self.source in ("nmnist", "events"):
            return "events"
        return "video-events" if self.video_input == "events" else "video"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (and ``weights_only``-loadable) form: tuples become lists."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class TrainResult:
    """What a run produced: final metrics, the metrics of every epoch, and the files written."""

    out_dir: str
    checkpoint: str
    epochs: int
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    class_names: list[str]
    train_data: dict[str, Any]
    test_data: dict[str, Any]
    params: int
    seconds: float
    resumed_from: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- schedule and optimiser ----------------------------------------------------------------------
def lr_at(cfg: TrainConfig, epoch: float) -> float:
    """Learning rate at fractional epoch ``epoch`` (0 = start): linear warm-up, then cosine to ``min_lr``."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * epoch / cfg.warmup_epochs
    span = max(cfg.epochs - cfg.warmup_epochs, 1e-12)
    progress = min(max((epoch - cfg.warmup_epochs) / span, 0.0), 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: BN parameters and 1-D parameters get no decay; all others (incl. 0-D PLIF w) do."""
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if id(p) in bn_params or p.ndim == 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.warmup_lr, betas=(0.9, 0.999), eps=1e-8)


# -- data --------------------------------------------------------------------------------------
def input_spec(cfg: TrainConfig, model_cfg) -> InputSpec:
    return InputSpec(kind=cfg.kind, time_steps=model_cfg.time_steps, size=model_cfg.img_size,
                     frame_stride=cfg.frame_stride, split=cfg.event_split, fit=cfg.event_fit,
                     sensor_size=cfg.sensor_size)


CACHE_LIMIT_BYTES = 2 * 1024**3


def augment_for(cfg: TrainConfig, size: int, cached: bool) -> Augment:
    """The training augmentation: flips only for real videos by default; random shifts for event frames
    (2 px) and for cached video clips (size/16 px, standing in for the decode-time random crop)."""
    flip = cfg.flip if cfg.flip is not None else (0.5 if cfg.source in ("videos", "csv") else 0.0)
    if cfg.shift is not None:
        shift = cfg.shift
    elif cfg.kind != "video":
        shift = 2
    else:
        shift = max(1, round(size / 16)) if cached else 0
    return Augment(flip=flip, erase=cfg.erase, shift=shift)


def synthetic_root(cfg: TrainConfig) -> Path:
    return Path(cfg.data) if cfg.data else Path(cfg.out_dir) / "synthetic-data"


def ensure_synthetic(cfg: TrainConfig) -> Path:
    """The synthetic set's folder: an existing one is reused as is when no generator options are given;
    otherwise it is generated (deterministically from the seed; an existing set must have the same options)."""
    root = synthetic_root(cfg)
    opts = {k: v for k, v in cfg.synthetic.items() if v is not None}
    if (root / "classes.txt").is_file() and not opts:
        return root
    from .data.synthetic import generate_dataset

    opts.setdefault("seed", cfg.seed)
    if not cfg.quiet and not (root / "classes.txt").is_file():
        print(f"generating the synthetic action set in {root} ...", file=sys.stderr, flush=True)
    return Path(generate_dataset(root, **opts))


def build_datasets(cfg: TrainConfig, spec: InputSpec,
                   class_names: list[str] | None = None) -> tuple[ClipDataset, ClipDataset]:
    """(train, test) datasets of the configured source, checked (bad files reported and skipped) and,
    when ``cfg.cache`` (default: when all clips fit in 2 GiB), decoded once into memory.
    ``class_names`` pins the classes (``--resume``)."""
    common = {"spec": spec, "seed": cfg.seed}
    if cfg.source == "nmnist":
        train = nmnist_dataset(cfg.data, "train", train=True, **common)
        test = nmnist_dataset(cfg.data, "test", **common)
    elif cfg.source == "synthetic":
        root = ensure_synthetic(cfg)
        train = synthetic_dataset(root, "train", train=True, **common)
        test = synthetic_dataset(root, "test", **common)
    elif cfg.source == "csv":
        train = csv_dataset(cfg.data, class_names=class_names, train=True, **common)
        if cfg.test_data:
            test = csv_dataset(cfg.test_data, class_names=train.class_names, **common)
        else:
            train, test = split_holdout(train, cfg.holdout, cfg.seed)
    else:  # folder per class, for videos or event files
        root = Path(cfg.data)
        if cfg.test_data is None and (root / "train").is_dir() and (root / "test").is_dir():
            train = folder_dataset(root / "train", class_names=class_names, train=True, **common)
            test = folder_dataset(root / "test", class_names=train.class_names, **common)
        else:
            train = folder_dataset(root, class_names=class_names, train=True, **common)
            if cfg.test_data:
                test = folder_dataset(cfg.test_data, class_names=train.class_names, **common)
            else:
                train, test = split_holdout(train, cfg.holdout, cfg.seed)
    if class_names is not None and train.class_names != list(class_names):
        raise SVFormerError(f"{train.source}: classes {train.class_names} differ from the checkpoint's {class_names}")
    if test.class_names != train.class_names:
        raise SVFormerError(f"{test.source}: classes differ from the training set's")
    cached = cfg.cache if cfg.cache is not None else \
        train.tensor_bytes() + test.tensor_bytes() <= CACHE_LIMIT_BYTES
    train.augment = augment_for(cfg, spec.size, cached)
    for ds in (train, test):
        if cached:
            ds.preload(cfg.workers)  # also finds the bad files
        else:
            ds.scan()
    if len(train) < 2:
        raise SVFormerError(f"{train.source}: training needs at least 2 readable files, found {len(train)}")
    return train, test


# -- evaluation --------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: SVFormer, dataset: ClipDataset, batch_size: int = 16, workers: int = 0,
             desc: str = "eval") -> dict[str, Any]:
    """Top-1/top-5 accuracy (fractions) and mean cross-entropy of ``model`` on ``dataset`` (eval mode)."""
    was_training = model.training
    model.eval()
    k = min(5, model.cfg.num_classes)
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    pbar = bar(len(dataset), desc, unit="clip")
    try:
        for batch in make_loader(dataset, batch_size, shuffle=False, workers=workers):
            for b in batch.bad:
                dataset.skip(b.path, b.reason)
            if len(batch.labels) == 0:
                continue
            logits = model.forward_sequence(batch.clips.transpose(0, 1))
            loss_sum += float(nn.functional.cross_entropy(logits, batch.labels, reduction="sum"))
            topk = logits.topk(k, dim=1).indices
            hit = topk == batch.labels[:, None]
            correct1 += int(hit[:, 0].sum())
            correct5 += int(hit.any(dim=1).sum())
            n += len(batch.labels)
            pbar.update(len(batch.labels) + len(batch.bad))
    finally:
        pbar.close()
        model.train(was_training)
    if n == 0:
        raise SVFormerError(f"{dataset.source}: no readable clip to evaluate")
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss_sum / n, "samples": n}


# -- training ------------------------------------------------------------------------------------
def build_model(cfg: TrainConfig, num_classes: int) -> SVFormer:
    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.model.items() if v is not None}
    overrides["in_channels"] = 3 if cfg.kind == "video" else 2
    overrides["num_classes"] = num_classes
    torch.manual_seed(cfg.seed)
    return SVFormer(variant_config(cfg.arch, **overrides))


def resume_config(checkpoint: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The stored :class:`TrainConfig` of a checkpoint with ``overrides`` applied (``resume`` set to it)."""
    ckpt = load_checkpoint(checkpoint)
    stored = ckpt.training.get("config")
    if not isinstance(stored, dict) or "epoch" not in ckpt.training:
        raise SVFormerError(f"{checkpoint}: not a training checkpoint (no training state to resume from)")
    d = dict(stored)
    d.update({k: v for k, v in overrides.items() if v is not None})
    d["resume"] = str(checkpoint)
    return TrainConfig.from_dict(d)


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(h, sort_keys=False) + "\n" for h in history))


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, clips: torch.Tensor, labels: torch.Tensor,
               loss_fn: nn.Module, clip_grad: float | None, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on ``clips`` ``[B, T, C, S, S]``: forward (through DDP when ``net`` is wrapped, which
    averages the gradients over the ranks), loss, backward, gradient clipping, AdamW at rate ``lr``.
    Returns ``(loss, logits)``; a non-finite loss raises before any update."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    logits = net(clips.permute(0, 2, 1, 3, 4))  # SVFormer.forward takes [B, C, T, H, W]
    loss = loss_fn(logits, labels)
    if not torch.isfinite(loss):
        raise SVFormerError(f"training diverged (loss {float(loss)}); lower --lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad:
        nn.utils.clip_grad_norm_(net.parameters(), clip_grad)
    optimizer.step()
    return loss, logits


def train_model(cfg: TrainConfig, on_epoch: Callable[[dict[str, Any]], None] | None = None,
                dist_info: distributed.DistInfo | None = None) -> TrainResult:
    """Train (or, with ``cfg.resume``, continue training) and write checkpoints and metrics to ``cfg.out_dir``.

    ``on_epoch`` is called with each epoch's metrics dict (on rank 0). ``dist_info``: this process's
    rank in a data-parallel run (default: from the launcher's environment, ``RANK`` / ``WORLD_SIZE``,
    else a single process). Returns the :class:`TrainResult` (on every rank; rank 0 writes it).
    """
    info = dist_info or distributed.from_env() or distributed.SINGLE
    distributed.init(info)
    try:
        return _train(cfg, on_epoch, info)
    finally:
        distributed.shutdown()


def _train(cfg: TrainConfig, on_epoch: Callable[[dict[str, Any]], None] | None,
           info: distributed.DistInfo) -> TrainResult:
    t_start = time.perf_counter()
    main = info.is_main
    if not main:  # one voice: rank 0 prints, shows progress and writes every file
        cfg = dataclasses.replace(cfg, quiet=True)
        set_quiet(True)
    out = Path(cfg.out_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.source == "synthetic":
            ensure_synthetic(cfg)  # generated once, before the other ranks read it
    distributed.barrier(info)
    start_epoch, history, opt_state = 0, [], None
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume)
        training = ckpt.training
        if "epoch" not in training or "optimizer" not in training:
            raise SVFormerError(f"{cfg.resume}: not a training checkpoint (no optimizer state to resume from)")
        start_epoch = int(training["epoch"])
        history = [dict(h) for h in training.get("history", [])][:start_epoch]
        opt_state = training["optimizer"]
        model = ckpt.build_model()
        class_names = list(ckpt.class_names)
        channels = 3 if cfg.kind == "video" else 2
        if model.cfg.in_channels != channels:
            raise SVFormerError(f"{cfg.resume}: the model takes {model.cfg.in_channels} input channels but "
                                f"{cfg.kind} input has {channels}")
        train_set, test_set = build_datasets(cfg, input_spec(cfg, model.cfg), class_names)
        if start_epoch >= cfg.epochs:
            raise SVFormerError(f"{cfg.resume}: already trained for {start_epoch} epochs; ask for more with --epochs")
    else:
        probe_cfg = variant_config(cfg.arch, **{k: (tuple(v) if isinstance(v, list) else v)
                                                 for k, v in cfg.model.items() if v is not None})
        train_set, test_set = build_datasets(cfg, input_spec(cfg, probe_cfg))
        class_names = train_set.class_names
        model = build_model(cfg, len(class_names))
    spec = input_spec(cfg, model.cfg)
    model.train()
    net = distributed.wrap(model, info)
    optimizer = make_optimizer(model, cfg)
    if opt_state is not None:
        try:
            optimizer.load_state_dict(opt_state)
        except (ValueError, KeyError) as e:
            raise SVFormerError(f"{cfg.resume}: optimizer state does not fit the model ({e})") from None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    params = sum(p.numel() for p in model.parameters())
    if not cfg.quiet:
        what = f"resuming at epoch {start_epoch + 1}" if start_epoch else "training"
        ranks = (f", {info.world_size} processes x {cfg.batch_size} clips = global batch "
                 f"{info.world_size * cfg.batch_size}" if info.world_size > 1 else "")
        print(f"{what}: {params:,} parameters, {len(train_set)} train / {len(test_set)} test clips, "
              f"{len(class_names)} classes, input {[spec.time_steps, spec.channels, spec.size, spec.size]}{ranks}",
              file=sys.stderr, flush=True)
    step = int(history[-1].get("step", 0)) if history else 0
    last_path = out / "last.pt"
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 1000 + epoch)  # model-side randomness (drop-path), reproducible on resume
        shard = (info.rank, info.world_size) if info.world_size > 1 else None
        loader = make_loader(train_set, cfg.batch_size, epoch=epoch, shuffle=True, workers=cfg.workers, shard=shard)
        steps_in_epoch = max(len(loader), 1)
        loss_sum, seen, correct, skipped_batches = 0.0, 0, 0, 0
        lr = lr_at(cfg, epoch)
        pbar = bar(len(loader.sampler), f"epoch {epoch + 1}/{cfg.epochs}", unit="clip")  # rank 0's shard
        try:
            for i, batch in enumerate(loader):
                for b in batch.bad:
                    train_set.skip(b.path, b.reason)
                # BatchNorm3d needs >= 2 clips in training; with several ranks all skip together (collectives)
                usable = len(batch.labels) >= 2
                if info.world_size > 1:
                    usable = distributed.all_sum(info, [float(usable)])[0] == info.world_size
                if not usable:
                    skipped_batches += 1
                    continue
                lr = lr_at(cfg, epoch + i / steps_in_epoch)
                try:
                    loss, logits = train_step(net, optimizer, batch.clips, batch.labels, loss_fn, cfg.clip_grad, lr)
                except SVFormerError as e:
                    raise SVFormerError(f"epoch {epoch + 1}: {e}") from None
                step += 1
                b = len(batch.labels)
                loss_sum += loss.item() * b
                correct += int((logits.argmax(1) == batch.labels).sum())
                seen += b
                pbar.update(b + len(batch.bad))
                pbar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        finally:
            pbar.close()
        if info.world_size > 1:  # the epoch's figures over all ranks; rank 0 learns every rank's bad files
            loss_sum, seen, correct, skipped_batches = distributed.all_sum(
                info, [loss_sum, seen, correct, skipped_batches])
            seen, correct, skipped_batches = int(seen), int(correct), int(skipped_batches // info.world_size)
            for skipped in distributed.gather_objects(info, dict(train_set.skipped)):
                train_set.skipped.update(skipped)
        if seen == 0:
            raise SVFormerError(f"{train_set.source}: no training batch with >= 2 readable clips in epoch {epoch + 1}")
        train_seconds = time.perf_counter() - t0
        metrics: dict[str, Any] = {"epoch": epoch + 1, "step": step, "loss": loss_sum / seen, "lr": lr,
                                   "train_acc": correct / seen, "train_samples": seen}
        if main and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            ev = evaluate(model, test_set, cfg.batch_size, cfg.workers, desc="test")
            metrics.update({"test_top1": ev["top1"], "test_top5": ev["top5"], "test_loss": ev["loss"],
                            "test_samples": ev["samples"]})
        metrics.update({"skipped_files": len(train_set.skipped) + len(test_set.skipped),
                        "skipped_batches": skipped_batches, "train_seconds": round(train_seconds, 3),
                        "seconds": round(time.perf_counter() - t0, 3)})
        history.append(metrics)
        training = {
            "epoch": epoch + 1,
            "step": step,
            "metrics": dict(metrics),
            "history": [dict(h) for h in history],
            "optimizer": optimizer.state_dict(),
            "scheduler": {"kind": "warmup-cosine", "epoch": float(epoch + 1), "step": step, "lr": lr,
                          "warmup_epochs": cfg.warmup_epochs, "epochs": cfg.epochs},
            "config": cfg.to_dict(),
            "data": {"train": _data_summary(train_set), "test": _data_summary(test_set)},
            # how this epoch ran (information only: nothing here depends on it when resuming)
            "processes": info.world_size, "global_batch": info.world_size * cfg.batch_size,
        }
        if main:
            epoch_path = out / f"epoch-{epoch + 1:03d}.pt"
            save_checkpoint(epoch_path, model, class_names, spec.to_preprocessing(), training)
            save_checkpoint(last_path, model, class_names, spec.to_preprocessing(), training)
            _write_metrics(out / "metrics.jsonl", history)
            _prune(out, epoch + 1, cfg.keep)
            if not cfg.quiet:
                print(format_epoch(metrics, cfg.epochs), file=sys.stderr, flush=True)
            if on_epoch is not None:
                on_epoch(metrics)
        distributed.barrier(info)
    result = TrainResult(
        out_dir=str(out), checkpoint=str(last_path), epochs=cfg.epochs, metrics=dict(history[-1]),
        history=history, class_names=list(class_names), train_data=_data_summary(train_set),
        test_data=_data_summary(test_set), params=params, seconds=round(time.perf_counter() - t_start, 3),
        resumed_from=start_epoch,
    )
    if main:
        write_json_atomic(out / "summary.json", result.to_dict())
    distributed.barrier(info)
    return result


def _data_summary(ds: ClipDataset) -> dict[str, Any]:
    s = ds.summary()
    return {"source": s["source"], "samples": s["samples"], "skipped": s["skipped"],
            "skipped_files": [f"{p}: {r}" for p, r in s["skipped_files"].items()]}


def _prune(out: Path, epoch: int, keep: int | None) -> None:
    if not keep:
        return
    for old in range(1, epoch - keep + 1):
        (out / f"epoch-{old:03d}.pt").unlink(missing_ok=True)


def format_epoch(m: dict[str, Any], epochs: int) -> str:
    """One human-readable line per epoch."""
    line = (f"epoch {m['epoch']}/{epochs}  loss {m['loss']:.4f}  lr {m['lr']:.2e}  "
            f"train acc {m['train_acc']:.3f}")
    if "test_top1" in m:
        line += f"  test top-1 {m['test_top1']:.3f} top-5 {m['test_top5']:.3f}"
    return line + f"  {m['seconds']:.1f} s"
