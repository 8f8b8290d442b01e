"""Angular error metrics: hand cases, masks, and streaming over batches == one-shot numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.normals.metrics import (
    MEDIAN_MAX_ERROR_DEG,
    AngularErrors,
    angular_errors,
    summarize,
)


def random_unit(shape, rng) -> np.ndarray:
    x = rng.normal(size=(*shape, 3))
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_oracle(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict:
    """Independent formula: arccos of the clipped dot product of normalised vectors."""
    p = pred / np.linalg.norm(pred, axis=-1, keepdims=True)
    g = gt / np.linalg.norm(gt, axis=-1, keepdims=True)
    angles = np.degrees(np.arccos(np.clip((p * g).sum(-1), -1, 1)))[mask]
    return {"mean_error": angles.mean(), "median_error": np.median(angles),
            "within_11.25": 100 * np.mean(angles < 11.25), "within_22.5": 100 * np.mean(angles < 22.5),
            "within_30": 100 * np.mean(angles < 30)}


def test_perfect_prediction_is_zero_error_and_all_within() -> None:
    gt = random_unit((2, 5, 7), np.random.default_rng(0))
    acc = AngularErrors()
    acc.update(torch.from_numpy(gt).permute(0, 3, 1, 2) * 3.0, torch.from_numpy(gt).permute(0, 3, 1, 2))
    result = acc.result()
    assert result["mean_error"] == pytest.approx(0.0, abs=1e-6)
    assert result["median_error"] == pytest.approx(0.0, abs=1e-6)
    assert result["within_11.25"] == result["within_22.5"] == result["within_30"] == 100.0
    assert acc.count == 70


def test_constant_ninety_degree_error() -> None:
    gt = np.zeros((1, 3, 4, 6))
    gt[:, 2] = 1.0  # every normal along z
    pred = np.zeros_like(gt)
    pred[:, 0], pred[:, 1] = 0.6, -0.8  # unit, in the x-y plane: exactly 90 degrees from z
    acc = AngularErrors()
    acc.update(pred, gt)
    result = acc.result()
    assert result["mean_error"] == pytest.approx(90.0, abs=1e-12)
    assert result["median_error"] == pytest.approx(90.0, abs=1e-12)
    assert result["within_11.25"] == result["within_22.5"] == result["within_30"] == 0.0


def test_hand_angles_median_and_thresholds() -> None:
    acc = AngularErrors()
    acc.add_angles(np.array([40.0, 10.0, 30.0, 20.0]))
    result = acc.result()
    assert result["median_error"] == pytest.approx(25.0, abs=1e-12)  # mean of the two middle values
    assert result["mean_error"] == pytest.approx(25.0)
    assert result["within_11.25"] == 25.0 and result["within_22.5"] == 50.0
    assert result["within_30"] == 50.0  # strictly below 30


def test_masks_and_invalid_ground_truth_are_left_out() -> None:
    gt = np.zeros((1, 3, 2, 3))
    gt[:, 2] = 1.0
    pred = gt.copy()
    pred[0, :, 0, 0] = [1.0, 0.0, 0.0]  # 90 degrees, masked out below
    pred[0, :, 1, 2] = [0.0, 0.0, -1.0]  # 180 degrees, but its ground truth is invalid (zero)
    gt[0, :, 1, 2] = 0.0
    mask = np.ones((1, 2, 3), bool)
    mask[0, 0, 0] = False
    angles = angular_errors(pred, gt, mask)
    assert angles.shape == (4,) and np.allclose(angles, 0.0)
    # without the mask the 90-degree pixel counts; the zero ground truth never does
    assert sorted(angular_errors(pred, gt).round(9).tolist()) == [0.0, 0.0, 0.0, 0.0, 90.0]


def test_zero_length_prediction_counts_as_ninety_degrees() -> None:
    gt = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    pred = np.array([[0.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert angular_errors(pred, gt).tolist() == [90.0, 0.0]


def test_streaming_over_batches_equals_one_shot_numpy() -> None:
    rng = np.random.default_rng(3)
    gt = random_unit((7, 16, 12), rng)
    pred = gt + rng.normal(scale=0.4, size=gt.shape)  # a spread of errors, 0 to ~90 degrees
    mask = rng.random((7, 16, 12)) < 0.8
    acc = AngularErrors()
    for start in range(0, 7, 3):  # batches of 3, 3, 1, as (N, 3, H, W) tensors
        sl = slice(start, start + 3)
        acc.update(torch.from_numpy(pred[sl]).permute(0, 3, 1, 2).float(), torch.from_numpy(gt[sl]).permute(0, 3, 1, 2),
                   torch.from_numpy(mask[sl]))
    oracle = numpy_oracle(pred.astype(np.float32).astype(np.float64), gt, mask)
    result = acc.result()
    assert acc.count == mask.sum()
    assert result["mean_error"] == pytest.approx(oracle["mean_error"], abs=1e-9)
    assert abs(result["median_error"] - oracle["median_error"]) <= MEDIAN_MAX_ERROR_DEG
    for key in ("within_11.25", "within_22.5", "within_30"):
        assert result[key] == pytest.approx(oracle[key], abs=1e-9)
    # the exact one-shot summary of the same angles agrees too
    exact = summarize(angular_errors(pred.astype(np.float32).reshape(-1, 3), gt.reshape(-1, 3), mask.ravel()))
    assert abs(result["median_error"] - exact["median_error"]) <= MEDIAN_MAX_ERROR_DEG


@pytest.mark.parametrize("n", [1, 2, 1001, 1002])
def test_histogram_median_within_its_stated_resolution(n) -> None:
    angles = np.random.default_rng(n).uniform(0, 180, n)
    acc = AngularErrors()
    for chunk in np.array_split(angles, 4):
        acc.add_angles(chunk)
    assert abs(acc.median() - np.median(angles)) <= MEDIAN_MAX_ERROR_DEG


def test_merge_equals_one_accumulator() -> None:
    angles = np.random.default_rng(5).uniform(0, 120, 500)
    one, a, b = AngularErrors(), AngularErrors(), AngularErrors()
    one.add_angles(angles)
    a.add_angles(angles[:200])
    b.add_angles(angles[200:])
    a.merge(b)
    assert a.result() == pytest.approx(one.result())


class _Split:
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def normals(self, j):
        return self.items[j]


def test_mean_normal_baseline_against_numpy() -> None:
    from tasks.normals.metrics import mean_normal_baseline, summarize

    rng = np.random.default_rng(4)

    def item():
        n = rng.normal(size=(5, 6, 3)) + np.array([0, 0, -2.0])
        return n / np.linalg.norm(n, axis=-1, keepdims=True), rng.random((5, 6)) > 0.3

    train, test = _Split([item() for _ in range(3)]), _Split([item() for _ in range(2)])
    valid = np.concatenate([n[m] for n, m in train.items])
    direction = valid.sum(0) / np.linalg.norm(valid.sum(0))
    gt = np.concatenate([n[m] for n, m in test.items])
    angles = np.degrees(np.arccos(np.clip(gt @ direction, -1, 1)))
    expected = summarize(angles)
    got = mean_normal_baseline(train, test)
    for name in ("mean_error", "within_11.25", "within_22.5", "within_30"):
        assert got[name] == pytest.approx(expected[name], abs=1e-9)
    assert got["median_error"] == pytest.approx(expected["median_error"], abs=5e-4)
