"""`pirl`: jigsaw-invariant representations with a memory bank (Misra & van der Maaten, CVPR 2020).

"Self-Supervised Learning of Pretext-Invariant Representations".

Two views of each image: the image itself (random resized crop, flip, colour jitter, greyscale)
and its jigsaw transform (another random resized crop cut into a ``grid`` x ``grid`` grid; from
each cell a random ``tile_fraction`` sub-crop (64 of 85 px in the paper); the tiles shuffled by a
random permutation). f(v_I): the image's pooled trunk feature -> linear -> 128-d; g(v_It): every
tile through the same trunk -> linear -> 128-d, the tiles' vectors concatenated in their shuffled
order -> linear -> 128-d; both L2-normalised.

A memory bank holds one 128-d vector per image, m_I, updated after every step with the image
representations of the batch: m_I <- normalise(0.5 m_I + 0.5 f(v_I)). The loss is the paper's
    L = lambda * L_NCE(m_I, g(v_It)) + (1 - lambda) * L_NCE(m_I, f(v_I)),  lambda = 0.5,
    L_NCE(m_I, x) = -log h(m_I, x) - sum_{I' in negatives} log(1 - h(m_I', x)),
with s = cosine / tau (tau 0.07) and the NCE posterior of Wu et al. 2018 that the paper builds on:
h = P / (P + K/N), P = exp(s) / Z, K negatives drawn uniformly from the bank, N images, Z the
normalising constant estimated once on the first batch (mean of exp(s) over its negatives times N)
and then kept (a buffer, saved with the checkpoint). One set of K negatives (with replacement) is
drawn per batch and shared by its images, to keep the memory at K x 128 instead of B x K x 128.
The bank starts from random unit vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms as T

from benchmark.datasets.images import IMAGENET_MEAN, IMAGENET_STD
from benchmark.errors import ConfigError
from benchmark.options import Float, Int, Range, declare
from pretrainers.common import UNIT_INTERVAL

from ..method import PretextMethod
from ._trunk import SizedState, check_input_size, dataset_size


def nce_loss(memory_positive: torch.Tensor, x: torch.Tensor, negatives: torch.Tensor, temperature: float,
             num_data: int, z: float) -> torch.Tensor:
    """Mean over the batch of -log h(m_I, x) - sum_k log(1 - h(m_k, x)); all vectors unit-norm."""
    noise = negatives.shape[0] / num_data  # K * P_noise, P_noise = 1/N
    positive = torch.exp((memory_positive * x).sum(1) / temperature) / z
    negative = torch.exp(x @ negatives.T / temperature) / z
    log_h_positive = torch.log(positive / (positive + noise))
    log_one_minus_h = torch.log(noise / (negative + noise))
    return -(log_h_positive + log_one_minus_h.sum(1)).mean()


class PIRL(SizedState, PretextMethod):
    name = "pirl"
    options = declare({
        "grid": Int(3, min=1),
        "tile_fraction": Float(0.75, min=0, max=1, min_open=True),  # 64/85: random sub-crop of each cell
        "dim": Int(128, min=1),
        "temperature": Float(0.07, min=0, min_open=True),
        "num_negatives": Int(32000, min=1),
        "memory_momentum": Float(0.5, min=0, max=1),
        "loss_lambda": Float(0.5, min=0, max=1),
        "crop_scale": Range(UNIT_INTERVAL, [0.08, 1.0]),
    })
    # PIRL: SGD, lr 0.12 (batch 1024 over 32 GPUs), momentum 0.9, weight decay 1e-4
    training = {"lr": 0.12, "momentum": 0.9, "weight_decay": 1e-4}
    sized = ("memory",)

    def __init__(self, trunk, arch, image_size, **options):
        super().__init__(trunk, arch, image_size, **options)
        options = self.config  # validated, with the declared defaults
        grid = options.grid
        self.tile_size = int(image_size // grid * options.tile_fraction)
        if self.tile_size < 1:
            raise ConfigError(f"pirl: image_size {image_size} is too small for a {grid}x{grid} grid")
        check_input_size(self, self.tile_size, "the tile size (image_size / grid x tile_fraction)")
        dim = options.dim
        self.image_head = nn.Linear(self.embed_dim, dim)
        self.tile_head = nn.Linear(self.embed_dim, dim)
        self.jigsaw_head = nn.Linear(grid * grid * dim, dim)
        self.register_buffer("memory", torch.zeros(0, dim))
        self.register_buffer("z", torch.zeros((), dtype=torch.float64))  # NCE constant, 0 = not estimated
        self.register_buffer("init_seed", torch.randint(0, 2**62, ()))
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.image_transform = T.Compose([
            T.RandomResizedCrop(image_size, scale=tuple(options.crop_scale)), T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(0.2),
            T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.jigsaw_transform = T.Compose([
            T.RandomResizedCrop(image_size, scale=tuple(options.crop_scale)), T.RandomHorizontalFlip(),
            T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def epoch_start(self, epoch, plain_loader, device) -> None:
        n = dataset_size(plain_loader)
        if self.num_images != n:  # first epoch: a bank of random unit vectors (restored ones are kept)
            self._resize("memory", (n, self.config.dim))
            generator = torch.Generator().manual_seed(int(self.init_seed))
            self.memory.copy_(F.normalize(torch.rand(n, self.config.dim, generator=generator) - 0.5, dim=1))

    def tiles(self, view: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(grid*grid, 3, t, t): a random sub-crop of every cell, in a random order."""
        grid, tile = self.config.grid, self.tile_size
        cell = view.shape[-1] // grid
        out = []
        for row in range(grid):
            for col in range(grid):
                dy, dx = (int(v) for v in torch.randint(0, cell - tile + 1, (2,), generator=generator))
                y, x = row * cell + dy, col * cell + dx
                out.append(view[:, y:y + tile, x:x + tile])
        return torch.stack(out)[torch.randperm(grid * grid, generator=generator)]

    def sample(self, image: Image.Image, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        view = self.augment(self.image_transform, image, generator)
        jigsaw = self.tiles(self.augment(self.jigsaw_transform, image, generator), generator)
        return {"image": view, "tiles": jigsaw, "index": torch.tensor(index)}

    def representations(self, image: torch.Tensor, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = F.normalize(self.image_head(self.embed(image)), dim=1)
        per_tile = self.tile_head(self.embed(tiles.flatten(0, 1))).view(len(tiles), -1)
        return f, F.normalize(self.jigsaw_head(per_tile), dim=1)

    @torch.no_grad()
    def update_memory(self, indices: torch.Tensor, features: torch.Tensor) -> None:
        momentum = self.config.memory_momentum
        self.memory[indices] = F.normalize(momentum * self.memory[indices] + (1 - momentum) * features, dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.num_images == 0:
            raise RuntimeError("pirl: forward before epoch_start made the memory bank")
        indices = batch["index"]
        f, g = self.representations(batch["image"], batch["tiles"])
        n, temperature = self.num_images, self.config.temperature
        negatives = self.memory[torch.randint(n, (self.config.num_negatives,), device=self.memory.device)]
        if float(self.z) == 0.0:  # Wu et al.: Z from the first batch, then fixed
            with torch.no_grad():
                self.z.fill_(float(torch.exp(g @ negatives.T / temperature).mean()) * n)
        z = float(self.z)
        positives = self.memory[indices]
        jigsaw = nce_loss(positives, g, negatives, temperature, n, z)
        plain = nce_loss(positives, f, negatives, temperature, n, z)
        lam = self.config.loss_lambda
        self._pending = (indices.detach(), f.detach())
        metrics = {"nce_jigsaw": float(jigsaw.detach()), "nce_image": float(plain.detach())}
        return lam * jigsaw + (1 - lam) * plain, metrics

    def after_step(self) -> None:
        if self._pending is not None:
            self.update_memory(*self._pending)
            self._pending = None
