"""The one configuration of the embedded end-to-end demo (``svformer-deploy demo``).

The demo trains on the built-in synthetic action set (:mod:`svformer.data.synthetic`): its first four
classes (move_left, move_right, move_up, move_down) can only be told from motion. The model is a 3-stage
SVFormer (LFE, GSA, GSA) on 8 normalised RGB frames of 32 x 32 with a first patch stride of 2 (feature
maps 16/8/4); ``benchmarks/train_synthetic.py`` explains the choice and measures it. Everything here is
plain data so that the demo, ``examples/train_synthetic.py`` and the benchmark can share it; change the
demo by changing these values.
"""

from __future__ import annotations

from typing import Any

# svformer.data.synthetic.generate_dataset(**DATA): clips of 64 x 64 pixels, 32 frames each
DATA: dict[str, Any] = {"num_classes": 4, "train_per_class": 150, "test_per_class": 25, "size": 64, "frames": 32,
                        "seed": 0}

# SVFormerConfig overrides of the "3stg" variant
ARCH = "3stg"
MODEL: dict[str, Any] = {"img_size": 32, "time_steps": 8, "dims": [16, 32, 64], "depths": [1, 1, 1],
                         "head_dim": 16, "first_patch": 2}

# svformer.train.TrainConfig fields (besides source, data, arch, model and out_dir)
TRAIN: dict[str, Any] = {"epochs": 16, "batch_size": 16, "lr": 5e-3, "warmup_epochs": 1.0, "video_input": "rgb",
                         "seed": 0}

# the held-out evaluation at the end of the demo (svformer-deploy evaluate): one noise level of the paper's
# Table 2 (Gaussian, sigma = 0.5 x the frame's std) besides the clean clips, and the early-exit sweep
EVALUATE: dict[str, Any] = {"noise": ["gaussian:0.5"], "seed": 0}

# --qat (svformer-deploy demo --qat, make demo QAT=1): train --qat of the demo checkpoint (export.qat.QATOptions)
QAT: dict[str, Any] = {"weight_bits": 8, "epochs": 1, "lr": 1e-4, "batch_size": 16, "seed": 0}
