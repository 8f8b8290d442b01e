"""Frozen backbones with named layers (timm-style registry: ``list_models`` / ``create_model``).

The catalogue (``Architecture``, the registered names, their layers) imports no torch, so that a
suite's architectures and layers are checked at once; ``FrozenBackbone`` and ``create_model``
import it when first asked for."""

from .architecture import Architecture, FamilyInfo, LayerPool, list_models
from . import alexnet as _alexnet  # noqa: F401  (registers the architectures)
from . import resnet as _resnet  # noqa: F401
from . import timm_family as _timm_family  # noqa: F401  (the timm/<model> family; imports timm lazily)

__all__ = ["Architecture", "FamilyInfo", "FrozenBackbone", "LayerPool", "create_model", "list_models"]


def __getattr__(name: str):
    if name in ("FrozenBackbone", "create_model"):
        from . import backbone

        return getattr(backbone, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
