"""The Caffe AlexNet of the reference (96-256-384-384-256 channels, 227 px input), conv1..conv5.

torchvision's AlexNet is the one-GPU variant with other channel counts, whose per-layer feature
dimensions would not match the protocol's table, so the reference layout is built here.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from ..registry import ARCHITECTURES
from .architecture import Architecture, LayerPool

if TYPE_CHECKING:
    from torch import nn

    from .alexnet_net import AlexNet

ALEXNET_POOLS = {  # key: spatial size of the map at 227 px input
    "conv1": LayerPool(10, {55: (19, 4, 0)}),
    "conv2": LayerPool(6, {27: (12, 3, 0)}),
    "conv3": LayerPool(5, {13: (9, 1, 0)}),
    "conv4": LayerPool(5, {13: (9, 1, 0)}),
    "conv5": LayerPool(6, {13: (8, 1, 0)}),
}


def alexnet_stages(model: AlexNet) -> list[tuple[str, nn.Module]]:
    from torch import nn

    return [
        ("conv1", model.conv1),
        ("conv2", nn.Sequential(model.pool1, model.conv2)),
        ("conv3", nn.Sequential(model.pool2, model.conv3)),
        ("conv4", model.conv4),
        ("conv5", model.conv5),
    ]


def _build_alexnet(batch_norm: bool) -> AlexNet:
    from .alexnet_net import AlexNet

    return AlexNet(batch_norm=batch_norm)


def _alexnet(name: str, batch_norm: bool) -> Architecture:
    return Architecture(
        name=name,
        build=partial(_build_alexnet, batch_norm),
        layers=tuple(ALEXNET_POOLS),
        pools=ALEXNET_POOLS,
        stages=alexnet_stages,
        head_prefixes=("classifier.",),
        reference_input_size=227,
        default_layers=tuple(ALEXNET_POOLS),
    )


ARCHITECTURES.register("alexnet")(lambda: _alexnet("alexnet", False))
ARCHITECTURES.register("alexnet_bn")(lambda: _alexnet("alexnet_bn", True))
