"""`jigsaw`: solving jigsaw puzzles (Noroozi & Favaro, ECCV 2016, "Unsupervised Learning of Visual
Representations by Solving Jigsaw Puzzles"), the pretext task Goyal et al. 2019 scale.

Puzzle of one image: resize to 256/225 x the crop side, random square crop (225 px in the paper),
3x3 grid of cells (75 px), a random ``tile`` x ``tile`` crop inside each cell (64 px: the gaps
keep the network from matching edges), each tile normalised by its own per-channel mean and std
(against low-level statistics shortcuts), and the whole image grey with probability 0.3 (against
chromatic aberration, as in the authors' code). One permutation of a fixed set of ``N`` is
applied; the network sees the 9 tiles through one shared trunk (siamese), concatenates the 9
pooled features and classifies which of the ``N`` permutations it was.

The permutation set: greedy farthest-point selection over all 9! permutations in Hamming
distance, from a seeded random first permutation. ``selection: maxmin`` (default) adds the
permutation whose minimum distance to the chosen ones is largest; ``average`` is the paper's
Algorithm 1 / released code (largest mean distance). ``N`` is Goyal et al.'s "problem complexity"
axis (100 ... 10,000; the paper used 1,000). Sets are cached in memory and on disk.

Tile order: position ``i`` of the shuffled puzzle shows cell ``perm[i]`` (cells numbered row by
row), so cell ``j`` is found at position ``argsort(perm)[j]``.
"""

from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms as T

from benchmark.errors import ConfigError
from benchmark.options import Bool, Choice, Float, Int, declare
from benchmark.paths import DiskFullError, atomic_output, inside

from ..method import PretextMethod

GRID = 3
TILES = GRID * GRID
SELECTIONS = ("maxmin", "average")


@functools.lru_cache(maxsize=1)
def all_permutations() -> np.ndarray:
    """(9!, 9) int8, lexicographic."""
    return np.array(list(itertools.permutations(range(TILES))), dtype=np.int8)


def _select(n: int, seed: int, selection: str) -> np.ndarray:
    perms = all_permutations()
    if not 1 <= n <= len(perms):
        raise ConfigError(f"jigsaw: num_permutations must be in 1..{len(perms)}, got {n}")
    if selection not in SELECTIONS:
        raise ConfigError(f"jigsaw: selection must be one of {SELECTIONS}, got {selection!r}")
    first = int(np.random.default_rng(seed).integers(len(perms)))
    chosen = [first]
    available = np.ones(len(perms), dtype=bool)
    available[first] = False
    distance = (perms != perms[first]).sum(1, dtype=np.int64)  # to the chosen set: min or sum
    for _ in range(n - 1):
        score = np.where(available, distance, -1)
        j = int(score.argmax())  # ties: the first in lexicographic order (deterministic)
        chosen.append(j)
        available[j] = False
        new = (perms != perms[j]).sum(1, dtype=np.int64)
        distance = np.minimum(distance, new) if selection == "maxmin" else distance + new
    return perms[chosen].astype(np.int64)


