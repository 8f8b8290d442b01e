"""Low-shot SVMs: samples (format, determinism, files), aggregation, cost selection, and the
VOC07 / Places205 low-shot tasks end to end, checked against an independent scikit-learn
re-computation on the same frozen features."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import cross_val_score
from sklearn.svm import LinearSVC

from benchmark.cli import main
from benchmark.datasets.images import svm_transform
from benchmark.datasets.places import load_places205
from benchmark.datasets.synth_places import synth_places205
from benchmark.datasets.synth_voc import synth_voc07
from benchmark.datasets.voc import load_voc
from benchmark.errors import DatasetError
from benchmark.features import extract_features
from benchmark.metrics import voc_ap
from benchmark.models import create_model
from benchmark.results import ResultStore
from tasks.lowshot import protocol as lowshot
from tests.suites import RANDOM, suite, suite_yaml, suites_yaml, voc07_svm

COSTS = [0.1, 1.0]


# --- sample_voc07 / voc07_max_k -------------------------------------------------------------

# 12 images x 3 classes; 1 present, 0 absent, -1 difficult-only (never drawn)
HAND_LABELS = np.array([
    [1, 0, 0],
    [1, 0, -1],
    [0, 1, 0],
    [0, 1, 1],
    [-1, 0, 1],
    [0, 0, 1],
    [1, -1, 0],
    [0, 0, 0],
    [0, 1, 0],
    [-1, 0, 0],
    [0, 0, -1],
    [0, 0, 0],
], dtype=np.int8)
# positives per class: 3, 3, 3; absent per class: 7, 8, 7  -> max k = min(3, 7 // 2) = 3


@pytest.mark.parametrize("k", [1, 2, 3])
def test_sample_voc07_counts_and_positions(k) -> None:
    sample = lowshot.sample_voc07(HAND_LABELS, k, np.random.default_rng(7))
    assert sample.shape == HAND_LABELS.shape
    assert set(np.unique(sample)) <= {-1, 0, 1}
    for c in range(3):
        assert (sample[:, c] == 1).sum() == k
        assert (sample[:, c] == 0).sum() == 2 * k  # (C - 1) k negatives
        assert (sample[:, c] == -1).sum() == 12 - 3 * k
        # positives only where the label is 1, negatives only where it is 0: difficult never drawn
        assert (HAND_LABELS[sample[:, c] == 1, c] == 1).all()
        assert (HAND_LABELS[sample[:, c] == 0, c] == 0).all()
        assert (sample[HAND_LABELS[:, c] == -1, c] == -1).all()


def test_sample_voc07_with_k_equal_to_all_positives_takes_every_positive() -> None:
    sample = lowshot.sample_voc07(HAND_LABELS, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(sample == 1, HAND_LABELS == 1)


def test_sample_voc07_is_determined_by_the_rng_seed() -> None:
    # k=1 keeps some freedom: 3 positive choices and C(7, 2) = 21 negative choices per class
    a = lowshot.sample_voc07(HAND_LABELS, 1, np.random.default_rng(3))
    b = lowshot.sample_voc07(HAND_LABELS, 1, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, lowshot.sample_voc07(HAND_LABELS, 1, np.random.default_rng(4)))


def test_sample_voc07_too_few_images_raise() -> None:
    with pytest.raises(ValueError, match="positives"):
        lowshot.sample_voc07(HAND_LABELS, 4, np.random.default_rng(0))  # only 3 positives
    labels = HAND_LABELS.copy()
    labels[[0, 7, 11], 1] = 1  # class 1 now has 6 positives but only 5 absent images
    assert lowshot.voc07_max_k(labels) == 2  # min(3 positives, 5 // 2)
    lowshot.sample_voc07(labels, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="negatives"):
        lowshot.sample_voc07(labels, 3, np.random.default_rng(0))  # needs 6 negatives of class 1


def test_voc07_max_k_hand_case() -> None:
    assert lowshot.voc07_max_k(HAND_LABELS) == 3
    # 4 classes; positives per class 5, 2, 4, 6; absent per class 30, 30, 8, 30
    labels = np.zeros((40, 4), dtype=np.int8)
    for c, (n_pos, n_absent) in enumerate([(5, 30), (2, 30), (4, 8), (6, 30)]):
        labels[:n_pos, c] = 1
        labels[n_pos:40 - n_absent, c] = -1
        assert (labels[:, c] == 0).sum() == n_absent
    assert lowshot.voc07_max_k(labels) == 2  # min(2, 8 // 3)
    labels[:, 1] = np.where(np.arange(40) < 6, 1, 0)  # class 1: 6 positives, 34 absent
    assert lowshot.voc07_max_k(labels) == 2  # now limited by class 2's negatives: 8 // 3
    labels[:, 2] = np.where(np.arange(40) < 4, 1, 0)  # class 2: 4 positives, 36 absent
    assert lowshot.voc07_max_k(labels) == 4  # class 2's positives; 30 // 3 = 10
    lowshot.sample_voc07(labels, 4, np.random.default_rng(0))
    with pytest.raises(ValueError):
        lowshot.sample_voc07(labels, 5, np.random.default_rng(0))


# --- sample_places / sample_rng -------------------------------------------------------------

PLACES_LABELS = np.array([0, 2, 1, 0, 1, 2, 2, 0, 1, 0, 2, 1, 0, 2, 1, 2, 0, 1])  # 6 of each class


@pytest.mark.parametrize("k", [1, 3, 6])
def test_sample_places_k_per_class_sorted_unique(k) -> None:
    idx = lowshot.sample_places(PLACES_LABELS, 3, k, np.random.default_rng(1))
    assert len(idx) == 3 * k
    assert (np.diff(idx) > 0).all()  # sorted and unique
    np.testing.assert_array_equal(np.bincount(PLACES_LABELS[idx], minlength=3), [k, k, k])
    if k == 6:
        np.testing.assert_array_equal(idx, np.arange(18))


def test_sample_places_determinism_and_errors() -> None:
    a = lowshot.sample_places(PLACES_LABELS, 3, 2, np.random.default_rng(5))
    np.testing.assert_array_equal(a, lowshot.sample_places(PLACES_LABELS, 3, 2, np.random.default_rng(5)))
    assert not np.array_equal(a, lowshot.sample_places(PLACES_LABELS, 3, 2, np.random.default_rng(6)))
    with pytest.raises(ValueError, match="class 0 has 6 images"):
        lowshot.sample_places(PLACES_LABELS, 3, 7, np.random.default_rng(0))
    with pytest.raises(ValueError, match="class 3 has 0 images"):  # a class with no image at all
        lowshot.sample_places(PLACES_LABELS, 4, 1, np.random.default_rng(0))


def test_sample_rng_streams_are_independent() -> None:
    def draw_all(ks, seed=0, samples=(1, 2, 3)):
        return {(k, s): lowshot.sample_places(PLACES_LABELS, 3, k, lowshot.sample_rng(seed, k, s))
                for k in ks for s in samples}

    few, many = draw_all([2]), draw_all([1, 2, 4])
    for s in (1, 2, 3):  # adding k = 1 and 4 (drawn before/after k = 2) changes no k = 2 sample
        np.testing.assert_array_equal(few[2, s], many[2, s])
    # different samples, and different seeds, give different draws
    assert not np.array_equal(many[2, 1], many[2, 2])
    assert not np.array_equal(many[2, 1], draw_all([2], seed=1)[2, 1])
    # the stream does not depend on how many numbers other streams consumed
    first = lowshot.sample_rng(0, 4, 1).random(5)
    lowshot.sample_rng(0, 2, 1).random(1000)
    np.testing.assert_array_equal(first, lowshot.sample_rng(0, 4, 1).random(5))


# --- load_or_draw / reference files ---------------------------------------------------------


def test_load_or_draw_draws_once_then_reads_the_file(tmp_path) -> None:
    path = tmp_path / "sub" / "train_targets_sample1_k2.npy"
    calls = []

    def draw():
        calls.append(1)
        return np.arange(6, dtype=np.int8).reshape(3, 2)

    first = lowshot.load_or_draw(path, draw)
    np.testing.assert_array_equal(first, np.arange(6).reshape(3, 2))
    assert path.is_file() and len(calls) == 1
    np.testing.assert_array_equal(np.load(path), first)

    # a rerun (or another machine with the file) gets the file, whatever the draw would give now
    def other():
        calls.append(2)
        return np.zeros((3, 2), dtype=np.int8)

    again = lowshot.load_or_draw(path, other)
    np.testing.assert_array_equal(again, first)
    assert again.dtype == np.int8
    assert calls == [1]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary files left


def test_reference_sample_file_name(tmp_path) -> None:
    assert lowshot.reference_sample_file(tmp_path, 3, 16) == tmp_path / "train_targets_sample3_k16.npy"


def test_load_reference_voc_sample(tmp_path) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.choice([-1, 0, 1], size=(9, 20)).astype(np.int64)  # stored as int64 on purpose
    np.save(tmp_path / "train_targets_sample2_k4.npy", matrix)
    loaded = lowshot.load_reference_voc_sample(tmp_path, 2, 4, 9, 20)
    assert loaded.dtype == np.int8
    np.testing.assert_array_equal(loaded, matrix)

    np.save(tmp_path / "train_targets_sample1_k4.npy", matrix[:8])  # wrong number of rows
    path = tmp_path / "train_targets_sample1_k4.npy"
    with pytest.raises(DatasetError, match="expected a 9 x 20") as exc:
        lowshot.load_reference_voc_sample(tmp_path, 1, 4, 9, 20)
    assert str(path) in str(exc.value)

    bad = matrix.copy()
    bad[3, 5] = 2
    np.save(tmp_path / "train_targets_sample3_k4.npy", bad)
    with pytest.raises(DatasetError) as exc:
        lowshot.load_reference_voc_sample(tmp_path, 3, 4, 9, 20)
    assert str(tmp_path / "train_targets_sample3_k4.npy") in str(exc.value)

    with pytest.raises(DatasetError, match="does not exist") as exc:
        lowshot.load_reference_voc_sample(tmp_path, 5, 4, 9, 20)
    assert str(tmp_path / "train_targets_sample5_k4.npy") in str(exc.value)


# --- aggregate / reference_selection --------------------------------------------------------


def test_aggregate_hand_case() -> None:
    values = [10.0, 12.0, 14.0, 16.0, 18.0]
    agg = lowshot.aggregate(values)
    # mean 14; population std sqrt((16 + 4 + 0 + 4 + 16) / 5) = sqrt(8) = 2.8284...
    assert agg.mean == pytest.approx(14.0, abs=1e-12)
    assert agg.std == pytest.approx(math.sqrt(8), abs=1e-12)
    assert agg.std == pytest.approx(2.8284271, abs=1e-6)
    assert (agg.min, agg.max) == (10.0, 18.0)
    # ci95 = t.ppf(0.975, 4) * std(ddof=1) / sqrt(5) = 2.7764 * sqrt(10) / sqrt(5) = 2.7764 * 1.4142 = 3.926...
    assert agg.ci95 == pytest.approx(2.7764451 * math.sqrt(2), abs=1e-6)
    assert agg.ci95 == pytest.approx(3.9264956, abs=1e-5)
    low, high = stats.t.interval(0.95, 4, loc=14.0, scale=stats.sem(values))
    assert agg.ci95 == pytest.approx((high - low) / 2, rel=1e-12)


def test_aggregate_against_numpy_scipy_and_edge_cases() -> None:
    values = np.array([61.25, 58.0, 70.5, 66.75])
    agg = lowshot.aggregate(values)
    assert agg.mean == pytest.approx(np.mean(values), rel=1e-12)
    assert agg.std == pytest.approx(np.std(values, ddof=0), rel=1e-12)
    assert agg.std != pytest.approx(np.std(values, ddof=1), rel=1e-3)
    assert (agg.min, agg.max) == (58.0, 70.5)
    # 2 samples: t.ppf(0.975, 1) = 12.706; values 1 and 3: sample std sqrt(2) -> 12.706 * sqrt(2) / sqrt(2)
    assert lowshot.aggregate([1.0, 3.0]).ci95 == pytest.approx(12.7062047, abs=1e-6)
    assert lowshot.aggregate([1.0, 3.0]).std == pytest.approx(1.0)
    one = lowshot.aggregate([42.0])
    assert (one.mean, one.std, one.min, one.max) == (42.0, 0.0, 42.0, 42.0)
    assert math.isnan(one.ci95)


def test_reference_selection_is_argmax_of_the_mean() -> None:
    # per-sample argmaxes are 0 and 2, the mean [4.5, 5, 4.5] peaks at 1
    assert lowshot.reference_selection(np.array([[9.0, 5.0, 0.0], [0.0, 5.0, 9.0]])) == 1
    # a majority vote of per-sample argmaxes would say 0; the mean [6.67, 9] says 1
    assert lowshot.reference_selection(np.array([[10.0, 9.0], [10.0, 9.0], [0.0, 9.0]])) == 1
    # ties: the first index
    assert lowshot.reference_selection(np.array([[1.0, 3.0, 3.0], [3.0, 1.0, 1.0]])) == 0
    assert lowshot.reference_selection(np.array([[0.0, 2.0, 1.0, 2.0], [0.0, 2.0, 3.0, 2.0]])) == 1


# --- independent re-computation helpers ----------------------------------------------------


def _svc(cost: float) -> LinearSVC:
    return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, intercept_scaling=1, loss="squared_hinge", dual=True,
                     tol=1e-4, max_iter=2000, random_state=0)


def _scores(X, y, X_test, cost) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _svc(cost).fit(X, y).decision_function(X_test)


def _cv_index(X, y, costs) -> int:
    """Cost with the best mean 3-fold AP, as the reference's cross_val_score does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        means = [cross_val_score(_svc(c), X, y, cv=3, scoring="average_precision").mean() for c in costs]
    return int(np.argmax(means))


