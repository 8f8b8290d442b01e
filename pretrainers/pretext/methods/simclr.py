"""`simclr`: SimCLR (Chen, Kornblith, Norouzi & Hinton, ICML 2020, "A Simple Framework for
Contrastive Learning of Visual Representations").

Two views of every image: random resized crop (area 8-100 %), horizontal flip, colour jitter of
strength s (brightness/contrast/saturation 0.8s, hue 0.2s) applied with probability 0.8,
grayscale with probability 0.2, optional Gaussian blur (kernel 10 % of the side, sigma 0.1-2,
probability 0.5; the paper uses it on ImageNet, not on CIFAR). Pooled trunk feature -> projection
MLP (Linear, BN, ReLU, Linear to 128) -> L2 normalisation; NT-Xent loss with temperature tau over
the 2N views: each view's positive is the other view of its image, the 2N - 2 other views are its
negatives.

Optimiser: the paper uses LARS (LR 0.3 x batch/256, weight decay 1e-6, warm-up + cosine); by
default this implementation uses SGD with momentum, linear warm-up and cosine decay (the loop's
schedule) for the small batches it is run with here; ``optimizer: lars`` (``--optimizer lars``)
gives the paper's optimiser (``pretrainers/pretext/lars.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms as T

from benchmark.datasets.images import IMAGENET_MEAN, IMAGENET_STD
from benchmark.options import Bool, Float, Int, Range, declare
from pretrainers.common import UNIT_INTERVAL

from ..method import PretextMethod


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent of N positive pairs (z1[i], z2[i]), mean over the 2N anchors. Rows are
    L2-normalised here; similarities are cosines / temperature; an anchor's denominator sums
    over every other view (its positive and 2N - 2 negatives), never itself."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def contrastive_views(size: int, crop_scale=(0.08, 1.0), jitter_strength: float = 1.0, jitter_p: float = 0.8,
                      grayscale_p: float = 0.2, blur_p: float = 0.5) -> T.Compose:
    """SimCLR's augmentation (MoCo v2 uses the same with strength 0.5 and crop area 20-100 %)."""
    s = jitter_strength
    steps = [
        T.RandomResizedCrop(size, scale=tuple(crop_scale)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=jitter_p),
        T.RandomGrayscale(p=grayscale_p),
    ]
    if blur_p > 0:
        kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # 10 % of the side, odd
        steps.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_p))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ProjectionHead(nn.Sequential):
    def __init__(self, dim: int, hidden: int, out: int, batch_norm: bool = True):
        norm = [nn.BatchNorm1d(hidden)] if batch_norm else []
        super().__init__(nn.Linear(dim, hidden), *norm, nn.ReLU(inplace=True), nn.Linear(hidden, out))


class SimCLR(PretextMethod):
    name = "simclr"
    options = declare({
        "temperature": Float(0.5, min=0, min_open=True),  # the paper's value for small batches (0.1 with LARS at 4096)
        "proj_dim": Int(128, min=1),
        "hidden_dim": Int(None, min=1),  # default: the trunk's embedding width, as in the paper
        "crop_scale": Range(UNIT_INTERVAL, [0.08, 1.0]),
        "jitter_strength": Float(1.0, min=0),
        "grayscale_p": Float(0.2, min=0, max=1),
        "blur": Bool(True),
    })
    # SGD stand-in for LARS: LR for the loop's batch sizes, weight decay 1e-6 as in the paper
    training = {"lr": 0.3, "momentum": 0.9, "weight_decay": 1e-6, "warmup_epochs": 1}
    trunks = ("torchvision", "timm")  # pooled features only: a timm ViT trains too

    def __init__(self, trunk, arch, image_size, **options):
        super().__init__(trunk, arch, image_size, **options)
        options = self.config  # validated, with the declared defaults
        dim = self.embed_dim
        self.projector = ProjectionHead(dim, options.hidden_dim or dim, options.proj_dim)
        self.temperature = float(options.temperature)
        self.transform = contrastive_views(image_size, options.crop_scale, options.jitter_strength,
                                           grayscale_p=options.grayscale_p, blur_p=0.5 if options.blur else 0.0)

    def sample(self, image: Image.Image, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"view1": self.augment(self.transform, image, generator),
                "view2": self.augment(self.transform, image, generator)}

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        n = batch["view1"].shape[0]
        z = self.projector(self.embed(torch.cat([batch["view1"], batch["view2"]])))
        loss = nt_xent(z[:n], z[n:], self.temperature)
        with torch.no_grad():  # does each view find its partner among the 2N - 1 others?
            zn = F.normalize(z, dim=1)
            sim = (zn @ zn.t()).fill_diagonal_(float("-inf"))
            partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
            acc = float((sim.argmax(1) == partner).float().mean())
        return loss, {"acc": acc}
