"""Checkpoints: one documented, pickle-safe format, plus bare state_dicts.

Format (a dict written with ``torch.save``; only tensors, dicts, lists, str, int, float, bool, None):

    {
      "format": "svformer-deploy/checkpoint", "format_version": 1,
      "arch": "base",                       # variant name (informational; the config is authoritative)
      "config": {...},                       # SVFormerConfig.to_dict()
      "state_dict": {name: tensor},          # SVFormer.state_dict() (the authors' key names)
      "class_names": ["ApplyEyeMakeup", ...],
      "preprocessing": {...},                # how inputs must be prepared (see default_preprocessing)
      "versions": {"svformer_deploy": ..., "torch": ..., "spikingjelly": ...},
      "training": {...},                     # optional: epoch, metrics, optimizer state for --resume
      "qat": {...}                           # optional (train --qat): the fine-tuned integer graph, whose
                                             # codes export writes instead of quantizing (export.qat)
    }

Loading always uses ``torch.load(weights_only=True)``: a file that needs arbitrary unpickling
(i.e. could run code) is refused before anything in it runs. A bare state_dict (ours, or the
authors' ``model_state`` / DDP ``module.`` prefixed ones) is accepted with an explicit ``arch``.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .checks import short
from .config import LIMITS, SVFormerConfig
from .errors import SVFormerError
from .fileio import write_buffered_atomic
from .model import SVFormer
from .variants import variant_config

FORMAT = "svformer-deploy/checkpoint"
FORMAT_VERSION = 1


def default_preprocessing(cfg: SVFormerConfig) -> dict[str, Any]:
    """Input preparation matching the authors' pipeline for this config.

    Video: T frames by linspace over a window of T x ``frame_stride`` frames, short side resized
    to ``size``, centre crop ``size`` x ``size``, RGB in [0, 1] normalised by mean/std.
    Events (2 input channels): events integrated into T frames of 2 polarity channels.
    """
    if cfg.in_channels == 2:
        return {"input": "events", "time_steps": cfg.time_steps, "size": cfg.img_size, "polarities": 2}
    return {
        "input": "video",
        "time_steps": cfg.time_steps,
        "size": cfg.img_size,
        "frame_stride": 4,
        "mean": [0.45] * cfg.in_channels,
        "std": [0.225] * cfg.in_channels,
    }





def check_preprocessing(where: str, prep: Any, config: SVFormerConfig | None = None) -> dict[str, Any]:
    """Validate a ``preprocessing`` object (manifest or checkpoint) and return it unchanged.

    The rules are :meth:`svformer.data.datasets.InputSpec.from_preprocessing`'s (types, ranges, and the
    config's defaults for missing keys); whether it fits the model's input shape is checked where the
    input is used.
    """
    from .data.datasets import InputSpec

    if not isinstance(prep, dict):
        raise SVFormerError(f"{where}: preprocessing must be an object, got {short(prep)}")
    InputSpec.from_preprocessing(prep, config, where, match_model=False)
    return prep


def versions() -> dict[str, str]:
    out = {}
    for dist in ("svformer-deploy", "torch", "spikingjelly"):
        try:
            out[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist.replace("-", "_")] = "unknown"
    return out


@dataclass
class Checkpoint:
    """A loaded checkpoint: everything needed to rebuild and run the model."""

    config: SVFormerConfig
    state_dict: dict[str, torch.Tensor]
    class_names: list[str]
    preprocessing: dict[str, Any]
    arch: str = "custom"
    versions: dict[str, str] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    qat: dict[str, Any] = field(default_factory=dict)  # quantization-aware fine-tuning: its integer graph (export.qat)

    def build_model(self) -> SVFormer:
        """The model with these weights, in eval mode (the state_dict is checked against the config first)."""
        check_state_dict_for_config(self.config, self.state_dict, self.source)
        model = SVFormer(self.config)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arch": self.arch,
            "config": self.config.to_dict(),
            "state_dict": self.state_dict,
            "class_names": list(self.class_names),
            "preprocessing": dict(self.preprocessing),
            "versions": self.versions or versions(),
            "training": dict(self.training),
            **({"qat": dict(self.qat)} if self.qat else {}),
        }


def make_checkpoint(
    model: SVFormer,
    class_names: list[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> Checkpoint:
    cfg = model.cfg
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(cfg.num_classes)]
    if len(names) != cfg.num_classes:
        raise SVFormerError(f"{len(names)} class names for a model with {cfg.num_classes} classes")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return Checkpoint(
        config=cfg,
        state_dict=state,
        class_names=names,
        preprocessing=preprocessing or default_preprocessing(cfg),
        arch=str(cfg.extra.get("variant", "custom")),
        versions=versions(),
        training=dict(training or {}),
    )


def save_checkpoint(
    path: str | Path,
    model: SVFormer,
    class_names: list[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` in the checkpoint format, atomically (serialised in memory first, so a full disk is an
    ``OSError`` naming ``path`` rather than an error inside torch's writer)."""
    ckpt = make_checkpoint(model, class_names, preprocessing, training)
    return write_buffered_atomic(path, lambda buf: torch.save(ckpt.to_dict(), buf))


def _safe_torch_load(path: Path) -> Any:
    if not path.exists():
        raise SVFormerError(f"{path}: no such file")
    if path.is_dir():
        raise SVFormerError(f"{path}: is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise SVFormerError(f"{path}: empty file, not a checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's notes on the pickle protocol of the file
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e).split("\n")[0] if "Unsupported" not in str(e) else _unsupported(str(e))
        raise SVFormerError(
            f"{path}: refused to load: the file needs arbitrary code to unpickle ({detail}); "
            "only weights-only checkpoints are loaded"
        ) from None
    except Exception as e:  # any other failure of the (safe) unpickler means the bytes are not a checkpoint
        first = str(e).splitlines()[0] if str(e) else ""
        raise SVFormerError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {first})") from None


