"""`rotation`: RotNet (Gidaris, Singh & Komodakis, ICLR 2018, "Unsupervised Representation
Learning by Predicting Image Rotations").

Each image is augmented once (random resized crop of the resized image + horizontal flip) and
fed in all four rotations, 0/90/180/270 degrees, together in the same batch; the network
classifies which rotation was applied (4-way cross-entropy) from the pooled trunk feature. The
paper found feeding all four rotations of an image at once better than one random rotation.
Label ``k`` means ``torch.rot90(image, k, dims=(1, 2))``: k quarter turns counter-clockwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms as T

from benchmark.datasets.images import IMAGENET_MEAN, IMAGENET_STD
from benchmark.options import Choice, Range, declare
from pretrainers.common import UNIT_INTERVAL

from ..method import PretextMethod

ROTATIONS = 4


def rotations(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(4, C, H, W) the image turned k quarter turns for k = 0..3, and the labels 0..3."""
    return torch.stack([torch.rot90(image, k, dims=(1, 2)) for k in range(ROTATIONS)]), torch.arange(ROTATIONS)


class Rotation(PretextMethod):
    name = "rotation"
    options = declare({
        "head": Choice("linear", "mlp"),  # linear | mlp (hidden layer of embed_dim units, BN, ReLU)
        # random resized crop area: RotNet crops moderately (no 8 % crops)
        "crop_scale": Range(UNIT_INTERVAL, [0.35, 1.0]),
    })
    # RotNet: SGD momentum 0.9, weight decay 5e-4, LR 0.1 at batch 192 (x0.2 steps; cosine here)
    training = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
    trunks = ("torchvision", "timm")  # pooled features only: a timm ViT trains too

    def __init__(self, trunk, arch, image_size, **options):
        super().__init__(trunk, arch, image_size, **options)
        options = self.config  # validated, with the declared defaults
        head = options.head
        dim = self.embed_dim
        self.head = nn.Linear(dim, ROTATIONS) if head == "linear" else nn.Sequential(
            nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True), nn.Linear(dim, ROTATIONS))
        scale = tuple(options.crop_scale)
        self.transform = T.Compose([
            T.RandomResizedCrop(image_size, scale=scale),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def sample(self, image: Image.Image, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        images, labels = rotations(self.augment(self.transform, image, generator))
        return {"images": images, "labels": labels}

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["images"].flatten(0, 1)  # (B, 4, C, H, W) -> (4B, C, H, W)
        labels = batch["labels"].flatten()
        logits = self.head(self.embed(images))
        loss = F.cross_entropy(logits, labels)
        return loss, {"acc": float((logits.argmax(1) == labels).float().mean())}
