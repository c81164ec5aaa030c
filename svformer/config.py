"""The one configuration object of an SVFormer network (plain data, JSON-serialisable)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .checks import short
from .errors import SVFormerError

STAGE_TYPES = ("lfe", "gsa")
NEURONS = ("plif", "lif")
NORMS = ("tdbn", "bn")
SURROGATES = ("atan", "sigmoid")

# Sane limits, checked before any model is built from a (possibly untrusted) config: far above every
# published SVFormer (4 stages, C <= 768, 224 px, T <= 16, 400 classes) yet small enough that a config
# cannot make a model or an input allocate tens of GB.
LIMITS: dict[str, int] = {
    "stages": 8,  # len(dims)
    "depth": 64,  # blocks per stage
    "dim": 1 << 16,  # channels per stage, and head_dim
    "img_size": 8192,  # pixels per side
    "time_steps": 1024,
    "num_classes": 1 << 20,
    "in_channels": 64,
    "patch": 64,  # first_patch and patch
}
MAX_MLP_RATIO = 16.0



def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class SVFormerConfig:
    """Hyper-parameters of one SVFormer network.

    Defaults are SVFormer-base as released by the authors (``docs/model.md``).
    Stage ``i`` is a patch embedding followed by ``depths[i]`` blocks of type ``stage_types[i]``
    (``lfe``: local feature extractor, ``gsa``: global self-attention) with ``dims[i]`` channels.
    """

    depths: tuple[int, ...] = (1, 1, 3, 1)
    dims: tuple[int, ...] = (128, 256, 384, 512)
    stage_types: tuple[str, ...] = ("lfe", "lfe", "gsa", "gsa")
    head_dim: int = 64
    mlp_ratio: float = 2.0
    in_channels: int = 3
    img_size: int = 224
    time_steps: int = 16
    num_classes: int = 101
    local_pathway: bool = True
    neuron: str = "plif"
    init_tau: float = 2.0
    v_threshold: float = 1.0
    surrogate: str = "atan"
    surrogate_alpha: float = 2.0
    norm: str = "tdbn"
    first_patch: int = 4
    patch: int = 2
    drop_path: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("depths", "dims", "stage_types"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    # -- derived quantities -------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.dims)

    @property
    def num_heads(self) -> tuple[int, ...]:
        return tuple(d // self.head_dim for d in self.dims)

    @property
    def attn_scale(self) -> float:
        """The fixed attention scale s = d^-1/2 (0.125 for d = 64)."""
        return self.head_dim**-0.5

    @property
    def head_channels(self) -> int:
        """Channels entering the classification head (main path, plus the local pathway)."""
        return self.dims[-1] * (2 if self.local_pathway else 1)

    @property
    def head_groups(self) -> int:
        return self.dims[-1]

    def spatial_sizes(self) -> list[int]:
        """Feature-map side length after each patch embedding."""
        sizes, s = [], self.img_size
        for i in range(self.num_stages):
            p = self.first_patch if i == 0 else self.patch
            s = conv_out(s, p + 2, p, 1)
            sizes.append(s)
        return sizes

    def local_pathway_size(self) -> int:
        """Side length of the local pathway output (DW 3x3, stride 2, padding 1)."""
        return conv_out(self.spatial_sizes()[-2], 3, 2, 1)

    def _check_types_and_limits(self) -> None:
        """Types and :data:`LIMITS` of every numeric field; runs before anything derived is computed."""
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not (len(self.dims) <= LIMITS["stages"] and len(self.depths) <= LIMITS["stages"]):
            raise SVFormerError(f"config: at most {LIMITS['stages']} stages, got {len(self.dims)}")
        if not all(is_int(d) and 0 <= d <= LIMITS["depth"] for d in self.depths):
            raise SVFormerError(f"config: depths must be integers in 0..{LIMITS['depth']}, got {list(self.depths)}")
        if not all(is_int(c) and 1 <= c <= LIMITS["dim"] for c in self.dims):
            raise SVFormerError(f"config: dims must be integers in 1..{LIMITS['dim']}, got {short(self.dims)}")
        if not all(isinstance(t, str) for t in self.stage_types):
            raise SVFormerError(f"config: stage types must be strings, got {short(self.stage_types)}")
        for name, key, lo in (("head_dim", "dim", 1), ("img_size", "img_size", 1), ("time_steps", "time_steps", 1),
                              ("num_classes", "num_classes", 1), ("in_channels", "in_channels", 1),
                              ("first_patch", "patch", 1), ("patch", "patch", 1)):
            v = getattr(self, name)
            if not (is_int(v) and lo <= v <= LIMITS[key]):
                raise SVFormerError(f"config: {name} must be an integer in {lo}..{LIMITS[key]}, got {short(v)}")
        for name in ("mlp_ratio", "init_tau", "v_threshold", "surrogate_alpha", "drop_path"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise SVFormerError(f"config: {name} must be a finite number, got {short(v)}")
        if not 0 < self.mlp_ratio <= MAX_MLP_RATIO or int(self.dims[0] * self.mlp_ratio) < 1:
            raise SVFormerError(f"config: mlp_ratio must be in (0, {MAX_MLP_RATIO:g}], got {self.mlp_ratio}")
        if not 0 <= self.drop_path < 1:
            raise SVFormerError(f"config: drop_path must be in [0, 1), got {self.drop_path}")
        for name in ("neuron", "norm", "surrogate"):
            if not isinstance(getattr(self, name), str):
                raise SVFormerError(f"config: {name} must be a string, got {short(getattr(self, name))}")
        if not isinstance(self.local_pathway, bool):
            raise SVFormerError(f"config: local_pathway must be true or false, got {short(self.local_pathway)}")
        if not isinstance(self.extra, dict):
            raise SVFormerError("config: extra must be an object")

    def validate(self) -> None:
        self._check_types_and_limits()
        n = len(self.dims)
        if n < 2 or len(self.depths) != n or len(self.stage_types) != n:
            raise SVFormerError(
                f"config: depths {self.depths}, dims {self.dims} and stage_types {self.stage_types} "
                "must have the same length (>= 2)"
            )
        if any(t not in STAGE_TYPES for t in self.stage_types):
            raise SVFormerError(f"config: stage types must be among {STAGE_TYPES}, got {self.stage_types}")
        if any(d < 0 for d in self.depths) or any(c <= 0 for c in self.dims):
            raise SVFormerError("config: depths must be >= 0 and dims > 0")
        for c, t in zip(self.dims, self.stage_types, strict=True):
            if t == "gsa" and c % self.head_dim:
                raise SVFormerError(f"config: GSA stage width {c} is not a multiple of head_dim {self.head_dim}")
        if self.neuron not in NEURONS:
            raise SVFormerError(f"config: neuron must be one of {NEURONS}, got {self.neuron!r}")
        if self.norm not in NORMS:
            raise SVFormerError(f"config: norm must be one of {NORMS}, got {self.norm!r}")
        if self.surrogate not in SURROGATES:
            raise SVFormerError(f"config: surrogate must be one of {SURROGATES}, got {self.surrogate!r}")
        if self.time_steps < 1 or self.num_classes < 1 or self.in_channels < 1:
            raise SVFormerError("config: time_steps, num_classes and in_channels must be >= 1")
        if not self.init_tau > 1.0:
            raise SVFormerError(f"config: init_tau must be > 1, got {self.init_tau}")
        if not (self.v_threshold > 0 and math.isfinite(self.v_threshold)):
            raise SVFormerError(f"config: v_threshold must be a positive number, got {self.v_threshold}")
        sizes = self.spatial_sizes()
        if min(sizes) < 1:
            raise SVFormerError(f"config: input size {self.img_size} is too small for {n} stages")
        if self.local_pathway and self.local_pathway_size() != sizes[-1]:
            raise SVFormerError(
                f"config: with input size {self.img_size} the local pathway gives "
                f"{self.local_pathway_size()}x{self.local_pathway_size()} but the last stage "
                f"{sizes[-1]}x{sizes[-1]}; use another size or no local pathway"
            )

    # -- (de)serialisation ----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("depths", "dims", "stage_types"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SVFormerConfig:
        if not isinstance(d, dict):
            raise SVFormerError(f"config: expected an object, got {type(d).__name__}")
        for name in ("depths", "dims", "stage_types"):
            if name in d and not isinstance(d[name], list | tuple):
                raise SVFormerError(f"config: {name} must be a list, got {short(d[name])}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SVFormerError(f"config: unknown fields {unknown}")
        try:
            return cls(**d)
        except TypeError as e:
            raise SVFormerError(f"config: {e}") from None

    def replace(self, **changes: Any) -> SVFormerConfig:
        return dataclasses.replace(self, **changes)
