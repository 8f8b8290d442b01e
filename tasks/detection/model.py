"""Fast R-CNN with a ResNet-C4 backbone, built from a benchmark backbone's weights.

conv1..res4 (torchvision conv1/bn1/maxpool/layer1..layer3, stride 16) give the feature map;
each proposal is cut out by RoIPool or RoIAlign (``roi_size`` x ``roi_size``, reference 14) and
run through res5 (layer4, stride 2) as the box head, then global average pooling, a (classes+1)
classifier and class-specific box regression: the Detectron "ResNet50_fast_rcnn" model the
reference trains. Every BatchNorm becomes a FrozenBatchNorm2d (statistics and affine fixed, as
Detectron's AffineChannel / detectron2's FrozenBN). ``freeze_at`` as Detectron's FREEZE_AT: 4
freezes conv1..res4 (the frozen benchmark), 0 trains every layer (full fine-tuning).

The network is deep-copied: the benchmark's frozen backbone is never trained in place.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.ops import roi_align, roi_pool
from torchvision.ops.misc import FrozenBatchNorm2d

from benchmark.errors import ConfigError

from . import NAME

C4_ATTRIBUTES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "fc")
STAGES = ("stem", "res2", "res3", "res4", "res5")
FEATURE_STRIDE = 16


def check_c4(network: nn.Module, arch_name: str) -> None:
    missing = [a for a in C4_ATTRIBUTES if not hasattr(network, a)]
    if missing:
        raise ConfigError(f"{NAME} needs a ResNet with the C4 structure (conv1, layer1..layer4); "
                          f"architecture {arch_name} has no {', '.join(missing)}. Use a ResNet (resnet18/34/50/...)")


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d -> FrozenBatchNorm2d with the same statistics and affine parameters."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                frozen.weight.copy_(child.weight if child.affine else torch.ones_like(frozen.weight))
                frozen.bias.copy_(child.bias if child.affine else torch.zeros_like(frozen.bias))
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


class FastRCNNC4(nn.Module):
    def __init__(self, network: nn.Module, arch_name: str, num_classes: int = 20, roi_size: int = 14,
                 roi_op: str = "pool", sampling_ratio: int = 0, freeze_at: int = 4,
                 generator: torch.Generator | None = None):
        super().__init__()
        check_c4(network, arch_name)
        if roi_op not in ("pool", "align"):
            raise ConfigError(f"{NAME}: roi_op must be 'pool' (RoIPool, the reference) or 'align', got {roi_op!r}")
        if not (isinstance(freeze_at, int) and 0 <= freeze_at <= 5):
            raise ConfigError(f"{NAME}: freeze_at must be 0..5 (stages frozen from conv1), got {freeze_at!r}")
        net = freeze_batchnorm(copy.deepcopy(network))
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.res2, self.res3, self.res4, self.res5 = net.layer1, net.layer2, net.layer3, net.layer4
        dim = net.fc.in_features
        self.cls_score = nn.Linear(dim, num_classes + 1)
        self.bbox_pred = nn.Linear(dim, 4 * (num_classes + 1))
        with torch.no_grad():  # Detectron's initialisation of the predictors
            self.cls_score.weight.normal_(0, 0.01, generator=generator)
            self.bbox_pred.weight.normal_(0, 0.001, generator=generator)
            self.cls_score.bias.zero_()
            self.bbox_pred.bias.zero_()
        self.num_classes, self.roi_size = num_classes, roi_size
        self.roi_op, self.sampling_ratio = roi_op, sampling_ratio
        self.freeze_at = freeze_at
        for index, stage in enumerate(STAGES):
            getattr(self, stage).requires_grad_(index >= freeze_at)

    def stage_modules(self) -> list[nn.Module]:
        return [getattr(self, stage) for stage in STAGES]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """res4 feature map (stride 16); the frozen stages run without building a graph."""
        x = images
        for index, stage in enumerate(STAGES[:4]):
            if index < self.freeze_at:
                with torch.no_grad():
                    x = getattr(self, stage)(x)
            else:
                x = getattr(self, stage)(x)
        return x

    def box_head(self, feature_maps: list[torch.Tensor], rois: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits (R, classes+1) and box deltas (R, 4 (classes+1)) of the RoIs of each image
        (continuous boxes in the scaled image's pixels)."""
        pooled = []
        for fmap, boxes in zip(feature_maps, rois):
            if self.roi_op == "pool":
                pooled.append(roi_pool(fmap, [boxes], self.roi_size, 1.0 / FEATURE_STRIDE))
            else:
                pooled.append(roi_align(fmap, [boxes], self.roi_size, 1.0 / FEATURE_STRIDE, self.sampling_ratio))
        x = self.res5(torch.cat(pooled)).mean((2, 3))
        return self.cls_score(x), self.bbox_pred(x)
