"""The Caffe AlexNet of the reference (96-256-384-384-256 channels, 227 px input), conv1..conv5.

torchvision's AlexNet is the one-GPU variant with other channel counts, whose per-layer feature
dimensions would not match the protocol's table, so the reference layout is built here.
"""

from __future__ import annotations

from torch import nn

from ..registry import ARCHITECTURES
from .backbone import Architecture, LayerPool

ALEXNET_POOLS = {  # key: spatial size of the map at 227 px input
    "conv1": LayerPool(10, {55: (19, 4, 0)}),
    "conv2": LayerPool(6, {27: (12, 3, 0)}),
    "conv3": LayerPool(5, {13: (9, 1, 0)}),
    "conv4": LayerPool(5, {13: (9, 1, 0)}),
    "conv5": LayerPool(6, {13: (8, 1, 0)}),
}


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 1000, batch_norm: bool = False):
        super().__init__()

        def block(cin, cout, kernel, stride=1, padding=0):
            norm = [nn.BatchNorm2d(cout)] if batch_norm else []
            return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), *norm, nn.ReLU(inplace=True))

        self.conv1 = block(3, 96, 11, 4)
        self.pool1 = nn.MaxPool2d(3, 2)
        self.conv2 = block(96, 256, 5, padding=2)
        self.pool2 = nn.MaxPool2d(3, 2)
        self.conv3 = block(256, 384, 3, padding=1)
        self.conv4 = block(384, 384, 3, padding=1)
        self.conv5 = block(384, 256, 3, padding=1)
        self.pool5 = nn.MaxPool2d(3, 2)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.pool5(self.conv5(self.conv4(self.conv3(x))))
        return self.classifier(nn.functional.adaptive_avg_pool2d(x, 6))


def alexnet_stages(model: AlexNet) -> list[tuple[str, nn.Module]]:
    return [
        ("conv1", model.conv1),
        ("conv2", nn.Sequential(model.pool1, model.conv2)),
        ("conv3", nn.Sequential(model.pool2, model.conv3)),
        ("conv4", model.conv4),
        ("conv5", model.conv5),
    ]


def _alexnet(name: str, batch_norm: bool) -> Architecture:
    return Architecture(
        name=name,
        build=lambda: AlexNet(batch_norm=batch_norm),
        layers=tuple(ALEXNET_POOLS),
        pools=ALEXNET_POOLS,
        stages=alexnet_stages,
        head_prefixes=("classifier.",),
        reference_input_size=227,
        default_layers=tuple(ALEXNET_POOLS),
    )


ARCHITECTURES.register("alexnet")(lambda: _alexnet("alexnet", False))
ARCHITECTURES.register("alexnet_bn")(lambda: _alexnet("alexnet_bn", True))
