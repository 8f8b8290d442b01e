"""Normal codebook: decoding, nearest-code targets, spherical k-means, pixel sampling, disk cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.errors import DatasetError
from tasks.normals.codebook import (
    assign,
    cached_codebook,
    decode,
    normalize,
    sample_normals,
    spherical_kmeans,
)


def unit_codes(k: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(normalize(np.random.default_rng(seed).normal(size=(k, 3)))).float()


def test_decode_of_one_hot_probabilities_is_the_code() -> None:
    codes = unit_codes(40)
    labels = torch.tensor([[[0, 7], [39, 12]]])  # (1, 2, 2)
    one_hot = torch.nn.functional.one_hot(labels, 40).permute(0, 3, 1, 2).float()
    out = decode(one_hot, codes)
    assert out.shape == (1, 3, 2, 2)
    for (i, j), label in np.ndenumerate(labels[0].numpy()):
        assert torch.allclose(out[0, :, i, j], codes[label], atol=1e-6)


def test_decode_renormalises_the_weighted_sum() -> None:
    codes = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    p = torch.tensor([0.5, 0.5, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(decode(p, codes)[0, :, 0, 0], torch.tensor([1.0, 1.0, 0.0]) / 2 ** 0.5)


def test_assign_picks_the_nearest_code() -> None:
    codes = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, -1.0]])
    normals = torch.tensor([[0.1, 0.2, 0.97], [0.9, -0.3, 0.1], [0.0, 0.2, -0.98]]).T.reshape(1, 3, 1, 3)
    assert assign(normals, codes).tolist() == [[[2, 0, 3]]]


def test_spherical_kmeans_finds_clusters_and_returns_unit_codes() -> None:
    rng = np.random.default_rng(0)
    axes = np.concatenate([np.eye(3), -np.eye(3)])
    points = normalize(np.repeat(axes, 300, axis=0) + rng.normal(scale=0.08, size=(1800, 3)))
    codes = spherical_kmeans(points, 6, seed=1)
    assert codes.shape == (6, 3)
    assert np.allclose(np.linalg.norm(codes, axis=1), 1.0, atol=1e-12)
    # every axis has a code within 3 degrees (the noisy cluster means)
    best = np.degrees(np.arccos(np.clip(axes @ codes.T, -1, 1))).min(axis=1)
    assert best.max() < 3.0, best
    assert np.array_equal(codes, spherical_kmeans(points, 6, seed=1))  # deterministic given the seed


def test_kmeans_needs_enough_points() -> None:
    with pytest.raises(DatasetError, match="fewer than the 40 codes"):
        spherical_kmeans(np.eye(3), 40)


def _images(n: int = 5):
    rng = np.random.default_rng(2)
    data = []
    for _ in range(n):
        normals = normalize(rng.normal(size=(6, 8, 3))).astype(np.float32)
        mask = rng.random((6, 8)) < 0.6
        data.append((normals, mask))
    return data


def test_sample_normals_takes_valid_pixels_only() -> None:
    images = _images()
    everything = np.concatenate([n[m] for n, m in images])
    all_of_them = sample_normals(lambda i: images[i], len(images), samples=10_000, seed=0)
    assert len(all_of_them) == len(everything)
    assert np.allclose(np.sort(all_of_them, axis=0), np.sort(everything, axis=0), atol=1e-6)
    some = sample_normals(lambda i: images[i], len(images), samples=50, seed=0)
    assert len(some) == 50
    # every sampled vector is one of the valid pixels
    assert np.abs(some @ everything.T.astype(np.float64)).max(axis=1).min() > 1 - 1e-6
    assert np.array_equal(some, sample_normals(lambda i: images[i], len(images), samples=50, seed=0))


def test_codebook_is_cached_on_disk_by_fingerprint_and_k(tmp_path) -> None:
    images = _images()
    codes, path = cached_codebook(tmp_path, "data-a", 8, lambda i: images[i], len(images), samples=1000, seed=0)
    assert path.exists() and path.parent == tmp_path / "normals-codebook" and "-k8" in path.name
    assert codes.shape == (8, 3) and np.allclose(np.linalg.norm(codes, axis=1), 1.0)
    assert not list(path.parent.glob(".*tmp*"))  # atomic: no temporary file left behind

    def refuse(i):
        raise AssertionError("the cached codebook should have been read, not recomputed")

    again, again_path = cached_codebook(tmp_path, "data-a", 8, refuse, len(images), samples=1000, seed=0)
    assert again_path == path and np.array_equal(again, codes)
    _, other_k = cached_codebook(tmp_path, "data-a", 6, lambda i: images[i], len(images), samples=1000, seed=0)
    _, other_data = cached_codebook(tmp_path, "data-b", 8, lambda i: images[i], len(images), samples=1000, seed=0)
    assert len({path, other_k, other_data}) == 3