def _l2(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-5)


def _random_resnet18_features(*splits) -> tuple:
    """L2-normalised res5 features of each list of images, from the `random` pretrainer's model
    (create_model seed 0) at 32 px, and the weights-hash prefix the result rows carry."""
    from pretrainers.common import freeze

    model = freeze("random", "resnet18", create_model("resnet18", seed=0), {})
    transform, _ = svm_transform(32)
    feats = [extract_features(model.backbone, paths, ["res5"], transform, device=torch.device("cpu"),
                              batch_size=16, num_workers=0)["res5"] for paths in splits]
    return [_l2(f) for f in feats], model.weights[:16]


def _voc_sample_aps(sample, X_train, X_test, test_labels, costs) -> np.ndarray:
    """(classes, costs) test AP of SVMs trained on one reference-format sample."""
    aps = np.full((sample.shape[1], len(costs)), np.nan)
    for c in range(sample.shape[1]):
        rows = np.flatnonzero(sample[:, c] != -1)
        y = np.where(sample[rows, c] == 1, 1, -1)
        keep = test_labels[:, c] != -1
        for j, cost in enumerate(costs):
            aps[c, j] = voc_ap(test_labels[keep, c] == 1, _scores(X_train[rows], y, X_test[keep], cost))
    return aps


def _rows(df, task, k, selection, metric):
    sel = df[(df.task == task) & (df.k == str(k)) & (df.cost_selection == selection) & (df.metric == metric)]
    return sel.assign(s=sel["sample"].astype(float)).sort_values("s") if metric in ("mAP", "top1") else sel


