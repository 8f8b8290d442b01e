"""Random features shaped like one VOC07 layer (n = 5011 trainval, 4952 test, d = 9216, 20 classes),
for checking and timing SVM solvers without a network: non-negative (post-ReLU), multi-label,
with class-dependent directions under noise so that APs are neither 0 nor 100, and a fraction of
"difficult-only" labels (0 in the reference's 1/0/-1 encoding, -1 here as in benchmark.datasets.voc).
"""

from __future__ import annotations

import numpy as np

VOC07_TRAINVAL, VOC07_TEST, VOC07_DIM, VOC07_CLASSES = 5011, 4952, 9216, 20


def voc_like_split(n: int, dim: int, classes: int, rng: np.random.Generator, basis: np.ndarray,
                   prototypes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    present = rng.random((n, classes)) < 0.06
    present[np.arange(n), rng.integers(0, classes, n)] = True  # every image shows something
    latent = present @ prototypes + rng.normal(size=(n, prototypes.shape[1])) * 4.0 + prototypes.mean(0)
    features = np.maximum(latent @ basis + 1.5 * rng.normal(size=(n, dim)), 0).astype(np.float32)
    labels = present.astype(np.int8)
    labels[~present & (rng.random((n, classes)) < 0.01)] = -1
    return features, labels


def voc_like_features(n_train: int = VOC07_TRAINVAL, n_test: int = VOC07_TEST, dim: int = VOC07_DIM,
                      classes: int = VOC07_CLASSES, seed: int = 0, latent_dim: int = 128):
    """(train_features, train_labels, test_features, test_labels) with labels in {1, 0, -1}."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(latent_dim, dim)) / np.sqrt(latent_dim)
    prototypes = 0.35 * rng.normal(size=(classes, latent_dim))
    train = voc_like_split(n_train, dim, classes, rng, basis, prototypes)
    test = voc_like_split(n_test, dim, classes, rng, basis, prototypes)
    return train[0], train[1], test[0], test[1]
