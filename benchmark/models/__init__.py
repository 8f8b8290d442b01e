"""Frozen backbones with named layers (timm-style registry: ``list_models`` / ``create_model``)."""

from .backbone import Architecture, FrozenBackbone, LayerPool, create_model, list_models
from . import alexnet as _alexnet  # noqa: F401  (registers the architectures)
from . import resnet as _resnet  # noqa: F401

__all__ = ["Architecture", "FrozenBackbone", "LayerPool", "create_model", "list_models"]
