"""tasks.classification.knn_classifier against a brute-force numpy implementation: full similarity
matrix, lexicographic (similarity desc, index asc) neighbour order, votes summed class by class."""

import numpy as np
import pytest
import torch

from tasks.classification.knn_classifier import knn_classify, nearest, topk_accuracy, vote


def brute_force(train, train_labels, query, num_classes, ks, temperature):
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    sims = qn @ tn.T
    ranked, order = {}, []
    for row in sims:
        order.append(np.lexsort((np.arange(len(row)), -row)))
    order = np.array(order)
    for k in ks:
        kk = min(k, len(train))
        scores = np.zeros((len(query), num_classes))
        for i in range(len(query)):
            for j in order[i, :kk]:
                scores[i, train_labels[j]] += np.exp(sims[i, j] / temperature)
        ranked[k] = np.array([np.lexsort((np.arange(num_classes), -s))[:5] for s in scores])
    return sims, order, ranked


def tie_features(n, d, rng):
    """Rows with four entries of +-1: norm exactly 2, so every cosine is an exact multiple of 1/4
    in any summation order: many exact ties."""
    x = np.zeros((n, d))
    for row in x:
        row[rng.choice(d, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    return x


@pytest.mark.parametrize("train_chunk,query_chunk", [(7, 5), (16, 64), (1000, 1000), (1, 3)])
def test_neighbours_and_votes_equal_brute_force_with_ties(train_chunk, query_chunk):
    rng = np.random.default_rng(0)
    train, query = tie_features(53, 6, rng), tie_features(17, 6, rng)
    labels = rng.integers(0, 4, len(train))
    ks = [1, 3, 10, 20, 100]  # 100 > n: every neighbour
    sims, order, expected = brute_force(train, labels, query, 4, ks, 0.07)
    found = nearest(train, query, max(ks), train_chunk=train_chunk, query_chunk=query_chunk, dtype=torch.float64)
    assert found.index.shape == (17, 53)  # k > n: all of them
    np.testing.assert_array_equal(found.index.numpy(), order)
    np.testing.assert_allclose(found.sims.numpy(), np.take_along_axis(sims, order, 1), atol=1e-12)
    ranked = vote(found, labels, 4, ks, 0.07)
    for k in ks:
        np.testing.assert_array_equal(ranked[k], expected[k][:, :4], err_msg=f"k={k}")
    assert len({tuple(r[:, 0]) for r in ranked.values()}) > 1  # the ks do differ


@pytest.mark.parametrize("train_chunk", [1, 13, 64, 200])
def test_chunk_boundaries_and_subset_rows_random_features(train_chunk):
    rng = np.random.default_rng(1)
    train, query = rng.normal(size=(200, 16)), rng.normal(size=(30, 16))
    labels = rng.integers(0, 7, 200)
    rows = rng.permutation(200)[:150]  # a subset of the rows, in this order (few-shot, carved train)
    sims, order, expected = brute_force(train[rows], labels[rows], query, 7, [5, 20], 0.1)
    found = nearest(train, query, 20, train_rows=rows, train_chunk=train_chunk, query_chunk=8, dtype=torch.float64)
    np.testing.assert_array_equal(found.index.numpy(), order[:, :20])
    ranked = vote(found, labels[rows], 7, [5, 20], 0.1)
    for k in (5, 20):
        np.testing.assert_array_equal(ranked[k], expected[k])


def test_memory_mapped_train_and_accuracies(tmp_path):
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(10, 32)) * 2
    train_labels, test_labels = rng.integers(0, 10, 500), rng.integers(0, 10, 120)
    train = (centres[train_labels] + rng.normal(size=(500, 32))).astype(np.float32)
    test = (centres[test_labels] + rng.normal(size=(120, 32))).astype(np.float32)
    np.save(tmp_path / "train.npy", train)
    mapped = np.load(tmp_path / "train.npy", mmap_mode="r")
    result = knn_classify(mapped, train_labels, test, test_labels, 10, ks=[10, 20], train_chunk=64, query_chunk=50,
                          dtype=torch.float64)
    _, _, expected = brute_force(train.astype(np.float64), train_labels, test.astype(np.float64), 10, [10, 20], 0.07)
    for k in (10, 20):
        assert result[k]["top1"] == pytest.approx(topk_accuracy(expected[k], test_labels, 1))
        assert result[k]["top5"] == pytest.approx(topk_accuracy(expected[k], test_labels, 5))
    assert result[20]["top1"] > 80  # well-separated clusters


def test_topk_accuracy_by_hand():
    ranked = np.array([[2, 0, 1], [1, 2, 0], [0, 1, 2]])
    assert topk_accuracy(ranked, np.array([2, 2, 2]), 1) == pytest.approx(100 / 3)
    assert topk_accuracy(ranked, np.array([2, 2, 2]), 2) == pytest.approx(200 / 3)