# --- VOC07 low-shot end to end -------------------------------------------------------------

SHOTS = {"layers": ["res5"], "image_size": 32, "num_samples": 2, "costs": [0.1, 1.0]}


def voc_suites(data: Path, samples: Path) -> str:
    exact = {**SHOTS, "k_values": [1, 4, 96], "n_jobs": 1, "solver": "liblinear"}  # compared with scikit-learn
    reference_samples = {**SHOTS, "task": "lowshot_voc07", "k_values": [1], "n_jobs": 1, "solver": "liblinear",
                         "sample_dir": str(samples)}
    return suites_yaml({
        "tiny": suite(data, {"random": RANDOM}, {
            "voc07_svm": voc07_svm(["res5"]), "lowshot_voc07": exact,
            "lowshot_voc07_torch": {**SHOTS, "task": "lowshot_voc07", "k_values": [1, 4, 96]}}),
        "tinyref": suite(data, {"random": RANDOM}, {"lowshot_ref": reference_samples}),
    })


def _stamps(cache: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in sorted(cache.rglob("*.npy"))}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("lowshot_voc")
    synth_voc07(root / "data", n_images=200, seed=0)
    train, test = load_voc(root / "data", "trainval"), load_voc(root / "data", "test")
    assert lowshot.voc07_max_k(train.labels) == 4  # so k = 96 must be skipped
    # reference-format files for the sample_dir run, drawn with an unrelated rng
    ref_rng = np.random.default_rng(2024)
    ref_samples = {s: lowshot.sample_voc07(train.labels, 1, ref_rng) for s in (1, 2)}
    (root / "refsamples").mkdir()
    for s, matrix in ref_samples.items():
        np.save(root / "refsamples" / f"train_targets_sample{s}_k1.npy", matrix)
    config = root / "bench.yaml"
    config.write_text(voc_suites(root / "data", root / "refsamples"))
    out = root / "runs"
    base = ["run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu"]
    assert main(base + ["--tasks", "voc07_svm"]) == 0
    cache = out / "feature-cache"
    after_svm = _stamps(cache)
    assert main(base + ["--tasks", "lowshot_voc07"]) == 0
    after_lowshot = _stamps(cache)
    assert main(base + ["--tasks", "lowshot_voc07_torch"]) == 0
    (X_train, X_test), weights = _random_resnet18_features(train.image_paths, test.image_paths)
    return SimpleNamespace(root=root, config=config, out=out, run=out / "tiny", base=base, cache=cache,
                           after_svm=after_svm, after_lowshot=after_lowshot, train=train, test=test,
                           X_train=X_train, X_test=X_test, weights=weights, ref_samples=ref_samples,
                           df=ResultStore(out / "tiny").load())


