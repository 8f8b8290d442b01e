"""The normal codebook: spherical k-means on ground-truth training normals, cached on disk.

Surface normals are classified into ``k`` (40 in the reference) unit vectors: each valid
training pixel's target is its nearest code (largest dot product), the network predicts a
distribution over the codes, and the predicted normal is the probability-weighted sum of the
codes, renormalised to unit length (``decode``).

The codes come from spherical k-means on unit normals of valid training pixels: at most
``samples`` pixels, drawn uniformly without replacement from every valid pixel of the training
split with a seeded generator (``sample_normals``); k-means++ initialisation on the cosine
distance 1 - a.b, then Lloyd iterations (assign by largest dot product, each code = the
normalised sum of its members; an empty code is re-seeded at the pixel farthest from its code)
until no assignment changes or ``iterations`` is reached. Deterministic given the seed.

The result is cached as ``<cache>/normals-codebook/<key>.npy``, written atomically (temporary
file + rename): the key hashes the training data's fingerprint, k, the sample budget, the seed
and the iteration limit, so a second run (or another model on the same data) reads the file.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmark.config import config_hash
from benchmark.errors import DatasetError
from benchmark.paths import atomic_write, inside

CACHE_DIR = "normals-codebook"


def normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def spherical_kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 100) -> np.ndarray:
    """(k, 3) float64 unit codes of the (n, 3) unit vectors ``x`` (see the module docstring)."""
    x = normalize(np.asarray(x, dtype=np.float64))
    n = len(x)
    if n < k:
        raise DatasetError(f"normal codebook: {n} valid training pixels are fewer than the {k} codes asked for")
    rng = np.random.default_rng(seed)
    # k-means++ on the cosine distance
    centers = np.empty((k, x.shape[1]))
    centers[0] = x[rng.integers(n)]
    distance = 1.0 - x @ centers[0]
    for j in range(1, k):
        weights = np.clip(distance, 0.0, None)
        total = weights.sum()
        index = rng.choice(n, p=weights / total) if total > 0 else int(rng.integers(n))
        centers[j] = x[index]
        distance = np.minimum(distance, 1.0 - x @ centers[j])
    assignment = np.full(n, -1)
    for _ in range(iterations):
        similarity = x @ centers.T
        new = similarity.argmax(1)
        if np.array_equal(new, assignment):
            break
        assignment = new
        sums = np.zeros_like(centers)
        np.add.at(sums, assignment, x)
        counts = np.bincount(assignment, minlength=k)
        for j in np.flatnonzero(counts == 0):  # re-seed an empty code at the worst-served pixel
            worst = int(similarity[np.arange(n), assignment].argmin())
            sums[j] = x[worst]
            similarity[worst, assignment[worst]] = 1.0
        centers = normalize(sums)
    return centers


def sample_normals(normals_of: Callable[[int], tuple[np.ndarray, np.ndarray]], n_images: int, samples: int,
                   seed: int) -> np.ndarray:
    """Up to ``samples`` unit normals drawn uniformly (without replacement, seeded) from the valid
    pixels of images ``0..n_images-1``; ``normals_of(i)`` -> ((H, W, 3) normals, (H, W) mask).
    Two passes: count the valid pixels per image, then read each image again and keep its share of
    a global sample of pixel indices, so only one image is in memory at a time."""
    counts = np.array([int(normals_of(i)[1].sum()) for i in range(n_images)], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        raise DatasetError("normal codebook: the training split has no valid ground-truth normal")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=min(samples, total), replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    out = []
    for i in range(n_images):
        lo, hi = np.searchsorted(chosen, [starts[i], starts[i + 1]])
        if hi > lo:
            normals, mask = normals_of(i)
            out.append(normals[mask.astype(bool)][chosen[lo:hi] - starts[i]])
    return normalize(np.concatenate(out).astype(np.float64))


def codebook_path(cache_root: Path, fingerprint: str, k: int, samples: int, seed: int, iterations: int) -> Path:
    key = config_hash({"data": fingerprint, "k": k, "samples": samples, "seed": seed, "iterations": iterations,
                       "method": "spherical-kmeans++"})
    return inside(cache_root, CACHE_DIR, f"{key}-k{k}.npy")


def cached_codebook(cache_root: Path, fingerprint: str, k: int, normals_of, n_images: int, *,
                    samples: int = 1_000_000, seed: int = 0, iterations: int = 100) -> tuple[np.ndarray, Path]:
    """The (k, 3) codebook of this training data: read from the cache, or computed and stored."""
    path = codebook_path(cache_root, fingerprint, k, samples, seed, iterations)
    if path.exists():
        try:
            codes = np.load(path, allow_pickle=False)
            if codes.shape == (k, 3) and np.all(np.isfinite(codes)):
                return codes, path
        except (ValueError, OSError, EOFError):
            pass  # a damaged cache file: computed again and replaced below
    codes = spherical_kmeans(sample_normals(normals_of, n_images, samples, seed), k, seed, iterations)
    buffer = io.BytesIO()
    np.save(buffer, codes)
    atomic_write(path, buffer.getvalue())
    return codes, path


def assign(normals: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code (largest dot product) of each normal: (N, 3, H, W) -> (N, H, W)."""
    return torch.einsum("nchw,kc->nkhw", normals, codes.to(normals.dtype)).argmax(1)


def decode(probabilities: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Probability-weighted code normal, renormalised: (N, K, H, W) -> (N, 3, H, W)."""
    weighted = torch.einsum("nkhw,kc->nchw", probabilities, codes.to(probabilities.dtype))
    return torch.nn.functional.normalize(weighted, dim=1)
