"""`exemplar`: every image is its own class (Dosovitskiy et al., NIPS 2014, "Exemplar CNN").

Dosovitskiy, Springenberg, Riedmiller & Brox, NIPS 2014 / TPAMI 2016, "Discriminative Unsupervised
Feature Learning with Exemplar Convolutional Neural Networks".

Every training image is a surrogate class. Its seed patch is the central ``image_size`` square of
the image resized so that its shorter side is ``context`` x ``image_size`` (the surroundings give
the geometric transformations real pixels to move in). Each view applies the paper's random
transformations, every magnitude uniform in the paper's range:
translation (up to 0.2 of the patch size per axis), scaling (0.7-1.4), rotation (+-20 degrees),
contrast 1 (the projections of the pixels on their principal colour components, computed per
seed patch, multiplied by factors in 0.5-2), contrast 2 (saturation and value raised to a power
in 0.25-4, multiplied by 0.7-1.4 and shifted by -0.1-0.1) and colour (hue shifted by -0.1-0.1 of
the circle); plus a random horizontal flip. ``views`` transformed copies of an image are put in
the same batch (the paper sampled many per seed offline). The label is the image's class: its
dataset index, or, with ``num_classes: K`` smaller than the dataset, the position of the image in
a fixed random subset of K images (the other images are ignored by the loss, as a K-class Exemplar
network trained on K seed patches). A linear classifier on the pooled trunk feature predicts it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms import functional as TF

from benchmark.errors import ConfigError
from benchmark.options import Float, Int, Range, declare
from pretrainers.common import POSITIVE

from ..method import PretextMethod
from ._trunk import SizedState, dataset_size, normalize

IGNORE = -100  # images outside the surrogate-class subset


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def contrast_pca(rgb: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Scale the projections of every pixel (float RGB, H x W x 3) on the image's principal colour
    components by ``factors`` (the mean colour is kept)."""
    pixels = rgb.reshape(-1, 3)
    mean = pixels.mean(0)
    _, vectors = np.linalg.eigh(np.cov((pixels - mean).T) + 1e-12 * np.eye(3))
    projected = (pixels - mean) @ vectors * factors
    return (projected @ vectors.T + mean).reshape(rgb.shape)


