"""The model zoo: named SVFormer variants (paper Table 1) and ablation switches.

``create_model(name, **overrides)`` is the one entry point; every variant is a few config
overrides of the one :class:`~svformer.model.SVFormer` class.
"""

from __future__ import annotations

from typing import Any

from .config import SVFormerConfig
from .errors import SVFormerError
from .model import SVFormer

VARIANTS: dict[str, dict[str, Any]] = {
    # UCF101 models, 224x224, T = 16, 101 classes (paper Table 1)
    "base": {},
    "ss": {"depths": (1, 1, 2, 1)},
    "st": {"dims": (64, 128, 256, 512)},
    "dp": {"depths": (1, 2, 4, 2)},
    "wd": {"dims": (128, 256, 512, 768)},
    # DVS128-Gesture: 3 stages, 2 polarity channels, 128x128, no local pathway, 11 classes
    "3stg": {
        "depths": (1, 2, 1),
        "dims": (64, 128, 256),
        "stage_types": ("lfe", "gsa", "gsa"),
        "in_channels": 2,
        "img_size": 128,
        "num_classes": 11,
        "local_pathway": False,
    },
}

def variant_config(name: str, **overrides: Any) -> SVFormerConfig:
    """The config of a named variant with ablation/size overrides applied.

    Overrides are any :class:`SVFormerConfig` field, e.g. ``local_pathway=False`` (no LP),
    ``neuron="lif"``, ``norm="bn"`` (plain BN), ``time_steps=8``, ``num_classes=60``,
    ``img_size=112``, ``in_channels=2``.
    """
    if name not in VARIANTS:
        raise SVFormerError(f"unknown architecture {name!r}; known: {', '.join(VARIANTS)}")
    fields = dict(VARIANTS[name])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    fields.setdefault("extra", {})
    fields["extra"] = {**fields["extra"], "variant": name}
    try:
        return SVFormerConfig(**fields)
    except TypeError as e:
        raise SVFormerError(f"bad option for {name!r}: {e}") from None


def create_model(name: str, **overrides: Any) -> SVFormer:
    """Build the named variant (see :data:`VARIANTS`) with optional config overrides."""
    return SVFormer(variant_config(name, **overrides))