def _unsupported(msg: str) -> str:
    for line in msg.splitlines():
        if "Unsupported" in line:
            return line.strip().rstrip(".")
    return "unsupported global"


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_checkpoint(path: str | Path, arch: str | None = None, **overrides: Any) -> Checkpoint:
    """Load a checkpoint file safely.

    ``arch`` (plus config ``overrides`` such as ``num_classes``) is required for a bare state_dict
    and ignored for files in our format (their config is authoritative).
    """
    path = Path(path)
    obj = _safe_torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return _from_ours(path, obj)
    state = None
    if isinstance(obj, dict):
        for key in ("model_state", "state_dict", "model"):  # slowfast / common training scripts
            if _is_state_dict(obj.get(key)):
                state = obj[key]
                break
        if state is None and _is_state_dict(obj):
            state = obj
    if state is None:
        raise SVFormerError(
            f"{path}: not an SVFormer checkpoint (neither the svformer-deploy format nor a state_dict)"
        )
    if arch is None:
        raise SVFormerError(f"{path}: a bare state_dict has no config; say which architecture it is with --arch")
    state = _strip_prefix(state)
    if "head.weight" in state and "num_classes" not in overrides:
        overrides["num_classes"] = int(state["head.weight"].shape[0])
    if "num_classes" in overrides and not 1 <= overrides["num_classes"] <= LIMITS["num_classes"]:
        raise SVFormerError(f"{path}: head.weight has {overrides['num_classes']} rows (classes), above the limit "
                            f"of {LIMITS['num_classes']}")
    cfg = variant_config(arch, **overrides)
    ckpt = Checkpoint(
        config=cfg,
        state_dict=state,
        class_names=[f"class_{i}" for i in range(cfg.num_classes)],
        preprocessing=default_preprocessing(cfg),
        arch=arch,
        source=str(path),
    )
    check_state_dict_for_config(cfg, state, str(path))
    return ckpt


def _from_ours(path: Path, obj: dict[str, Any]) -> Checkpoint:
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise SVFormerError(f"{path}: checkpoint format version {version} is not supported (expected {FORMAT_VERSION})")
    if not isinstance(obj.get("config"), dict):
        raise SVFormerError(f"{path}: malformed checkpoint (config must be a mapping)")
    try:
        cfg = SVFormerConfig.from_dict(dict(obj["config"]))
        state = obj["state_dict"]
        ckpt = Checkpoint(
            config=cfg,
            state_dict=state,
            class_names=[str(c) for c in obj.get("class_names") or [f"class_{i}" for i in range(cfg.num_classes)]],
            preprocessing=dict(check_preprocessing(str(path), obj.get("preprocessing") or default_preprocessing(cfg),
                                                   cfg)),
            arch=str(obj.get("arch", "custom")),
            versions=dict(obj.get("versions") or {}),
            training=dict(obj.get("training") or {}),
            source=str(path),
            qat=dict(obj.get("qat") or {}),
        )
    except SVFormerError as e:
        raise SVFormerError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise SVFormerError(f"{path}: malformed checkpoint ({type(e).__name__}: {e})") from None
    if not _is_state_dict(state):
        raise SVFormerError(f"{path}: malformed checkpoint (state_dict is not a mapping of tensors)")
    if len(ckpt.class_names) != cfg.num_classes:
        raise SVFormerError(f"{path}: {len(ckpt.class_names)} class names but {cfg.num_classes} classes")
    check_state_dict_for_config(cfg, state, str(path))
    return ckpt


def expected_state_shapes(cfg: SVFormerConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the state_dict of ``SVFormer(cfg)``, from a model built on the meta device
    (no memory is allocated for its parameters, whatever the config asks for)."""
    with torch.device("meta"):
        model = SVFormer(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state_dict_for_config(cfg: SVFormerConfig, state: dict[str, torch.Tensor], source: str = "") -> None:
    """Check ``state`` against ``cfg`` before a model is built: keys, shapes, dtypes (real), values (finite)."""
    check_state_dict(_MetaShapes(expected_state_shapes(cfg)), state, source)
    where = f"{source}: " if source else ""
    for k, v in state.items():
        if v.is_complex() or not (v.is_floating_point() or v.dtype in _INT_DTYPES):
            raise SVFormerError(f"{where}state_dict tensor {k} has dtype {v.dtype}, not a real number type")
        if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()):
            raise SVFormerError(f"{where}state_dict tensor {k} holds NaN or infinite values")


_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)


class _MetaShapes:
    """Stands in for a module in :func:`check_state_dict`: only ``state_dict()`` shapes are needed."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self._shapes = {k: torch.empty(v, device="meta") for k, v in shapes.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._shapes


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "") -> None:
    """Raise a one-line error naming missing/unexpected keys and shape mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {list(state[k].shape)} (model {list(own[k].shape)})"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if not (missing or unexpected or wrong):
        return
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if items:
            shown = ", ".join(items[:4]) + (f", ... ({len(items)} in all)" if len(items) > 4 else "")
            parts.append(f"{label}: {shown}")
    where = f"{source}: " if source else ""
    raise SVFormerError(f"{where}state_dict does not fit the config: " + "; ".join(parts))


def load_model(path: str | Path, arch: str | None = None, **overrides: Any) -> tuple[SVFormer, Checkpoint]:
    """Load a checkpoint and build its model (eval mode)."""
    ckpt = load_checkpoint(path, arch, **overrides)
    return ckpt.build_model(), ckpt
