"""Train a small SVFormer on the built-in synthetic action set with the public API, then use it.

The synthetic set (``svformer.data.synthetic``) holds short clips of a moving shape whose class can only
be told from motion (here its first four classes: move_left, move_right, move_up, move_down), so a model
must use time. The model sees one normalised RGB frame per time step, as the authors' UCF101 model does:
a 3-stage SVFormer (LFE, GSA, GSA) on 8 frames of 32 x 32 with a first patch stride of 2 (feature maps
16/8/4; see ``benchmarks/train_synthetic.py`` for why and for measured figures). Everything runs on CPU
in a few minutes:

    .venv/bin/python examples/train_synthetic.py [OUT_DIR]

The same run from the command line:

    svformer-deploy train --synthetic --synthetic-classes 4 --synthetic-train 150 --synthetic-test 25 \\
        --arch 3stg --size 32 -T 8 --dims 16,32,64 --depths 1,1,1 --head-dim 16 --first-patch 2 \\
        --epochs 16 -b 16 --threads 1 -o OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from svformer_deploy.svformer.checkpoint import load_model
from svformer_deploy.svformer.data.datasets import InputSpec, synthetic_dataset
from svformer_deploy.svformer.data.synthetic import generate_dataset
from svformer_deploy.svformer.demo_config import (  # the demo's configuration, measured by the benchmark
    ARCH,
    DATA,
    MODEL,
    TRAIN,
)
from svformer_deploy.svformer.train import TrainConfig, evaluate, format_epoch, train_model


def main(out: Path) -> None:
    # 1. the data: real MP4 files, deterministic from the seed (reused when already generated)
    root = generate_dataset(out / "synthetic-data", **DATA)

    # 2. training: a 3-stage SVFormer (LFE, GSA, GSA) on 8 RGB frames of 3 x 32 x 32, checkpoint every epoch
    #    (quiet: one line per epoch from on_epoch instead of progress bars and train_model's own lines on stderr)
    cfg = TrainConfig(source="synthetic", data=str(root), arch=ARCH, model=MODEL, out_dir=str(out / "run"),
                      quiet=True, **TRAIN)
    result = train_model(cfg, on_epoch=lambda m: print(format_epoch(m, cfg.epochs), flush=True))
    print(f"held-out top-1 {result.metrics['test_top1']:.3f} after {result.seconds:.0f} s; "
          f"checkpoint {result.checkpoint}")

    # 3. the checkpoint is self-describing: config, class names and preprocessing travel with the weights
    model, ckpt = load_model(result.checkpoint)
    spec = InputSpec.from_preprocessing(ckpt.preprocessing, ckpt.config)
    assert spec.kind == "video"
    test = synthetic_dataset(root, "test", spec)
    print("re-evaluated from the file:", evaluate(model, test))

    # 4. one clip, prepared exactly as the checkpoint says (centred window and crop, normalised RGB)
    path, label = test.samples[0]
    clip = spec.load_clip(path)
    with torch.no_grad():
        logits = model(clip.permute(1, 0, 2, 3)[None])  # [T, 3, H, W] -> [1, 3, T, H, W]
    print(f"{Path(path).name}: predicted {ckpt.class_names[int(logits.argmax())]}, true {ckpt.class_names[label]}")


if __name__ == "__main__":
    torch.set_num_threads(1)  # faster than 2 threads when other jobs share a small machine
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("synthetic-example"))
