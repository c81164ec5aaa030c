"""SVFormer model zoo, data and training (the bottom layer of svformer-deploy)."""

from .config import SVFormerConfig
from .errors import CheckFailed, SVFormerError

__all__ = ["SVFormerConfig", "SVFormerError", "CheckFailed", "create_model", "SVFormer", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: importing the package does not import torch
    if name == "create_model":
        from .variants import create_model

        return create_model
    if name == "SVFormer":
        from .model import SVFormer

        return SVFormer
    raise AttributeError(name)
