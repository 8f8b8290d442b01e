"""`colorization`: Zhang, Isola & Efros, ECCV 2016, "Colorful Image Colorization".

The trunk sees only the lightness: the L channel of the CIE Lab image, rendered as the achromatic
sRGB image of the same lightness (Lab (L, 0, 0) -> R = G = B) and ImageNet-normalised, so conv1
keeps its 3-channel shape (the checkpoint loads into the benchmark) and sees at pretraining time
what a grey image looks like at evaluation time. A head on the trunk's last spatial map (3x3 conv,
BN, ReLU, 1x1 conv to Q bins) gives logits that are bilinearly upsampled to the target grid (the
image at 1/``downsample`` resolution, 1/4 as in the paper); the ab target is the image's ab
averaged over ``downsample`` x ``downsample`` blocks.

Output space: the ab plane quantised on a grid of ``grid`` units (10 in the paper) restricted to
in-gamut bins (``gamut_bins``):
- ``occupied`` (default): bins whose cell holds the ab of some sRGB colour (the projection of the
  sRGB cube's surface, sampled on a 256-level grid per face: a solid's projection is its
  boundary's). Grid 10: 261 bins. Every pixel's own bin is a class, so soft targets peak on it.
- ``centre``: bins whose centre (a, b) is reachable, i.e. Lab (L, a, b) is inside the sRGB cube for
  some L (L swept in steps of 0.05). Grid 10: 229 bins.
Neither gives the paper's 313 (its released ``pts_in_hull.npy``); that set reaches beyond the
sRGB gamut of this D65 conversion (a in [-90, 100], b in [-110, 90] on a 20 x 21 grid), we do not
reproduce how it was made, so we compute ours and say which.

Targets are soft-encoded over the 5 nearest bins with a Gaussian (sigma 5) and normalised; the
loss is the multinomial cross-entropy with class rebalancing: the empirical bin distribution of
the training images (computed once, in the first ``epoch_start``, from the plain loader's pixels),
smoothed with a Gaussian (sigma 5) over the bin centres, mixed with the uniform distribution
(lambda 0.5); w ~ 1 / mixture, normalised so that sum_q p~_q w_q = 1 (the smoothed empirical
distribution, as the paper and its code do); a pixel's weight is that of its target's peak bin.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms as T

from benchmark.errors import ConfigError
from benchmark.options import Bool, Choice, Float, Int, Range, declare
from pretrainers.common import UNIT_INTERVAL

from ..method import PretextMethod
from ._trunk import check_input_size, denormalize, normalize

# sRGB (D65) -> XYZ, the matrix and white point scikit-image's rgb2lab uses
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_WHITE_D65 = (0.95047, 1.0, 1.08883)
_EPSILON, _KAPPA = 0.008856, 7.787  # CIE: f(t) = t^(1/3) above epsilon, kappa t + 16/116 below
AB_RANGE = 110  # |a|, |b| of sRGB colours stay below 110


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], channels first (3, ...) -> CIE Lab (L in [0, 100]), D65 white. Agrees with
    scikit-image 0.26's rgb2lab (and lab_to_rgb with its lab2rgb) to 1e-13 on 100k random colours."""
    matrix = torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    white = torch.tensor(_WHITE_D65, dtype=rgb.dtype, device=rgb.device).view(3, *([1] * (rgb.ndim - 1)))
    linear = torch.where(rgb > 0.04045, ((rgb.clamp_min(0) + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,j...->i...", matrix, linear) / white
    f = torch.where(xyz > _EPSILON, xyz.clamp_min(_EPSILON) ** (1 / 3), _KAPPA * xyz + 16 / 116)
    return torch.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_lab`` (no clipping: out-of-gamut colours leave [0, 1])."""
    matrix = torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)).to(lab.dtype).to(lab.device)
    white = torch.tensor(_WHITE_D65, dtype=lab.dtype, device=lab.device).view(3, *([1] * (lab.ndim - 1)))
    fy = (lab[0] + 16) / 116
    f = torch.stack([fy + lab[1] / 500, fy, fy - lab[2] / 200])
    xyz = torch.where(f > _EPSILON ** (1 / 3), f ** 3, (f - 16 / 116) / _KAPPA) * white
    linear = torch.einsum("ij,j...->i...", matrix, xyz)
    return torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(0) ** (1 / 2.4) - 0.055, 12.92 * linear)


def lightness_to_gray(lightness: torch.Tensor) -> torch.Tensor:
    """L (..., H, W) -> the sRGB grey (3, ..., H, W) of that lightness: linear R = G = B = Y, the
    relative luminance with L = 116 f(Y) - 16 (the matrix's luminance row sums to 1, so the grey's
    L is exactly ``lightness``)."""
    f = (lightness + 16) / 116
    luminance = torch.where(f > _EPSILON ** (1 / 3), f ** 3, (f - 16 / 116) / _KAPPA)
    grey = torch.where(luminance > 0.0031308, 1.055 * luminance.clamp_min(0) ** (1 / 2.4) - 0.055, 12.92 * luminance)
    return grey.clamp(0, 1).expand(3, *grey.shape).clone()


@lru_cache(maxsize=8)
def gamut_bins(grid: int, mode: str = "occupied") -> torch.Tensor:
    """(Q, 2) float64 ab centres (multiples of ``grid``) of the in-gamut bins, sorted by (a, b)."""
    if mode == "occupied":
        levels = torch.linspace(0, 1, 256, dtype=torch.float64)
        u, v = (t.reshape(-1) for t in torch.meshgrid(levels, levels, indexing="ij"))
        faces = []
        for fixed in (0.0, 1.0):
            w = torch.full_like(u, fixed)
            faces += [torch.stack([w, u, v]), torch.stack([u, w, v]), torch.stack([u, v, w])]
        ab = rgb_to_lab(torch.cat(faces, 1))[1:].T
        return torch.unique(torch.round(ab / grid), dim=0) * grid
    if mode == "centre":
        steps = torch.arange(-(AB_RANGE // grid) - 1, AB_RANGE // grid + 2, dtype=torch.float64) * grid
        a, b = (t.reshape(-1) for t in torch.meshgrid(steps, steps, indexing="ij"))
        reachable = torch.zeros(a.numel(), dtype=torch.bool)
        for lightness in torch.arange(0, 100.0001, 0.05, dtype=torch.float64).split(200):
            lab = torch.stack(torch.broadcast_tensors(lightness[:, None], a[None], b[None]))
            rgb = lab_to_rgb(lab)
            reachable |= ((rgb >= 0) & (rgb <= 1)).all(0).any(0)
        return torch.stack([a[reachable], b[reachable]], 1)
    raise ConfigError(f"colorization: gamut_bins must be 'occupied' or 'centre', got {mode!r}")


def soft_encode(ab: torch.Tensor, centres: torch.Tensor, neighbours: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """ab (B, 2, H, W) -> (B, Q, H, W): a Gaussian over the ``neighbours`` nearest bins, sum 1."""
    points = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    distances = torch.cdist(points, centres.to(points))
    nearest, which = distances.topk(neighbours, dim=1, largest=False)
    weights = torch.exp(-nearest ** 2 / (2 * sigma ** 2))
    weights = weights / weights.sum(1, keepdim=True)
    encoded = torch.zeros(points.shape[0], centres.shape[0], dtype=ab.dtype, device=ab.device)
    encoded.scatter_(1, which, weights)
    batch, _, height, width = ab.shape
    return encoded.view(batch, height, width, -1).permute(0, 3, 1, 2)


def rebalancing_weights(counts: torch.Tensor, centres: torch.Tensor, sigma: float = 5.0,
                        mix: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Empirical bin counts -> (smoothed distribution p~, weights w) with w ~ ((1-mix) p~ + mix/Q)^-1
    and sum(p~ w) = 1."""
    p = counts.double() / counts.sum()
    kernel = torch.exp(-torch.cdist(centres.double(), centres.double()) ** 2 / (2 * sigma ** 2))
    smoothed = kernel @ p
    smoothed = smoothed / smoothed.sum()
    weights = 1.0 / ((1 - mix) * smoothed + mix / len(counts))
    return smoothed, weights / (smoothed * weights).sum()


class Colorization(PretextMethod):
    name = "colorization"
    options = declare({
        "grid": Int(10, min=1),                 # ab quantisation step
        "gamut_bins": Choice("occupied", "centre"),  # occupied | centre (see the module docstring)
        "neighbours": Int(5, min=1),            # soft-encoding: nearest bins ...
        "sigma": Float(5.0, min=0, min_open=True),  # ... weighted by a Gaussian of this width (ab units)
        "rebalance": Bool(True),                # class rebalancing from the training images' ab distribution
        "prior_sigma": Float(5.0, min=0, min_open=True),  # smoothing of the empirical distribution
        "prior_mix": Float(0.5, min=0, max=1),  # lambda: weight of the uniform distribution in the mixture
        "downsample": Int(4, min=1),            # targets and predictions at 1/4 of the input resolution
        "head_channels": Int(256, min=1),
        # mild random resized crops + flips (the paper: random crops of resized images)
        "crop_scale": Range(UNIT_INTERVAL, [0.5, 1.0]),
    })
    # Zhang et al. trained with ADAM (lr 3e-5); with the loop's SGD a moderate LR is used
    training = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}

    def __init__(self, trunk, arch, image_size, **options):
        super().__init__(trunk, arch, image_size, **options)
        options = self.config  # validated, with the declared defaults
        if image_size % options.downsample:
            raise ConfigError(f"colorization: image_size {image_size} must be a multiple of downsample "
                              f"{options.downsample}")
        self.register_buffer("centres", gamut_bins(int(options.grid), options.gamut_bins).float().clone())
        bins = len(self.centres)
        channels = check_input_size(self, image_size, "image_size")[0]
        hidden = options.head_channels
        self.head = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
                                  nn.ReLU(inplace=True), nn.Conv2d(hidden, bins, 1))
        # class-rebalancing state: filled by the first epoch_start, saved with the checkpoint
        self.register_buffer("prior", torch.full((bins,), 1.0 / bins))
        self.register_buffer("class_weights", torch.ones(bins))
        self.register_buffer("prior_ready", torch.zeros((), dtype=torch.bool))
        self.transform = T.Compose([T.RandomResizedCrop(image_size, scale=tuple(options.crop_scale)),
                                    T.RandomHorizontalFlip(), T.ToTensor()])

    def sample(self, image: Image.Image, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        lab = rgb_to_lab(self.augment(self.transform, image, generator))
        ab = F.avg_pool2d(lab[1:][None], self.config.downsample)[0]
        return {"input": normalize(lightness_to_gray(lab[0])), "ab": ab}

    def logits(self, inputs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.head(self.trunk_features(inputs)), size=size, mode="bilinear", align_corners=False)

    def loss_from_logits(self, logits: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        targets = soft_encode(ab, self.centres, self.config.neighbours, self.config.sigma)
        pixel_loss = -(targets * F.log_softmax(logits, 1)).sum(1)
        if self.config.rebalance:
            pixel_loss = pixel_loss * self.class_weights[targets.argmax(1)]
        return pixel_loss.mean()

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        ab = batch["ab"]
        logits = self.logits(batch["input"], tuple(ab.shape[-2:]))
        loss = self.loss_from_logits(logits, ab)
        with torch.no_grad():
            nearest = torch.cdist(ab.permute(0, 2, 3, 1).reshape(-1, 2), self.centres).argmin(1)
            acc = (logits.argmax(1).reshape(-1) == nearest).float().mean()
        return loss, {"bin_acc": float(acc)}

    @torch.no_grad()
    def bin_counts(self, plain_loader, device) -> torch.Tensor:
        """Pixel counts per bin (nearest centre) over the plain loader's images."""
        counts = torch.zeros(len(self.centres), dtype=torch.float64, device=device)
        for images, _ in plain_loader:
            rgb = denormalize(images.to(device).float()).clamp(0, 1)
            ab = rgb_to_lab(rgb.permute(1, 0, 2, 3))[1:].reshape(2, -1).T
            for part in ab.split(65536):  # pixels x bins distances, in chunks
                nearest = torch.cdist(part, self.centres.to(device)).argmin(1)
                counts += torch.bincount(nearest, minlength=len(self.centres)).double()
        return counts

    def epoch_start(self, epoch, plain_loader, device) -> None:
        if not self.config.rebalance or bool(self.prior_ready):
            return
        smoothed, weights = rebalancing_weights(self.bin_counts(plain_loader, device), self.centres,
                                                self.config.prior_sigma, self.config.prior_mix)
        self.prior.copy_(smoothed)
        self.class_weights.copy_(weights)
        self.prior_ready.fill_(True)
