"""ResNet family: conv1 (after the stem ReLU), res2..res5 (layer1..layer4) and pool5."""

from __future__ import annotations

from functools import partial

from typing import TYPE_CHECKING

from ..registry import ARCHITECTURES
from .architecture import Architecture, LayerPool

if TYPE_CHECKING:
    from torch import nn

# Protocol pooling at 224 px input (the reference code's kernels, written up in docs/tasks/voc07-svm.md);
# the key is the map's spatial size.
RESNET_POOLS = {
    "conv1": LayerPool(12, {112: (10, 10, 4)}),
    "res2": LayerPool(6, {56: (16, 8, 0)}),
    "res3": LayerPool(4, {28: (13, 5, 0)}),
    "res4": LayerPool(3, {14: (8, 3, 0)}),
    # 14: a res5 with stride 1 (colorization ResNet) pools with kernel 12, stride 2.
    "res5": LayerPool(2, {7: (6, 1, 0), 14: (12, 2, 0)}),
    "pool5": LayerPool(1),
}
RESNET_LAYERS = ("conv1", "res2", "res3", "res4", "res5", "pool5")


def resnet_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from torch import nn

    return [
        ("conv1", nn.Sequential(model.conv1, model.bn1, model.relu)),
        ("res2", nn.Sequential(model.maxpool, model.layer1)),
        ("res3", model.layer2),
        ("res4", model.layer3),
        ("res5", model.layer4),
        ("pool5", model.avgpool),
    ]


def _torchvision_resnet(name: str):
    import torchvision.models as tvm

    return getattr(tvm, name)(weights=None)


def _resnet(name: str) -> Architecture:
    return Architecture(
        name=name,
        build=partial(_torchvision_resnet, name),
        layers=RESNET_LAYERS,
        pools=RESNET_POOLS,
        stages=resnet_stages,
        head_prefixes=("fc.",),
        reference_input_size=224,
        default_layers=("conv1", "res2", "res3", "res4", "res5"),
    )


for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
              "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2"):
    ARCHITECTURES.register(_name)(partial(_resnet, _name))
