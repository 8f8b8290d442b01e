"""Built-in pretrainers: each produces a frozen backbone with named layers."""

from __future__ import annotations

from torch import nn

from benchmark.engine import LoadedModel
from benchmark.models import FrozenBackbone
from benchmark.models.backbone import get_architecture, trunk_state_dict, weights_hash


def freeze(name: str, arch_name: str, model: nn.Module, info: dict) -> LoadedModel:
    """Wrap a trained or loaded network as the frozen representation the tasks evaluate."""
    arch = get_architecture(arch_name)
    digest = weights_hash(trunk_state_dict(arch, model))
    return LoadedModel(name, arch, FrozenBackbone(arch, model), digest, {**info, "weights_sha256": digest})