def _expected_voc(voc, k):
    """Independent per-sample (classes, costs) APs from the run's saved sample files."""
    directory = _sample_dir(voc.run, "lowshot_voc07")
    samples = [np.load(directory / f"train_targets_sample{s}_k{k}.npy") for s in (1, 2)]
    return samples, [_voc_sample_aps(m, voc.X_train, voc.X_test, voc.test.labels, COSTS) for m in samples]


@pytest.mark.slow
def test_voc_rows_and_aggregates(voc) -> None:
    df = voc.df[voc.df.task == "lowshot_voc07"]
    assert (df.weights_sha256.astype(str) == voc.weights).all()  # same model as the re-computation
    for k in (1, 4):
        for selection in ("reference(test-set)", "validation"):
            per_sample = _rows(df, "lowshot_voc07", k, selection, "mAP")
            assert list(per_sample.s) == [1.0, 2.0]
            values = per_sample.value.to_numpy(float)
            aggs = {m: _rows(df, "lowshot_voc07", k, selection, f"mAP_{m}").value.to_numpy(float)
                    for m in ("mean", "std", "min", "max", "ci95")}
            assert all(len(v) == 1 for v in aggs.values())
            assert aggs["mean"][0] == pytest.approx(np.mean(values), abs=1e-9)
            assert aggs["std"][0] == pytest.approx(np.std(values, ddof=0), abs=1e-9)
            assert aggs["min"][0] == pytest.approx(values.min(), abs=1e-9)
            assert aggs["max"][0] == pytest.approx(values.max(), abs=1e-9)
            # 2 samples: t.ppf(0.975, 1) * std(ddof=1) / sqrt(2) = 12.706 * |a - b| / 2
            assert aggs["ci95"][0] == pytest.approx(12.7062047 * abs(values[0] - values[1]) / 2, rel=1e-6)
            assert ((values > 0) & (values <= 100)).all()