class Exemplar(SizedState, PretextMethod):
    name = "exemplar"
    options = declare({
        "num_classes": Int(None, min=2),  # surrogate classes: None = one per training image, or a subset size
        "views": Int(2, min=1),           # transformed views of each image per batch
        "context": Float(1.5, min=1),     # seed patch = central 1/context of the resized image's shorter side
        "translation": Float(0.2, min=0),  # the paper's ranges
        "scale": Range(POSITIVE, [0.7, 1.4]),
        "rotation": Float(20.0, min=0),
        "contrast_pca": Range(POSITIVE, [0.5, 2.0]),
        "contrast_power": Range(POSITIVE, [0.25, 4.0]),
        "contrast_multiply": Range(POSITIVE, [0.7, 1.4]),
        "contrast_add": Range(Float(), [-0.1, 0.1]),
        "hue": Range(Float(min=-0.5, max=0.5), [-0.1, 0.1]),
    })
    # Exemplar-CNN: SGD with momentum 0.9, lr 0.01, weight decay 4e-4 (dropout in the paper's net)
    training = {"lr": 0.01, "momentum": 0.9, "weight_decay": 4e-4}
    sized = ("class_of_image", "class_weight", "class_bias")  # rows: images, classes, classes

    def __init__(self, trunk, arch, image_size, **options):
        super().__init__(trunk, arch, image_size, **options)
        options = self.config  # validated, with the declared defaults
        self.class_weight = nn.Parameter(torch.zeros(0, self.embed_dim))
        self.class_bias = nn.Parameter(torch.zeros(0))
        self.register_buffer("class_of_image", torch.zeros(0, dtype=torch.long))
        self.register_buffer("init_seed", torch.randint(0, 2**62, ()))  # drawn from the loop's init seed

    def epoch_start(self, epoch, plain_loader, device) -> None:
        n = dataset_size(plain_loader)
        if self.num_images == n:
            return  # classes and classifier already made (first epoch, or restored from a checkpoint)
        self.set_classes(n)

    def set_classes(self, n: int) -> None:
        k = self.config.num_classes or n
        if k > n:
            raise ConfigError(f"exemplar: num_classes ({k}) is larger than the number of images ({n})")
        generator = torch.Generator().manual_seed(int(self.init_seed))
        classes = torch.full((n,), IGNORE, dtype=torch.long)
        members = torch.arange(n) if k == n else torch.randperm(n, generator=generator)[:k].sort().values
        classes[members] = torch.arange(k)
        self._resize("class_of_image", (n,))
        self.class_of_image.copy_(classes)
        self._resize("class_weight", (k, self.embed_dim))
        self._resize("class_bias", (k,))
        with torch.no_grad():
            self.class_weight.copy_(torch.empty(k, self.embed_dim).normal_(0, 0.01, generator=generator))
            self.class_bias.zero_()

    def seed_patch(self, image: Image.Image) -> Image.Image:
        size = self.image_size
        context = round(size * self.config.context)
        return TF.center_crop(TF.resize(image, context), [context, context])

    def view(self, patch: Image.Image, generator: torch.Generator) -> torch.Tensor:
        """One randomly transformed view of a seed patch (context x context PIL) -> normalised tensor."""
        cfg, size = self.config, self.image_size
        shift = [round(_uniform(generator, -cfg.translation, cfg.translation) * size) for _ in range(2)]
        out = TF.affine(patch, angle=_uniform(generator, -cfg.rotation, cfg.rotation), translate=shift,
                        scale=_uniform(generator, *cfg.scale), shear=[0.0, 0.0],
                        interpolation=TF.InterpolationMode.BILINEAR, fill=[124, 116, 104])
        out = TF.center_crop(out, [size, size])
        if float(torch.rand((), generator=generator)) < 0.5:
            out = TF.hflip(out)
        rgb = np.asarray(out, dtype=np.float64) / 255
        factors = np.array([_uniform(generator, *cfg.contrast_pca) for _ in range(3)])
        rgb = np.clip(contrast_pca(rgb, factors), 0, 1)
        hsv = np.asarray(Image.fromarray(np.round(rgb * 255).astype(np.uint8)).convert("HSV"), dtype=np.float64) / 255
        for channel in (1, 2):  # saturation, value
            power = math.exp(_uniform(generator, *(math.log(v) for v in cfg.contrast_power)))
            hsv[..., channel] = (hsv[..., channel] ** power * _uniform(generator, *cfg.contrast_multiply)
                                 + _uniform(generator, *cfg.contrast_add))
        hsv[..., 0] = (hsv[..., 0] + _uniform(generator, *cfg.hue)) % 1.0
        hsv = np.round(np.clip(hsv, 0, 1) * 255).astype(np.uint8)
        rgb = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"), dtype=np.float32) / 255
        return normalize(torch.from_numpy(rgb.copy()).permute(2, 0, 1))

    def sample(self, image: Image.Image, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        patch = self.seed_patch(image)
        views = torch.stack([self.view(patch, generator) for _ in range(self.config.views)])
        return {"views": views, "index": torch.tensor(index)}

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.num_images == 0:
            raise RuntimeError("exemplar: forward before epoch_start sized the surrogate classes")
        views = batch["views"]
        labels = self.class_of_image[batch["index"]].repeat_interleave(views.shape[1])
        logits = F.linear(self.embed(views.flatten(0, 1)), self.class_weight, self.class_bias)
        kept = labels != IGNORE
        if not kept.any():  # a batch of images outside the class subset: nothing to learn, no NaN
            return logits.sum() * 0.0, {"acc": 0.0}
        loss = F.cross_entropy(logits[kept], labels[kept])
        acc = (logits.argmax(1)[kept] == labels[kept]).float().mean()
        return loss, {"acc": float(acc)}
