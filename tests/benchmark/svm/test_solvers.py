"""The solver interface (benchmark.svm.solvers): one set of calls over liblinear and the batched
engine, which give the same answers as the functions they wrap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.errors import ConfigError
from benchmark.svm.batched import cv_costs_torch, lowshot_sweep_torch, voc07_svm_torch
from benchmark.svm.liblinear import cv_cost, lowshot_places_class, span_coordinates, voc07_svm
from benchmark.svm.protocol import FitLog, l2_normalize, to_binary
from benchmark.svm.solvers import SOLVERS, LiblinearSolver, Solver, TorchSolver, make_solver

CPU = torch.device("cpu")
COSTS = [0.1, 1.0]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X, X_test = rng.normal(size=(40, 60)), rng.normal(size=(20, 60))
    labels = np.where(rng.random((40, 3)) < 0.4, 1, 0).astype(np.int8)
    test_labels = np.where(rng.random((20, 3)) < 0.4, 1, 0).astype(np.int8)
    return X, labels, X_test, test_labels


def test_make_solver_builds_each_solver_and_names_it() -> None:
    assert set(SOLVERS) == {"torch", "liblinear"}
    torch_solver = make_solver("torch", "cpu")
    assert isinstance(torch_solver, TorchSolver) and torch_solver.device == CPU
    assert torch_solver.name == "torch-newton(cpu,mixed)" and torch_solver.mixed
    assert make_solver("torch", "cpu", mixed=False).name == "torch-newton(cpu,float64)"
    assert make_solver("torch", CPU).device == CPU
    liblinear = make_solver("liblinear", n_jobs=3, seed=7)
    assert isinstance(liblinear, LiblinearSolver) and isinstance(liblinear, Solver)
    assert (liblinear.n_jobs, liblinear.seed, liblinear.name) == (3, 7, "liblinear+span")
    assert make_solver("liblinear", span=False).name == "liblinear"


def test_unknown_solver_names_the_task() -> None:
    with pytest.raises(ConfigError, match="voc07_svm: unknown solver 'sklearn'"):
        make_solver("sklearn", task="voc07_svm")


def test_shared_coordinates_span_only_for_liblinear_and_n_below_d(data) -> None:
    X, _, X_test, _ = data
    Z, Z_test = make_solver("liblinear").shared_coordinates(X, X_test)
    expected = span_coordinates(X, X_test)
    assert np.array_equal(Z, expected[0]) and np.array_equal(Z_test, expected[1])
    for solver in (make_solver("liblinear", span=False), make_solver("torch", "cpu")):
        same = solver.shared_coordinates(X, X_test)
        assert same[0] is X and same[1] is X_test
    wide = X[:, :10]  # n > d: nothing to gain
    assert make_solver("liblinear").shared_coordinates(wide, X_test[:, :10])[0] is wide


def test_voc07_is_the_wrapped_protocol(data) -> None:
    X, labels, X_test, test_labels = data
    ours = make_solver("liblinear", n_jobs=1, seed=0).voc07(X, labels, X_test, test_labels, COSTS, 3)
    theirs = voc07_svm(X, labels, X_test, test_labels, costs=COSTS, folds=3, n_jobs=1, seed=0, span_trick=True)
    assert [(r.best_cost, r.test_ap, r.cv_ap) for r in ours] == [(r.best_cost, r.test_ap, r.cv_ap) for r in theirs]
    ours = make_solver("torch", "cpu").voc07(X, labels, X_test, test_labels, COSTS, 3)
    theirs = voc07_svm_torch(X, labels, X_test, test_labels, COSTS, folds=3, device=CPU)
    assert [(r.best_cost, r.test_ap, r.cv_ap) for r in ours] == [(r.best_cost, r.test_ap, r.cv_ap) for r in theirs]


def test_cv_costs_is_the_wrapped_choice(data) -> None:
    X, labels, _, _ = data
    X = l2_normalize(X)
    Y = np.stack([to_binary(labels[:, c]) for c in range(3)], axis=1)
    assert make_solver("liblinear", seed=0).cv_costs(X, Y, COSTS, 3) == \
        {c: cv_cost(X, Y[:, c], COSTS, 3, 0, FitLog()) for c in range(3)}
    assert make_solver("torch", "cpu").cv_costs(X, Y, COSTS, 3) == cv_costs_torch(X, Y, COSTS, 3, CPU)


def test_lowshot_places_same_shapes_and_choices_from_both_solvers(data) -> None:
    X, _, X_test, _ = data
    X, X_test = l2_normalize(X[:24]), l2_normalize(X_test)
    y = np.repeat(np.arange(3), 8)
    val_labels = np.random.default_rng(1).integers(0, 3, len(X_test))
    out = {}
    for name in SOLVERS:
        log = FitLog()
        scores, aps, cv = make_solver(name, "cpu", n_jobs=1).lowshot_places(X, y, X_test, val_labels, 3, COSTS, 3, log)
        assert scores.shape == (3, len(X_test), len(COSTS)) and scores.dtype == np.float32
        assert aps.shape == (3, len(COSTS)) and cv.shape == (3,)
        assert log.fits == 3 * len(COSTS) * 4  # every class x cost on the sample, and 3 CV folds
        out[name] = scores, aps, cv
    Y = np.where(y[:, None] == np.arange(3)[None, :], 1, -1)
    swept = lowshot_sweep_torch(X, Y, X_test, COSTS, 3, device=CPU).scores
    assert np.array_equal(out["torch"][0], np.moveaxis(swept, 1, 0))
    Z, Z_test = span_coordinates(X, X_test)
    per_class = [lowshot_places_class(c, Z, y, Z_test, val_labels, COSTS, 3, 0) for c in range(3)]
    assert np.array_equal(out["liblinear"][0], np.stack([r[0] for r in per_class]))
    assert out["liblinear"][2].tolist() == [-1 if r[2] is None else r[2] for r in per_class]


def test_float64_and_mixed_precision_give_the_same_protocol(data) -> None:
    """svm_precision: float64 runs the engine in float64 throughout; mixed (the default) gives the
    same chosen costs and test APs on the same features."""
    X, labels, X_test, test_labels = data
    mixed = make_solver("torch", "cpu").voc07(X, labels, X_test, test_labels, [0.01, 0.1, 1.0, 10.0], 3)
    exact = make_solver("torch", "cpu", mixed=False).voc07(X, labels, X_test, test_labels, [0.01, 0.1, 1.0, 10.0], 3)
    for a, b in zip(mixed, exact):
        assert a.best_cost == b.best_cost
        assert abs(a.test_ap - b.test_ap) < 1e-6
        np.testing.assert_allclose(a.cv_ap, b.cv_ap, atol=1e-6)