@pytest.mark.slow
def test_voc_reference_selection_matches_sklearn(voc) -> None:
    for k in (1, 4):
        samples, aps = _expected_voc(voc, k)
        map_per_cost = np.array([np.nanmean(a, axis=0) * 100 for a in aps])  # (samples, costs)
        best = int(np.argmax(map_per_cost.mean(axis=0)))
        rows = _rows(voc.df, "lowshot_voc07", k, "reference(test-set)", "mAP")
        np.testing.assert_allclose(rows.value.to_numpy(float), map_per_cost[:, best], rtol=0, atol=1e-6)
        assert set(rows.cost.astype(float)) == {COSTS[best]}
        # the saved per-(k x sample, cost, class) array agrees with the re-computation everywhere
        saved = np.load(voc.run / "lowshot" / "random" / "lowshot_voc07" / "res5_ap.npz")
        idx = np.flatnonzero(saved["k"] == k)
        np.testing.assert_allclose(saved["ap"][idx], np.stack([a.T for a in aps]), rtol=0, atol=1e-8)
        np.testing.assert_allclose(saved["costs"], COSTS)


@pytest.mark.slow
def test_voc_validation_selection(voc) -> None:
    svm = voc.df[(voc.df.task == "voc07_svm") & (voc.df.metric == "AP")]
    assert len(svm) == 20
    full_cost = svm["cost"].astype(float).to_numpy()  # per-class cost of the full-data 3-fold CV

    # k = 1: one positive is fewer than 3 folds -> the voc07_svm run's per-class costs
    _, aps = _expected_voc(voc, 1)
    expected = [np.nanmean([a[c, COSTS.index(full_cost[c])] for c in range(20)]) * 100 for a in aps]
    rows = _rows(voc.df, "lowshot_voc07", 1, "validation", "mAP")
    np.testing.assert_allclose(rows.value.to_numpy(float), expected, rtol=0, atol=1e-6)
    assert set(rows.cost) == {"per-class:full-data-cv"}

    # k = 4: 3-fold CV on the 4 + 76 sample rows of each class
    samples, aps = _expected_voc(voc, 4)
    expected = []
    for sample, a in zip(samples, aps):
        chosen = []
        for c in range(20):
            rows_c = np.flatnonzero(sample[:, c] != -1)
            y = np.where(sample[rows_c, c] == 1, 1, -1)
            chosen.append(a[c, _cv_index(voc.X_train[rows_c], y, COSTS)])
        expected.append(np.nanmean(chosen) * 100)
    rows = _rows(voc.df, "lowshot_voc07", 4, "validation", "mAP")
    np.testing.assert_allclose(rows.value.to_numpy(float), expected, rtol=0, atol=1e-6)
    assert set(rows.cost) == {"per-class:3-fold-cv-on-sample"}