def _cache_dir() -> Path:
    base = os.environ.get("SSL_BENCH_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "ssl-bench")
    return Path(base).expanduser() / "jigsaw-permutations"


@functools.lru_cache(maxsize=8)
def permutation_set(n: int, seed: int = 0, selection: str = "maxmin") -> np.ndarray:
    """(n, 9) permutations chosen for maximal Hamming distance (see the module docstring); cached
    in memory and as ``.npy`` under ``$SSL_BENCH_CACHE`` (default ``~/.cache/ssl-bench``)."""
    path = inside(_cache_dir(), f"n{n}-seed{seed}-{selection}.npy")
    try:
        cached = np.load(path)
        if cached.shape == (n, TILES) and (np.sort(cached, 1) == np.arange(TILES)).all():
            return cached.astype(np.int64)
    except (OSError, ValueError):
        pass  # absent or unreadable: compute (a few seconds for 1,000)
    perms = _select(n, seed, selection)
    try:
        with atomic_output(path, keep_suffix=True) as tmp:
            np.save(tmp, perms)
    except (OSError, DiskFullError):
        pass  # a read-only or full cache only costs the recomputation
    return perms


def min_hamming(perms: np.ndarray) -> int:
    """Smallest Hamming distance between two different rows."""
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    np.fill_diagonal(d, TILES + 1)
    return int(d.min())


def make_tiles(crop: torch.Tensor, perm, tile: int, generator: torch.Generator | None,
               normalize: bool = True) -> torch.Tensor:
    """(9, C, tile, tile) from a (C, 3c, 3c) crop: a ``tile`` crop inside each of the 3x3 cells
    (random offset from ``generator``; top-left when it is None), position ``i`` holding cell
    ``perm[i]``; each tile normalised by its own per-channel mean and std when ``normalize``."""
    cell = crop.shape[-1] // GRID
    if crop.shape[-2] < GRID * cell or tile > cell:
        raise ValueError(f"jigsaw: crop {tuple(crop.shape)} too small for {GRID}x{GRID} cells of tile {tile}")
    tiles = []
    for j in range(TILES):
        row, col = divmod(j, GRID)
        if generator is None:
            dy = dx = 0
        else:
            dy, dx = (int(v) for v in torch.randint(0, cell - tile + 1, (2,), generator=generator))
        tiles.append(crop[:, row * cell + dy:row * cell + dy + tile, col * cell + dx:col * cell + dx + tile])
    out = torch.stack([tiles[int(p)] for p in perm])
    if normalize:
        mean = out.mean(dim=(2, 3), keepdim=True)
        std = out.std(dim=(2, 3), keepdim=True)
        out = (out - mean) / torch.where(std > 1e-6, std, torch.ones_like(std))  # flat tile: centred only
    return out


class Jigsaw(PretextMethod):
    name = "jigsaw"
    options = declare({
        "num_permutations": Int(1000, min=1),  # N: the paper's 1,000; Goyal et al. sweep 100 ... 10,000
        "selection": Choice("maxmin", "average"),  # maxmin | average (the paper's Algorithm 1)
        "permutation_seed": Int(0, min=0),
        "min_distance": Int(None, min=0),  # require the set's minimum Hamming distance to reach this
        # tile side / cell side (64 of 75 px in the paper); 1.0: no gaps
        "tile_fraction": Float(64 / 75, min=0, max=1, min_open=True),
        "normalize_tiles": Bool(True),
        "grayscale_p": Float(0.3, min=0, max=1),
        "head": Choice("linear", "mlp"),  # linear on the 9 concatenated features (Goyal et al.'s ResNet) | mlp
        # mlp head: per-tile fc (hidden_dim / 2), concat, fc hidden_dim, fc N (paper's fc6-fc8)
        "hidden_dim": Int(1024, min=2),
    })
    # the paper: SGD, LR 0.01 (AlexNet); ResNets in Goyal et al.: LR 0.1 at batch 256, wd 1e-4
    training = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}

    def __init__(self, trunk, arch, image_size, **options):
        super().__init__(trunk, arch, image_size, **options)
        options = self.config  # validated, with the declared defaults
        n = options.num_permutations
        perms = permutation_set(n, options.permutation_seed, options.selection)
        if options.min_distance is not None and n > 1 and min_hamming(perms) < options.min_distance:
            raise ConfigError(f"jigsaw: {n} permutations reach a minimum Hamming distance of {min_hamming(perms)}, "
                              f"less than min_distance {options.min_distance}; use fewer permutations")
        self.register_buffer("permutations", torch.as_tensor(perms, dtype=torch.int64))
        self._table = perms  # sample() reads this CPU copy: the buffer may live on the GPU
        self.cell = image_size // GRID
        self.tile = max(1, round(self.cell * float(options.tile_fraction)))
        resize = round(image_size * 256 / 225)
        self.crop_transform = T.Compose([
            T.Resize((resize, resize)),
            T.RandomCrop(GRID * self.cell),
            T.RandomGrayscale(float(options.grayscale_p)),
            T.ToTensor(),
        ])
        dim = self.embed_dim
        if options.head == "linear":
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(TILES * dim, n))
        elif options.head == "mlp":
            hidden = int(options.hidden_dim)
            self.head = nn.Sequential(  # per-tile fc6 (shared), then fc7 and fc8 on the concatenation
                nn.Linear(dim, hidden // 2), nn.ReLU(inplace=True), nn.Flatten(),
                nn.Linear(TILES * (hidden // 2), hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n))
        else:
            raise ConfigError(f"jigsaw: head must be 'linear' or 'mlp', got {options.head!r}")

    def puzzle_crop(self, image: Image.Image, generator: torch.Generator) -> torch.Tensor:
        """The (3, 3c, 3c) crop in [0, 1] the tiles are cut from."""
        return self.augment(self.crop_transform, image, generator)

    def sample(self, image: Image.Image, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        crop = self.puzzle_crop(image, generator)
        label = int(torch.randint(0, len(self._table), (1,), generator=generator))
        tiles = make_tiles(crop, self._table[label], self.tile,
                           generator if self.tile < self.cell else None, self.config.normalize_tiles)
        return {"tiles": tiles, "labels": torch.tensor(label)}

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        tiles, labels = batch["tiles"], batch["labels"]
        b = tiles.shape[0]
        features = self.embed(tiles.flatten(0, 1)).view(b, TILES, -1)  # one shared trunk for all tiles
        logits = self.head(features)
        loss = F.cross_entropy(logits, labels)
        return loss, {"acc": float((logits.argmax(1) == labels).float().mean())}
