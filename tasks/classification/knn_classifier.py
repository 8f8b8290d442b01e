"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018, as DINO runs it).

Features are L2-normalised, similarity is the cosine (a dot product of unit vectors), and each of
the k nearest training images votes for its class with weight exp(s / T). Every k of a list comes
from ONE top-k search (k_max = the largest k): the votes of neighbours ranked k_{i-1}+1..k_i are
added to the class scores of k_{i-1}.

Memory stays bounded whatever the size of the training set: the training features are read in
chunks of ``train_chunk`` rows (a memory-mapped cache entry is never loaded whole), each query
chunk keeps a running top-k that is merged with each training chunk's top-k, so the largest block
is ``query_chunk x train_chunk`` similarities.

Ties are broken by the lower training index (neighbours) and the lower class index (predictions),
on every device, so results are reproducible and comparable with a brute-force implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .common import DINO_K, DINO_T
NORM_EPS = 1e-12


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)


def _order(values: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best (value descending, index ascending on ties) of candidates given per row."""
    by_index = torch.argsort(index, dim=1, stable=True)
    values, index = values.gather(1, by_index), index.gather(1, by_index)
    by_value = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, by_value), index.gather(1, by_value)


def _chunk_topk(sims: torch.Tensor, offset: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of one similarity block with exact tie-breaking. torch.topk picks arbitrary members of
    a tie at the k-th value; rows with such a tie (rare with real features) are sorted stably."""
    k = min(k, sims.shape[1])
    values, index = torch.topk(sims, k, dim=1)
    kth = values[:, -1:]
    ambiguous = (sims >= kth).sum(dim=1) > k
    if ambiguous.any():
        rows = torch.nonzero(ambiguous).flatten()
        order = torch.argsort(sims[rows], dim=1, descending=True, stable=True)[:, :k]
        values[rows], index[rows] = sims[rows].gather(1, order), order
    return values, index + offset


@dataclass
class Neighbours:
    sims: torch.Tensor  # (n_query, k) cosine similarities, descending
    index: torch.Tensor  # (n_query, k) positions in the training set (int64)


def nearest(train, query, k: int, *, train_rows: np.ndarray | None = None, train_chunk: int = 16384,
            query_chunk: int = 1024, device: str | torch.device = "cpu", dtype=torch.float32) -> Neighbours:
    """The min(k, n_train) nearest training rows of every query row by cosine similarity.

    ``train`` may be a memory-mapped (n, d) array: it is read ``train_chunk`` rows at a time
    (``train_rows``: a subset of its rows, in this order; positions refer to it)."""
    device = torch.device(device)
    n_train = len(train_rows) if train_rows is not None else len(train)
    k = min(k, n_train)
    out_sims, out_index = [], []
    for q0 in range(0, len(query), query_chunk):
        q = _normalise(torch.as_tensor(np.array(query[q0:q0 + query_chunk]), dtype=dtype, device=device))
        best_v = torch.empty(len(q), 0, dtype=dtype, device=device)
        best_i = torch.empty(len(q), 0, dtype=torch.int64, device=device)
        for t0 in range(0, n_train, train_chunk):
            rows = train_rows[t0:t0 + train_chunk] if train_rows is not None else slice(t0, t0 + train_chunk)
            # np.array: a copy, as memmaps are read-only
            t = _normalise(torch.as_tensor(np.array(train[rows]), dtype=dtype, device=device))
            values, index = _chunk_topk(q @ t.T, t0, k)
            best_v, best_i = _order(torch.cat([best_v, values], 1), torch.cat([best_i, index], 1), k)
        out_sims.append(best_v)
        out_index.append(best_i)
    return Neighbours(torch.cat(out_sims), torch.cat(out_index))


def vote(neighbours: Neighbours, train_labels: np.ndarray, num_classes: int, ks, temperature: float = DINO_T,
         ranks: int = 5) -> dict[int, np.ndarray]:
    """{k: (n_query, ranks) classes ranked by their weighted vote} for every k of ``ks``, from one
    neighbour list: class scores accumulate over the neighbours ranked up to each k (k beyond the
    neighbours found uses them all). Classes with equal scores rank by lower index."""
    sims, index = neighbours.sims, neighbours.index
    labels = torch.as_tensor(np.asarray(train_labels), dtype=torch.int64, device=index.device)[index]
    weights = torch.exp(sims / temperature)
    scores = torch.zeros(len(sims), num_classes, dtype=sims.dtype, device=sims.device)
    ranks = min(ranks, num_classes)
    result, done = {}, 0
    for k in sorted(set(ks)):
        upto = min(k, sims.shape[1])
        if upto > done:
            scores.scatter_add_(1, labels[:, done:upto], weights[:, done:upto])
            done = upto
        order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :ranks]
        result[k] = order.cpu().numpy()
    return result


def topk_accuracy(ranked: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Percentage of rows whose label is among the first k ranked classes."""
    return 100.0 * float((ranked[:, :k] == np.asarray(labels)[:, None]).any(axis=1).mean())


def knn_classify(train, train_labels, query, query_labels, num_classes: int, ks=DINO_K,
                 temperature: float = DINO_T, *, train_rows: np.ndarray | None = None,
                 query_chunk: int = 1024, train_chunk: int = 16384, device="cpu",
                 dtype=torch.float32, with_outcomes: bool = False):
    """{k: {"top1": %, "top5": %}}; with ``with_outcomes``, also {k: per-query top-1 correct (0/1)}
    (the significance test's input). ``train_labels`` are the labels of the rows searched (of
    ``train_rows`` when given). The query set is processed in chunks, votes included, so only the
    ranked predictions of every query are kept."""
    labels = np.asarray(train_labels)
    ranked = {k: [] for k in ks}
    for q0 in range(0, len(query), query_chunk):
        found = nearest(train, query[q0:q0 + query_chunk], max(ks), train_rows=train_rows, train_chunk=train_chunk,
                        query_chunk=query_chunk, device=device, dtype=dtype)
        for k, r in vote(found, labels, num_classes, ks, temperature).items():
            ranked[k].append(r)
    truth = np.asarray(query_labels)
    ranked = {k: np.concatenate(r) for k, r in ranked.items()}
    scores = {k: {"top1": topk_accuracy(r, truth, 1), "top5": topk_accuracy(r, truth, 5)} for k, r in ranked.items()}
    if not with_outcomes:
        return scores
    return scores, {k: (r[:, 0] == truth).astype(np.float64) for k, r in ranked.items()}