@pytest.mark.slow
def test_voc_samples_are_seeded_files_and_features_are_not_reextracted(voc) -> None:
    assert len(voc.after_svm) == 2  # res5 of trainval and test
    assert voc.after_lowshot == voc.after_svm  # the low-shot units only read the cache
    directory = _sample_dir(voc.run, "lowshot_voc07")
    assert sorted(p.name for p in directory.iterdir()) == sorted([
        f"train_targets_sample{s}_k{k}.npy" for k in (1, 4) for s in (1, 2)])
    for k in (1, 4):
        for s in (1, 2):
            matrix = np.load(directory / f"train_targets_sample{s}_k{k}.npy")
            assert matrix.shape == (100, 20)
            assert ((matrix == 1).sum(axis=0) == k).all() and ((matrix == 0).sum(axis=0) == 19 * k).all()
            assert (voc.train.labels[matrix == 1] == 1).all() and (voc.train.labels[matrix == 0] == 0).all()
            # drawn from the recorded seed: anyone can redraw them
            redrawn = lowshot.sample_voc07(voc.train.labels, k, lowshot.sample_rng(0, k, s))
            np.testing.assert_array_equal(matrix, redrawn)
        assert not np.array_equal(np.load(directory / f"train_targets_sample1_k{k}.npy"),
                                  np.load(directory / f"train_targets_sample2_k{k}.npy"))


@pytest.mark.slow
def test_voc_skipped_k_and_report(voc) -> None:
    skipped = voc.df[(voc.df.task == "lowshot_voc07") & (voc.df.metric == "skipped")]
    assert list(skipped.k) == ["96"]
    assert "k=96 skipped" in skipped.note.iloc[0]
    assert not (voc.df[(voc.df.task == "lowshot_voc07") & (voc.df.metric != "skipped")].k == "96").any()
    md = (voc.run / "leaderboard.md").read_text()
    assert "## lowshot_voc07 [cost: reference(test-set)]" in md
    assert "## lowshot_voc07 [cost: validation]" in md
    assert "picks this cost on the TEST set" in md
    warning_at = md.index("picks this cost on the TEST set")
    assert md.index("## lowshot_voc07 [cost: reference(test-set)]") < warning_at < md.index(
        "## lowshot_voc07 [cost: validation]")
    assert "k=1:mAP_mean" in md and "k=4:mAP_mean" in md and "k=96" not in md.split("## Skipped")[0]
    skipped_section = md.split("## Skipped")[1]
    assert "lowshot_voc07: k=96 skipped" in skipped_section
    assert (voc.run / "lowshot_voc07.png").stat().st_size > 1000


@pytest.mark.slow
def test_voc_force_rerun_reproduces_the_numbers(voc) -> None:
    directory = _sample_dir(voc.run, "lowshot_voc07")
    sample_stamps = {p: p.stat().st_mtime_ns for p in directory.iterdir()}
    assert main(voc.base + ["--tasks", "lowshot_voc07", "--force"]) == 0
    assert {p: p.stat().st_mtime_ns for p in directory.iterdir()} == sample_stamps  # read, not redrawn
    assert _stamps(voc.cache) == voc.after_svm
    key = ["task", "k", "cost_selection", "metric", "sample"]
    before = voc.df[voc.df.task == "lowshot_voc07"].sort_values(key)
    after = ResultStore(voc.run).load()
    after = after[after.task == "lowshot_voc07"].sort_values(key)
    assert len(after) == len(before)
    np.testing.assert_array_equal(after[key].fillna("").to_numpy(), before[key].fillna("").to_numpy())
    np.testing.assert_array_equal(after.value.to_numpy(float), before.value.to_numpy(float))


@pytest.mark.slow
def test_voc_sample_dir_files_are_used_instead_of_drawing(voc) -> None:
    assert main(["run", "--suite", "tinyref", "--config", str(voc.config), "--out", str(voc.out),
                 "--device", "cpu"]) == 0
    run = voc.out / "tinyref"
    assert not (run / "lowshot_samples").exists() or not any((run / "lowshot_samples").rglob("*"))
    assert _stamps(voc.cache) == voc.after_svm  # same features, read from the shared cache
    df = ResultStore(run).load()
    aps = [_voc_sample_aps(voc.ref_samples[s], voc.X_train, voc.X_test, voc.test.labels, COSTS) for s in (1, 2)]
    map_per_cost = np.array([np.nanmean(a, axis=0) * 100 for a in aps])
    best = int(np.argmax(map_per_cost.mean(axis=0)))
    rows = _rows(df, "lowshot_ref", 1, "reference(test-set)", "mAP")
    np.testing.assert_allclose(rows.value.to_numpy(float), map_per_cost[:, best], rtol=0, atol=1e-6)
    seeded = _rows(voc.df, "lowshot_voc07", 1, "reference(test-set)", "mAP").value.to_numpy(float)
    assert not np.allclose(rows.value.to_numpy(float), seeded)
    # without voc07_svm results in this run the k=1 fallback costs are computed by full-data CV:
    # they must agree with the voc07_svm costs of the other run (same features, same protocol)
    full_cost = voc.df[(voc.df.task == "voc07_svm") & (voc.df.metric == "AP")]["cost"].astype(float).to_numpy()
    expected = [np.nanmean([a[c, COSTS.index(full_cost[c])] for c in range(20)]) * 100 for a in aps]
    rows = _rows(df, "lowshot_ref", 1, "validation", "mAP")
    np.testing.assert_allclose(rows.value.to_numpy(float), expected, rtol=0, atol=1e-6)
    assert set(rows.cost) == {"per-class:full-data-cv"}


