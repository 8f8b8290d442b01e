"""Frozen backbones with named layers (timm-style registry: ``list_models`` / ``create_model``)."""

from .backbone import Architecture, FamilyInfo, FrozenBackbone, LayerPool, create_model, list_models
from . import alexnet as _alexnet  # noqa: F401  (registers the architectures)
from . import resnet as _resnet  # noqa: F401
from . import timm_family as _timm_family  # noqa: F401  (the timm/<model> family; imports timm lazily)

__all__ = ["Architecture", "FamilyInfo", "FrozenBackbone", "LayerPool", "create_model", "list_models"]
