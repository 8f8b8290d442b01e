"""Dilated ResNet (output stride 8) + pyramid pooling (PSPNet) decoder for dense prediction.

``dilate_resnet`` converts a copy of a torchvision ResNet (BasicBlock or Bottleneck) in place:
res4 (layer3) and res5 (layer4) lose their stride 2 and their 3x3 convolutions are dilated by 2
and 4. In the first block of each converted stage the convolution that carried the stride gets
the PREVIOUS dilation (1 in res4, 2 in res5) and every later 3x3 convolution the new one, the
1x1 shortcut's stride becomes 1, and padding = dilation keeps the map size. This is the "atrous"
conversion: the converted network computes the original one densely, so its res5 map sampled
every 4 pixels equals the original res5 map (tests check it for resnet18 and resnet50), and for
Bottleneck ResNets it is exactly torchvision's ``replace_stride_with_dilation=[False, True, True]``
(which refuses BasicBlock ResNets; tests compare with it).

``NormalsNet``: conv1..res4 frozen (no gradients, BatchNorm in eval mode: the trunk's weights and
statistics are bit-identical after training), res5 trained with its BatchNorm statistics frozen
(eval mode; affine parameters trained, as in Detectron-style fine-tuning with small batches), and
the PSP decoder (bins 1, 2, 3, 6) trained; its output (``out_channels`` per pixel: the codebook's
logits or a 3-vector) is upsampled bilinearly to the input size.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import ConfigError

PSP_BINS = (1, 2, 3, 6)


def _is_resnet(model: nn.Module) -> bool:
    return all(hasattr(model, name) for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                                  "layer3", "layer4"))


def _set_conv(conv: nn.Conv2d, stride: int, dilation: int) -> None:
    conv.stride = (stride, stride)
    if conv.kernel_size != (1, 1):
        conv.dilation = (dilation, dilation)
        conv.padding = (dilation * (conv.kernel_size[0] // 2), dilation * (conv.kernel_size[1] // 2))


def _dilate_stage(stage: nn.Sequential, previous: int, dilation: int) -> None:
    for index, block in enumerate(stage):
        convs = [m for name, m in block.named_children() if name.startswith("conv") and isinstance(m, nn.Conv2d)]
        for conv in convs:
            if conv.kernel_size == (1, 1):
                _set_conv(conv, 1, 1)
            elif index == 0 and conv.stride != (1, 1):
                _set_conv(conv, 1, previous)  # the strided conv still sees the previous resolution
            else:
                _set_conv(conv, 1, dilation)
        if getattr(block, "downsample", None) is not None:
            for m in block.downsample.modules():
                if isinstance(m, nn.Conv2d):
                    m.stride = (1, 1)
        if hasattr(block, "stride"):
            block.stride = 1


def dilate_resnet(model: nn.Module) -> nn.Module:
    """A deep copy of the torchvision ResNet ``model`` with output stride 8 (res4 dilation 2, res5
    dilation 4); ``model`` itself is untouched."""
    if not _is_resnet(model):
        raise ConfigError(f"the dilated backbone needs a torchvision ResNet (conv1, layer1..layer4); "
                          f"got {type(model).__name__}")
    model = copy.deepcopy(model)
    _dilate_stage(model.layer3, 1, 2)
    _dilate_stage(model.layer4, 2, 4)
    return model


def stage_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    for name in ("bn3", "bn2"):
        if hasattr(last, name):
            return getattr(last, name).num_features
    raise ConfigError(f"cannot tell the output channels of {type(last).__name__}")


class PyramidPooling(nn.Module):
    """PSPNet head: per bin b, adaptive average pool to b x b -> 1x1 conv (C/4) -> BN -> ReLU ->
    bilinear upsampling; concatenated with the input -> 3x3 conv -> BN -> ReLU -> dropout 0.1 ->
    1x1 conv to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, channels: int = 512, bins=PSP_BINS,
                 dropout: float = 0.1):
        super().__init__()
        reduced = max(in_channels // len(bins), 1)
        self.bins = tuple(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_channels, reduced, 1, bias=False),
                          nn.BatchNorm2d(reduced), nn.ReLU(inplace=True))
            for b in self.bins
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels + reduced * len(self.bins), channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Dropout2d(dropout),
        )
        self.classifier = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False) for stage in self.stages]
        return self.classifier(self.bottleneck(torch.cat([x, *pooled], dim=1)))


class NormalsNet(nn.Module):
    """Frozen dilated conv1..res4, trained res5 (frozen BN statistics) and PSP decoder."""

    def __init__(self, resnet: nn.Module, out_channels: int, decoder_channels: int = 512, seed: int = 0):
        super().__init__()
        net = dilate_resnet(resnet)
        self.frozen = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
        self.frozen.requires_grad_(False)
        self.res5 = net.layer4
        self.res5.requires_grad_(True)
        with torch.random.fork_rng(devices=[]):  # the decoder's init depends on the seed only
            torch.manual_seed(seed)
            self.decoder = PyramidPooling(stage_channels(net.layer4), out_channels, decoder_channels)
        self.train()

    def train(self, mode: bool = True) -> "NormalsNet":
        super().train(mode)
        self.frozen.eval()  # frozen trunk: its BatchNorm statistics never change
        self.res5.eval()  # res5 BatchNorm: statistics frozen, affine parameters trained
        return self

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What training changes: res5 and the decoder (the checkpoint's content)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("frozen.")}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            trunk = self.frozen(x)
        return self.res5(trunk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.features(x))
        return F.interpolate(out.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