# --- Places205 low-shot end to end ---------------------------------------------------------

def places_suite(data: Path) -> str:
    exact = {**SHOTS, "k_values": [1, 4, 16], "n_jobs": 1, "solver": "liblinear"}  # compared with scikit-learn
    return suite_yaml(data, {"random": RANDOM}, {
        "lowshot_places205": exact,
        "lowshot_places205_torch": {**SHOTS, "task": "lowshot_places205", "k_values": [1, 4, 16]}}, name="places")


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("lowshot_places")
    synth_places205(root / "data", num_classes=4, train_per_class=8, val_per_class=4, seed=0)
    config = root / "bench.yaml"
    config.write_text(places_suite(root / "data"))
    out = root / "runs"
    assert main(["run", "--suite", "places", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 0
    train = load_places205(root / "data" / "Places205", "train")
    val = load_places205(root / "data" / "Places205", "val")
    (X_train, X_val), weights = _random_resnet18_features(train.image_paths, val.image_paths)
    return SimpleNamespace(run=out / "places", train=train, val=val, X_train=X_train, X_val=X_val,
                           weights=weights, df=ResultStore(out / "places").load())


def _places_expected(places, idx):
    """Per class and cost: val scores (classes, n_val, costs), val AP (classes, costs), CV choice."""
    X, labels = places.X_train[idx], places.train.labels[idx]
    scores = np.zeros((4, len(places.val.labels), len(COSTS)))
    aps = np.zeros((4, len(COSTS)))
    cv = []
    for c in range(4):
        y = np.where(labels == c, 1, -1)
        for j, cost in enumerate(COSTS):
            scores[c, :, j] = _scores(X, y, places.X_val, cost)
            aps[c, j] = voc_ap(places.val.labels == c, scores[c, :, j])
        cv.append(_cv_index(X, y, COSTS) if (y == 1).sum() >= 3 else None)
    return scores, aps, cv


@pytest.mark.slow
def test_places_lowshot_end_to_end(places) -> None:
    df = places.df
    assert (df.weights_sha256.astype(str) == places.weights).all()
    directory = _sample_dir(places.run, "lowshot_places205")
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        f"train_sample{s}_k{k}.npy" for k in (1, 4) for s in (1, 2))
    expected = {}
    for k in (1, 4):
        for s in (1, 2):
            idx = np.load(directory / f"train_sample{s}_k{k}.npy")
            assert (np.diff(idx) > 0).all()
            np.testing.assert_array_equal(np.bincount(places.train.labels[idx], minlength=4), [k] * 4)
            expected[k, s] = _places_expected(places, idx)

    for k in (1, 4):
        runs = [expected[k, s] for s in (1, 2)]
        map_per_cost = np.array([aps.mean(axis=0) * 100 for _, aps, _ in runs])
        best = int(np.argmax(map_per_cost.mean(axis=0)))
        top1 = [((scores[:, :, best].argmax(axis=0) == places.val.labels).mean() * 100) for scores, _, _ in runs]
        ref_map = _rows(df, "lowshot_places205", k, "reference(test-set)", "mAP")
        ref_top1 = _rows(df, "lowshot_places205", k, "reference(test-set)", "top1")
        np.testing.assert_allclose(ref_map.value.to_numpy(float), map_per_cost[:, best], rtol=0, atol=1e-6)
        np.testing.assert_allclose(ref_top1.value.to_numpy(float), top1, rtol=0, atol=1e-9)
        assert set(ref_top1.cost.astype(float)) == {COSTS[best]}
        # top-1 counts val images (the check lets an exact count move by one); an AP is no count
        assert np.allclose(ref_top1.metric_step.astype(float), 100 / len(places.val.labels))
        assert pd.to_numeric(ref_map.metric_step, errors="coerce").isna().all()

        # validation: per-class 3-fold CV on the sample; k = 1 borrows the k = 4 sample's choice
        chosen = [expected[4, s][2] for s in (1, 2)]
        assert all(c is not None for cs in chosen for c in cs)
        val_map = [np.mean([aps[c, chosen[i][c]] for c in range(4)]) * 100 for i, (_, aps, _) in enumerate(runs)]
        val_top1 = [(np.stack([scores[c, :, chosen[i][c]] for c in range(4)]).argmax(axis=0)
                     == places.val.labels).mean() * 100 for i, (scores, _, _) in enumerate(runs)]
        rows = _rows(df, "lowshot_places205", k, "validation", "mAP")
        np.testing.assert_allclose(rows.value.to_numpy(float), val_map, rtol=0, atol=1e-6)
        np.testing.assert_allclose(_rows(df, "lowshot_places205", k, "validation", "top1").value.to_numpy(float),
                                   val_top1, rtol=0, atol=1e-9)
        source = "per-class:3-fold-cv-on-sample" if k == 4 else "per-class:3-fold-cv-on-k4-sample"
        assert set(rows.cost) == {source}
        for selection in ("reference(test-set)", "validation"):
            for metric in ("mAP", "top1"):
                values = _rows(df, "lowshot_places205", k, selection, metric).value.to_numpy(float)
                mean = _rows(df, "lowshot_places205", k, selection, f"{metric}_mean").value.to_numpy(float)
                std = _rows(df, "lowshot_places205", k, selection, f"{metric}_std").value.to_numpy(float)
                assert mean == pytest.approx([np.mean(values)], abs=1e-9)
                assert std == pytest.approx([np.std(values)], abs=1e-9)

    skipped = df[(df.metric == "skipped") & (df.task == "lowshot_places205")]
    assert list(skipped.k) == ["16"]
    assert "k=16 skipped" in skipped.note.iloc[0] and "8 training images" in skipped.note.iloc[0]
    assert not (df[df.metric != "skipped"].k == "16").any()
    md = (places.run / "leaderboard.md").read_text()
    assert "## lowshot_places205 [cost: reference(test-set)]" in md and "k=16 skipped" in md.split("## Skipped")[1]
    assert (places.run / "lowshot_places205.png").stat().st_size > 1000


def _sample_dir(run, task: str):
    """Samples live under <task>/<split>-<fingerprint>/seed<seed>: exactly one such folder here."""
    (directory,) = (run / "lowshot_samples" / task).glob("*/seed0")
    return directory


def test_a_sample_file_for_other_labels_is_rejected(tmp_path) -> None:
    from benchmark.errors import DatasetError

    rng = np.random.default_rng(0)
    labels = np.where(rng.random((60, 3)) < 0.3, 1, 0).astype(np.int8)
    sample = lowshot.sample_voc07(labels, 2, np.random.default_rng(1))
    assert lowshot.check_voc_sample(sample, labels, tmp_path / "f.npy") is sample
    with pytest.raises(DatasetError, match="f.npy"):
        lowshot.check_voc_sample(sample[:50], labels[:50].copy() * 0 + labels[10:60], tmp_path / "f.npy")
    with pytest.raises(DatasetError, match="another split"):
        lowshot.check_voc_sample(sample[:50], labels, tmp_path / "f.npy")
    places_labels = np.repeat(np.arange(3), 5)
    idx = lowshot.sample_places(places_labels, 3, 2, np.random.default_rng(0))
    assert lowshot.check_places_sample(idx, places_labels, 3, 2, tmp_path / "p.npy") is idx
    with pytest.raises(DatasetError, match="p.npy"):
        lowshot.check_places_sample(idx, places_labels, 3, 3, tmp_path / "p.npy")
    with pytest.raises(DatasetError, match="outside"):
        lowshot.check_places_sample(idx + 100, places_labels, 3, 2, tmp_path / "p.npy")


def _engine_vs_liblinear(df, task: str, engine_task: str) -> int:
    """The batched engine's rows (solver: torch, the default) against the liblinear run's on the
    same samples and features: every low-shot value within 0.2 points; returns rows compared."""
    ours, theirs = df[df.task == engine_task], df[df.task == task]
    assert set(ours.solver) == {"torch-newton(cpu,mixed)"} and set(theirs.solver) == {"liblinear+span"}
    key = ["layer", "k", "sample", "cost_selection", "metric"]
    values = ours[ours.metric != "skipped"].merge(theirs, on=key, suffixes=("_engine", "_liblinear"))
    assert len(values) == (ours.metric != "skipped").sum() == (theirs.metric != "skipped").sum()
    both = values[["value_engine", "value_liblinear"]].to_numpy(float)
    assert np.isfinite(both).all()
    assert np.abs(both[:, 0] - both[:, 1]).max() <= 0.2
    assert (ours[ours.cost_selection == "reference(test-set)"].cost.astype(float).to_numpy()
            == theirs[theirs.cost_selection == "reference(test-set)"].cost.astype(float).to_numpy()).all()
    assert (ours.not_converged.astype(float) == 0).all()
    return len(values)


@pytest.mark.slow
def test_voc_engine_rows_match_liblinear(voc) -> None:
    assert _engine_vs_liblinear(voc.df, "lowshot_voc07", "lowshot_voc07_torch") > 20


@pytest.mark.slow
def test_places_engine_rows_match_liblinear(places) -> None:
    assert _engine_vs_liblinear(places.df, "lowshot_places205", "lowshot_places205_torch") > 20
