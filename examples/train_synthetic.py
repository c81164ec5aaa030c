"""Train a small SVFormer on the built-in synthetic action set with the public API, then use it.

The synthetic set (``svformer.data.synthetic``) holds short clips of moving shapes whose class can only
be told from motion (here its first two classes, move_left and move_right), so a model must use time.
The clips are fed as emulated event frames (luma changes between sampled frames, 2 polarity channels)
to a DVS-style 3-stage SVFormer; see ``benchmarks/train_synthetic.py`` for measured figures (RGB frames
and more classes included). Everything runs on CPU in a few minutes:

    .venv/bin/python examples/train_synthetic.py [OUT_DIR]

The same run from the command line:

    svformer-deploy train --synthetic --synthetic-classes 2 --synthetic-train 150 --synthetic-test 25 \\
        --video-input events --arch 3stg --size 32 -T 8 --dims 32,64,128 --depths 1,1,1 --head-dim 32 \\
        --epochs 15 -b 16 -o OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from svformer.checkpoint import load_model
from svformer.data.datasets import InputSpec, synthetic_dataset
from svformer.data.events import load_video_events
from svformer.data.synthetic import generate_dataset
from svformer.train import TrainConfig, evaluate, format_epoch, train_model

# the configuration of benchmarks/train_synthetic.py (see its output for measured figures)
DATA = {"num_classes": 2, "train_per_class": 150, "test_per_class": 25, "size": 64, "frames": 32}
MODEL = {"img_size": 32, "time_steps": 8, "dims": [32, 64, 128], "depths": [1, 1, 1], "head_dim": 32}


def main(out: Path) -> None:
    # 1. the data: real MP4 files, deterministic from the seed (reused when already generated)
    root = generate_dataset(out / "synthetic-data", seed=0, **DATA)

    # 2. training: a 3-stage SVFormer (LFE, GSA, GSA) on 8 event frames of 2 x 32 x 32, checkpoint every epoch
    cfg = TrainConfig(source="synthetic", data=str(root), arch="3stg", model=MODEL, epochs=15, batch_size=16,
                      lr=5e-3, warmup_epochs=1, video_input="events", out_dir=str(out / "run"), seed=0)
    result = train_model(cfg, on_epoch=lambda m: print(format_epoch(m, cfg.epochs), flush=True))
    print(f"held-out top-1 {result.metrics['test_top1']:.3f} after {result.seconds:.0f} s; "
          f"checkpoint {result.checkpoint}")

    # 3. the checkpoint is self-describing: config, class names and preprocessing travel with the weights
    model, ckpt = load_model(result.checkpoint)
    pre = ckpt.preprocessing
    assert pre["input"] == "video-events"
    test = synthetic_dataset(root, "test", InputSpec(kind="video-events", time_steps=pre["time_steps"],
                                                     size=pre["size"], frame_stride=pre["frame_stride"]))
    print("re-evaluated from the file:", evaluate(model, test))

    # 4. one clip, prepared exactly as the checkpoint says
    path, label = test.samples[0]
    clip = load_video_events(path, time_steps=pre["time_steps"], size=pre["size"], frame_stride=pre["frame_stride"])
    logits = model(clip.permute(1, 0, 2, 3)[None])  # [T, 2, H, W] -> [1, 2, T, H, W]
    print(f"{Path(path).name}: predicted {ckpt.class_names[int(logits.argmax())]}, true {ckpt.class_names[label]}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("synthetic-example"))
