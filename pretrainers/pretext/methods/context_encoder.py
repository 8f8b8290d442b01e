"""`context_encoder`: inpainting the image centre (Pathak et al., CVPR 2016, "Context Encoders").

Pathak, Krähenbühl, Donahue, Darrell & Efros, "Context Encoders: Feature Learning by Inpainting".

``mask: center`` (the paper's main setting): the central square of side ``mask_fraction`` x
image_size (64 of 128 px) is the region to predict; in the input, that square shrunk by
``overlap`` pixels per side (4 px in the reference code) is erased to the dataset mean (0 after
ImageNet normalisation). The trunk encodes the masked image; a channel-wise fully-connected layer
over the last map (the paper's bottleneck that connects every location without a dense layer's
cost), a 1x1 convolution and up-convolutions (transposed 4x4, stride 2, BN, ReLU) decode an image;
the reconstruction loss is the squared error over the predicted square, weighted ``overlap_weight``
(10) in its border band (visible in the input, which makes the prediction blend with the context)
and 1 inside, divided by the number of predicted values (the reference's weighted MSE).
``mask: random_blocks``: ``num_blocks`` random squares (side 1/8 to 1/4 of the image) are erased and
the loss covers exactly the erased pixels (weight 1).

Adversarial loss (``adversarial: true``, off by default; lambda_rec 0.999, lambda_adv 0.001 as in
the paper): a small convolutional discriminator sees real images and the context with the
prediction pasted in. With the loop's single optimiser the two players are updated
simultaneously, not alternately: the discriminator's BCE loss is computed on the detached
composite (no gradient to the generator), and the generator's adversarial term is computed with a
copy of the discriminator's parameters detached from the graph (``torch.func.functional_call``),
so it moves only the trunk and decoder; one backward of the sum gives each player exactly its own
gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms as T

from benchmark.datasets.images import IMAGENET_MEAN, IMAGENET_STD
from benchmark.errors import ConfigError
from benchmark.options import Bool, Choice, Float, Int, Range, declare
from pretrainers.common import UNIT_INTERVAL

from ..method import PretextMethod
from ._trunk import check_input_size


def center_region(size: int, fraction: float) -> tuple[int, int]:
    """(top-left offset, side) of the central square to predict."""
    side = round(size * fraction)
    return (size - side) // 2, side


class ChannelwiseFC(nn.Module):
    """Per channel, a fully-connected layer from the s x s map to an s x s map (no channel mixing)."""

    def __init__(self, channels: int, side: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, side * side, side * side) / side)
        self.bias = nn.Parameter(torch.zeros(channels, side * side))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)  # (B, C, s*s)
        return (torch.einsum("bci,cij->bcj", flat, self.weight) + self.bias).view_as(x)


def decoder(channels: int, side: int, image_size: int, width: int = 256) -> nn.Sequential:
    """Last trunk map (channels, side, side) -> (3, image_size, image_size)."""
    layers = [ChannelwiseFC(channels, side), nn.Conv2d(channels, width, 1), nn.BatchNorm2d(width),
              nn.ReLU(inplace=True)]
    for _ in range(max(0, math.ceil(math.log2(image_size / side)))):
        out = max(16, width // 2)
        layers += [nn.ConvTranspose2d(width, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        width = out
    layers += [nn.Upsample(size=(image_size, image_size), mode="bilinear", align_corners=False),
               nn.Conv2d(width, 3, 3, padding=1)]
    return nn.Sequential(*layers)


def discriminator() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 32, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(32, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(64, 1, 3, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class ContextEncoder(PretextMethod):
    name = "context_encoder"
    options = declare({
        "mask": Choice("center", "random_blocks"),  # center | random_blocks
        # side of the central square / image side
        "mask_fraction": Float(0.5, min=0, max=1, min_open=True, max_open=True),
        "overlap": Int(4, min=0),              # px of the predicted square left visible in the input
        "overlap_weight": Float(10.0, min=0),  # loss weight of that border band
        "num_blocks": Int(4, min=1),           # random_blocks: erased squares per image
        "decoder_width": Int(256, min=1),
        "adversarial": Bool(False),
        "rec_weight": Float(0.999, min=0),     # lambda_rec, lambda_adv (used when adversarial)
        "adv_weight": Float(0.001, min=0),
        "crop_scale": Range(UNIT_INTERVAL, [0.2, 1.0]),  # random crops of the resized image + flips (our choice)
    })
    # the paper trains with Adam (lr 2e-4 for the adversarial setting); with the loop's SGD:
    training = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}

    def __init__(self, trunk, arch, image_size, **options):
        super().__init__(trunk, arch, image_size, **options)
        options = self.config  # validated, with the declared defaults
        _, side = center_region(image_size, options.mask_fraction)
        if options.mask == "center" and not (0 < side and 2 * options.overlap < side):
            raise ConfigError(f"context_encoder: mask_fraction {options.mask_fraction} and overlap "
                              f"{options.overlap} leave nothing to erase at image_size {image_size}")
        channels, map_side, _ = check_input_size(self, image_size, "image_size")
        self.decoder = decoder(channels, map_side, image_size, options.decoder_width)
        self.discriminator = discriminator() if options.adversarial else None
        self.transform = T.Compose([
            T.RandomResizedCrop(image_size, scale=tuple(options.crop_scale)), T.RandomHorizontalFlip(),
            T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def masks(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(erased (H, W) bool, loss weights (H, W)) for one image."""
        size, cfg = self.image_size, self.config
        erased = torch.zeros(size, size, dtype=torch.bool)
        weights = torch.zeros(size, size)
        if cfg.mask == "center":
            top, side = center_region(size, cfg.mask_fraction)
            inner = slice(top + cfg.overlap, top + side - cfg.overlap)
            weights[top:top + side, top:top + side] = cfg.overlap_weight
            weights[inner, inner] = 1.0
            erased[inner, inner] = True
            return erased, weights
        for _ in range(cfg.num_blocks):
            side = int(torch.randint(max(1, size // 8), max(2, size // 4) + 1, (1,), generator=generator))
            y, x = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=generator))
            erased[y:y + side, x:x + side] = True
        return erased, erased.float()

    def sample(self, image: Image.Image, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        target = self.augment(self.transform, image, generator)
        erased, weights = self.masks(generator)
        return {"input": target.masked_fill(erased, 0.0), "target": target, "erased": erased, "weights": weights}

    @staticmethod
    def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Weighted squared error over the predicted region, per predicted value."""
        weights = weights.unsqueeze(1)  # (B, 1, H, W)
        error = (weights * (prediction - target) ** 2).sum()
        return error / ((weights > 0).sum() * prediction.shape[1]).clamp_min(1)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        prediction = self.decoder(self.trunk_features(batch["input"]))
        rec = self.reconstruction_loss(prediction, batch["target"], batch["weights"])
        if self.discriminator is None:
            return rec, {"rec": float(rec.detach())}
        region = (batch["weights"] > 0).unsqueeze(1)
        composite = torch.where(region, prediction, batch["input"])
        real = torch.ones(len(composite), 1, device=composite.device)
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        fooled = torch.func.functional_call(self.discriminator, frozen, (composite,))
        adv = F.binary_cross_entropy_with_logits(fooled, real)
        d_loss = (F.binary_cross_entropy_with_logits(self.discriminator(batch["target"]), real)
                  + F.binary_cross_entropy_with_logits(self.discriminator(composite.detach()), 0 * real))
        loss = self.config.rec_weight * rec + self.config.adv_weight * adv + d_loss
        return loss, {"rec": float(rec.detach()), "adv": float(adv.detach()), "d_loss": float(d_loss.detach())}
