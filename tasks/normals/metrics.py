"""Angular error metrics of surface normals, accumulated over batches in float64.

Per valid pixel the error is the angle between the predicted and the ground-truth normal,
``atan2(|p x g|, p . g)`` in degrees (accurate near 0 and 180 degrees, unlike ``arccos`` of a
rounded dot product, and independent of the vectors' lengths). Valid pixels: the mask is true and
the ground truth is finite with a non-zero length. A prediction of length zero (or non-finite) has
no direction; it counts as 90 degrees, the expected error of a random direction, so a broken model
cannot score 0.

Reported (NYUv2 surface normal protocol): mean and median angular error (degrees) and the
percentage of pixels within 11.25, 22.5 and 30 degrees.

Streaming: ``AngularErrors.update`` per batch keeps only sums and counts, so the test set is never
held in memory. Mean and the within-threshold percentages are exact (float64 sum, integer counts
against the thresholds themselves). The median comes from a histogram of fixed bins of
``MEDIAN_BIN_DEG`` = 0.001 degrees over [0, 180] that also keeps the smallest and largest angle
seen in each bin. The median is defined as numpy's (the middle order statistic, or the mean of
the two middle ones for an even count); each of those order statistics is replaced by the centre
of the bin it falls in, clamped to that bin's [smallest, largest] angle. The reported median
therefore differs from the exact one by at most half a bin, ``MEDIAN_MAX_ERROR_DEG`` = 0.0005
degrees, and is exact when the bin holds one distinct value (a perfect prediction gives 0, a
constant error gives that error). Tests check it against ``numpy.median``.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS_DEG = (11.25, 22.5, 30.0)
MEDIAN_BIN_DEG = 1e-3
MEDIAN_BINS = int(round(180.0 / MEDIAN_BIN_DEG))
MEDIAN_MAX_ERROR_DEG = MEDIAN_BIN_DEG / 2
METRIC_NAMES = ("mean_error", "median_error", *(f"within_{t:g}" for t in THRESHOLDS_DEG))


def _channels_last(x, name: str) -> np.ndarray:
    """(..., 3) float64 from a 4-D (N, 3, H, W) batch (the network's layout) or any other (..., 3)."""
    import torch

    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 4:
        if x.shape[1] != 3:
            raise ValueError(f"{name}: a 4-D batch of normals must be (N, 3, H, W), got {x.shape}")
        x = np.moveaxis(x, 1, -1)
    if x.shape[-1] != 3:
        raise ValueError(f"{name}: expected normals of shape (N, 3, H, W) or (..., 3), got {x.shape}")
    return x


def angular_errors(pred, gt, mask=None) -> np.ndarray:
    """Angles in degrees (float64, 1-D) between ``pred`` and ``gt`` at the valid pixels.

    ``pred``/``gt``: 4-D (N, 3, H, W) batches, or (..., 3) with the vector last for any other number
    of dimensions; ``mask``: bool of the pixel shape ((N, H, W) / ...) or None.
    """
    import torch

    p, g = _channels_last(pred, "pred"), _channels_last(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground-truth shape {g.shape}")
    valid = np.isfinite(g).all(-1) & (np.einsum("...i,...i->...", g, g) > 0)
    if mask is not None:
        m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if m.shape != valid.shape:
            raise ValueError(f"mask shape {m.shape} differs from the pixel shape {valid.shape}")
        valid &= m.astype(bool)
    p, g = p[valid], g[valid]
    cross = np.linalg.norm(np.cross(p, g), axis=-1)
    dot = np.einsum("ij,ij->i", p, g)
    angles = np.degrees(np.arctan2(cross, dot))
    no_direction = ~(np.isfinite(p).all(-1) & (np.einsum("ij,ij->i", p, p) > 0))
    angles[no_direction] = 90.0
    return angles


def summarize(angles: np.ndarray) -> dict[str, float]:
    """The protocol's metrics of a 1-D array of angles in degrees, computed exactly (numpy)."""
    angles = np.asarray(angles, dtype=np.float64)
    if angles.size == 0:
        return {name: float("nan") for name in METRIC_NAMES}
    out = {"mean_error": float(angles.mean()), "median_error": float(np.median(angles))}
    for t in THRESHOLDS_DEG:
        out[f"within_{t:g}"] = 100.0 * float((angles < t).sum()) / angles.size
    return out


class AngularErrors:
    """Streaming accumulator of the protocol's metrics (see the module docstring)."""

    def __init__(self):
        self.count = 0
        self.total = 0.0  # float64 sum of angles
        self.within = np.zeros(len(THRESHOLDS_DEG), dtype=np.int64)
        self.histogram = np.zeros(MEDIAN_BINS, dtype=np.int64)
        self.bin_min = np.full(MEDIAN_BINS, np.inf)
        self.bin_max = np.full(MEDIAN_BINS, -np.inf)

    def update(self, pred, gt, mask=None) -> np.ndarray:
        """Adds one batch; returns its angles (degrees) for callers that log them."""
        angles = angular_errors(pred, gt, mask)
        self.add_angles(angles)
        return angles

    def add_angles(self, angles: np.ndarray) -> None:
        angles = np.asarray(angles, dtype=np.float64).ravel()
        self.count += angles.size
        self.total += float(angles.sum())
        self.within += np.array([(angles < t).sum() for t in THRESHOLDS_DEG], dtype=np.int64)
        if angles.size == 0:
            return
        angles = np.sort(angles)
        bins = np.minimum((angles / MEDIAN_BIN_DEG).astype(np.int64), MEDIAN_BINS - 1)
        self.histogram += np.bincount(bins, minlength=MEDIAN_BINS)
        # sorted: each bin's first occurrence is its smallest angle, its last the largest
        used, first = np.unique(bins, return_index=True)
        last = np.append(first[1:], angles.size) - 1
        self.bin_min[used] = np.minimum(self.bin_min[used], angles[first])
        self.bin_max[used] = np.maximum(self.bin_max[used], angles[last])

    def merge(self, other: "AngularErrors") -> None:
        self.count += other.count
        self.total += other.total
        self.within += other.within
        self.histogram += other.histogram
        np.minimum(self.bin_min, other.bin_min, out=self.bin_min)
        np.maximum(self.bin_max, other.bin_max, out=self.bin_max)

    def _order_statistic(self, cumulative: np.ndarray, k: int) -> float:
        """Centre of the bin holding the k-th smallest angle (0-based), clamped to the bin's range."""
        index = int(np.searchsorted(cumulative, k + 1))
        return float(np.clip((index + 0.5) * MEDIAN_BIN_DEG, self.bin_min[index], self.bin_max[index]))

    def median(self) -> float:
        if self.count == 0:
            return float("nan")
        cumulative = np.cumsum(self.histogram)
        low, high = (self.count - 1) // 2, self.count // 2
        return 0.5 * (self._order_statistic(cumulative, low) + self._order_statistic(cumulative, high))

    def result(self) -> dict[str, float]:
        if self.count == 0:
            return {name: float("nan") for name in METRIC_NAMES}
        out = {"mean_error": self.total / self.count, "median_error": self.median()}
        for t, n in zip(THRESHOLDS_DEG, self.within.tolist()):
            out[f"within_{t:g}"] = 100.0 * n / self.count
        return out


def mean_normal_baseline(train, test) -> dict[str, float]:
    """The metrics of predicting, at every test pixel, the mean of the training set's valid normals
    (normalised): the classic floor of surface-normal estimation, computed from the annotations
    alone. Same files, same numbers on every machine: an exact check of the reader and the metrics.
    ``train``/``test``: splits whose ``normals(j)`` gives ((H, W, 3) normals, (H, W) mask)."""
    total = np.zeros(3)
    for j in range(len(train)):
        normals, mask = train.normals(j)
        total += np.asarray(normals, dtype=np.float64)[np.asarray(mask, dtype=bool)].sum(0)
    direction = total / max(np.linalg.norm(total), 1e-12)
    errors = AngularErrors()
    for j in range(len(test)):
        normals, mask = test.normals(j)
        errors.update(np.broadcast_to(direction, np.shape(normals)), normals, mask)
    return errors.result()
