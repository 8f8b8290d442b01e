"""The batched engine on low-shot samples against liblinear, one class and cost at a time
(benchmark.svm.liblinear's low-shot sweep): decision values/APs at every cost and the CV-chosen cost."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
import torch

from benchmark.datasets.synth_features import voc_like_features
from benchmark.metrics import voc_ap
from benchmark.svm import liblinear
from benchmark.svm.batched import SolverOptions, lowshot_sweep_torch, sample_and_folds_along_costs, shared_layout
from benchmark.svm.protocol import REFERENCE_COSTS, FitLog, l2_normalize
from benchmark.svm.solvers import TorchSolver
from tasks.lowshot import protocol as lowshot

CPU = torch.device("cpu")
COSTS = [1e-5, 1e-3, 0.03125, 0.1, 1.0, 10.0]


def _check_class(X, y, X_eval, eval_positive, costs, sweep_scores, sweep_cv, folds=3):
    """Test AP at every cost within 0.2 points of liblinear's (where liblinear converged); the
    CV-chosen cost equal, or liblinear's within 0.1 CV-AP points of ours in our CV."""
    log = FitLog()
    reference = liblinear.decision_values_all_costs(X, y, X_eval, costs, seed=0, log=log)
    assert log.fits == len(costs)
    for j in range(len(costs)):
        ours, theirs = voc_ap(eval_positive, sweep_scores[:, j]), voc_ap(eval_positive, reference[:, j])
        assert abs(ours - theirs) * 100 <= 0.2, costs[j]
    chosen = liblinear.cv_cost(X, y, costs, folds, seed=0, log=FitLog())
    if chosen is None:
        assert np.isnan(sweep_cv).all()
        return
    ours = costs[int(np.argmax(sweep_cv))]
    assert ours == chosen or (np.nanmax(sweep_cv) - sweep_cv[costs.index(chosen)]) * 100 <= 0.1


@pytest.fixture(scope="module")
def features():
    Xtr, Ltr, Xte, Lte = voc_like_features(700, 300, 600, classes=4, seed=5)
    return l2_normalize(Xtr), np.where(Ltr == -1, 0, Ltr), l2_normalize(Xte), Lte


@pytest.mark.parametrize("k", [2, 8])
def test_voc07_samples_every_class_matches_liblinear(features, k) -> None:
    X, labels, X_test, test_labels = features
    sample = lowshot.sample_voc07(labels, k, lowshot.sample_rng(0, k, 1))
    Y = np.where(sample == 1, 1, np.where(sample == 0, -1, 0))
    sweep = lowshot_sweep_torch(X, Y, X_test, COSTS, device=CPU)
    assert sweep.scores.shape == (len(X_test), 4, len(COSTS)) and sweep.cv_ap.shape == (4, len(COSTS))
    for c in range(4):
        rows = np.flatnonzero(sample[:, c] != -1)  # k positives and 3k negatives of this class
        assert len(rows) == 4 * k
        keep = test_labels[:, c] != -1
        _check_class(X[rows], Y[rows, c], X_test[keep], test_labels[keep, c] == 1, COSTS,
                     sweep.scores[keep, c], sweep.cv_ap[c])
        log = sweep.logs[c]
        assert log.not_converged == 0
        assert log.fits == len(COSTS) * (1 + (3 if k >= 3 else 0))  # k < folds: no CV, as liblinear
    if k < 3:
        assert np.isnan(sweep.cv_ap).all()


def test_places_style_shared_sample_matches_liblinear(features) -> None:
    """One-vs-rest over classes that share one sample of k images per class."""
    X, labels, X_test, _ = features
    rng = np.random.default_rng(0)
    single = rng.integers(0, 4, len(X))  # one label per image, as Places205
    idx = lowshot.sample_places(single, 4, 6, lowshot.sample_rng(0, 6, 1))
    Y = np.where(single[idx][:, None] == np.arange(4)[None, :], 1, -1)
    eval_labels = rng.integers(0, 4, len(X_test))
    sweep = lowshot_sweep_torch(X[idx], Y, X_test, COSTS, device=CPU)
    for c in range(4):
        _check_class(X[idx], Y[:, c], X_test, eval_labels == c, COSTS, sweep.scores[:, c], sweep.cv_ap[c])


def test_rows_outside_every_sample_do_not_matter(features) -> None:
    """Rows no class samples are dropped before the kernel: same answers as passing the sample only."""
    X, labels, X_test, _ = features
    sample = lowshot.sample_voc07(labels, 4, lowshot.sample_rng(0, 4, 2))
    Y = np.where(sample == 1, 1, np.where(sample == 0, -1, 0))
    used = np.flatnonzero((Y != 0).any(axis=1))
    assert len(used) < len(X)
    full = lowshot_sweep_torch(X, Y, X_test, REFERENCE_COSTS[:8], device=CPU)
    subset = lowshot_sweep_torch(X[used], Y[used], X_test, REFERENCE_COSTS[:8], device=CPU)
    np.testing.assert_allclose(full.scores, subset.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full.cv_ap, subset.cv_ap, atol=1e-12)


def test_no_cv_requested(features) -> None:
    X, labels, X_test, _ = features
    sample = lowshot.sample_voc07(labels, 4, lowshot.sample_rng(0, 4, 3))
    Y = np.where(sample == 1, 1, np.where(sample == 0, -1, 0))
    sweep = lowshot_sweep_torch(X, Y, X_test, COSTS, cv=False, device=CPU)
    assert np.isnan(sweep.cv_ap).all() and all(log.fits == len(COSTS) for log in sweep.logs)


def test_full_data_cv_costs_match_liblinear(features) -> None:
    """The VOC07 fallback for k < folds without voc07_svm results: per-class CV cost on all rows."""
    from benchmark.svm.batched import cv_costs_torch
    from benchmark.svm.protocol import to_binary

    X, labels, _, _ = features
    Y = np.stack([to_binary(labels[:, c]) for c in range(4)], axis=1)
    Y[:, 3] = -1
    Y[:2, 3] = 1  # 2 positives < 3 folds: no CV cost, as liblinear's cv_cost
    ours = cv_costs_torch(X, Y, COSTS, 3, device=CPU)
    assert ours[3] is None
    for c in range(3):
        theirs = liblinear.cv_cost(X, Y[:, c], COSTS, 3, seed=0, log=FitLog())
        assert ours[c] == theirs, c


def test_samples_share_the_layers_kernels(features) -> None:
    """Samples gathered from one layer-wide kernel (shared_layout) give what a kernel built for the
    sample gives, and float64 throughout (mixed=False) the same answers as mixed precision."""
    X, Ltr, X_eval, _ = features
    layout = shared_layout(X, X_eval, CPU)
    for k in (2, 8):
        sample = lowshot.sample_voc07(Ltr, k, lowshot.sample_rng(0, k, 1))
        Y = np.where(sample == 1, 1, np.where(sample == 0, -1, 0))
        alone = lowshot_sweep_torch(X, Y, X_eval, COSTS, device=CPU)
        shared = lowshot_sweep_torch(X, Y, X_eval, COSTS, device=CPU, layout=layout)
        exact = lowshot_sweep_torch(X, Y, X_eval, COSTS, device=CPU, mixed=False)
        scale = float(np.abs(alone.scores).max())
        np.testing.assert_allclose(shared.scores, alone.scores, atol=1e-5 * scale)
        np.testing.assert_allclose(exact.scores, alone.scores, atol=1e-3 * scale)
        np.testing.assert_allclose(shared.cv_ap, alone.cv_ap, atol=1e-3, equal_nan=True)
        np.testing.assert_allclose(exact.cv_ap, alone.cv_ap, atol=1e-2, equal_nan=True)


def test_per_class_blocks_solve_the_union_problems(features) -> None:
    """VOC07 classes on their own kernel blocks (BlockKernel) give the answers of masked columns
    of the union's kernel: the same problems, rows and folds."""
    X, Ltr, X_eval, _ = features
    layout = shared_layout(X, X_eval, CPU)
    sample = lowshot.sample_voc07(Ltr, 8, lowshot.sample_rng(0, 8, 2))
    Y = np.where(sample == 1, 1, np.where(sample == 0, -1, 0))
    member = Y != 0
    classes = list(range(Y.shape[1]))
    out = {}
    for blocks in (True, False):
        logs = {c: FitLog() for c in classes}
        out[blocks] = sample_and_folds_along_costs(layout, Y, member, classes, classes, COSTS, 3, logs,
                                                   SolverOptions(), blocks=blocks)
        assert sum(log.not_converged for log in logs.values()) == 0
        assert sum(log.fits for log in logs.values()) == len(classes) * len(COSTS) * 4
    scores_b, cv_b = out[True]
    scores_u, cv_u = out[False]
    scale = float(np.abs(scores_u).max())
    np.testing.assert_allclose(scores_b, scores_u, atol=2e-4 * scale)
    for c in classes:
        np.testing.assert_allclose(cv_b[c], cv_u[c], atol=2e-3)
    # and the union's rows really are many more than one class's: the blocks are the point
    assert member.any(axis=1).sum() > 2 * member[:, 0].sum()


def test_class_blocks_reuse_their_memory_in_a_workspace(features) -> None:
    """In a ``block_workspace`` each sample's class blocks (and float32 copy) are the kernel's
    entries on the class's rows, written into the same buffers while the shape stays; a new
    shape gets new ones; outside the scope every call gathers fresh blocks. The samples' answers
    are identical either way."""
    X, Ltr, X_eval, _ = features
    layout = shared_layout(X, X_eval, CPU)
    rng = np.random.default_rng(3)

    def index(m):
        return torch.as_tensor(np.stack([np.sort(rng.choice(len(X), m, replace=False)) for _ in range(3)]))

    def expected(idx):
        return np.stack([layout.K.numpy()[np.ix_(rows, rows)] for rows in idx.numpy()])

    first, second, other = index(40), index(40), index(25)
    with layout.block_workspace():
        blocks, fast = layout.class_blocks(first)
        np.testing.assert_array_equal(blocks.numpy(), expected(first))
        np.testing.assert_array_equal(fast.numpy(), expected(first).astype(np.float32))
        pointers = blocks.data_ptr(), fast.data_ptr()
        blocks, fast = layout.class_blocks(second)
        assert (blocks.data_ptr(), fast.data_ptr()) == pointers
        np.testing.assert_array_equal(blocks.numpy(), expected(second))
        np.testing.assert_array_equal(fast.numpy(), expected(second).astype(np.float32))
        blocks, _ = layout.class_blocks(other)
        assert blocks.shape == (3, 25, 25)
        np.testing.assert_array_equal(blocks.numpy(), expected(other))
    fresh, fresh_fast = layout.class_blocks(first)
    again, _ = layout.class_blocks(first)
    assert fresh.data_ptr() != again.data_ptr()
    np.testing.assert_array_equal(fresh.numpy(), expected(first))
    np.testing.assert_array_equal(fresh_fast.numpy(), expected(first).astype(np.float32))

    samples = [lowshot.sample_voc07(Ltr, 8, lowshot.sample_rng(0, 8, s)) for s in (1, 2)]
    sweeps = {}
    for kept in (False, True):
        scope = layout.block_workspace() if kept else contextlib.nullcontext()
        with scope:
            sweeps[kept] = [lowshot_sweep_torch(X, np.where(s == 1, 1, np.where(s == 0, -1, 0)), X_eval, COSTS,
                                                device=CPU, layout=layout) for s in samples]
    for kept, fresh_sweep in zip(sweeps[True], sweeps[False]):
        np.testing.assert_array_equal(kept.scores, fresh_sweep.scores)
        np.testing.assert_array_equal(kept.cv_ap, fresh_sweep.cv_ap)


def test_each_thread_keeps_its_own_block_workspace(features) -> None:
    """Samples solved in several threads: a thread's ``block_workspace`` serves only that thread;
    a thread outside any scope gathers fresh blocks even while another thread's scope is open."""
    X, _, X_eval, _ = features
    layout = shared_layout(X, X_eval, CPU)
    index = torch.as_tensor(np.stack([np.arange(0, 60, 2), np.arange(1, 61, 2)]))
    seen = {}

    def in_scope(name):
        with layout.block_workspace():
            seen[name] = [layout.class_blocks(index)[0].data_ptr() for _ in range(2)]

    def outside():
        # both kept alive: a freed block's memory may be handed out again at the same address
        first, second = (layout.class_blocks(index)[0] for _ in range(2))
        seen["outside"] = [first.data_ptr(), second.data_ptr()]

    with layout.block_workspace():
        mine = layout.class_blocks(index)[0].data_ptr()
        for target, args in ((in_scope, ("other",)), (outside, ())):
            thread = threading.Thread(target=target, args=args)
            thread.start()
            thread.join()
        assert layout.class_blocks(index)[0].data_ptr() == mine
    other = seen["other"]
    assert other[0] == other[1] and other[0] != mine  # its own buffers, reused within its scope
    assert seen["outside"][0] != seen["outside"][1]  # no scope in that thread: fresh blocks


def test_samples_solved_side_by_side_give_the_serial_answers(features) -> None:
    """``TorchSolver.lowshot_voc07`` with two sample workers: the same test APs, chosen costs,
    cost sources and fit counts as one sample after the other, bit for bit when every sample runs
    single-threaded either way (three samples of different k: two side by side, the third split
    into two class groups side by side; and one sample alone, split the same way)."""
    X, Ltr, X_eval, Lte = features
    samples = [lowshot.sample_voc07(Ltr, k, lowshot.sample_rng(0, k, 1)) for k in (2, 8, 4)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {workers: TorchSolver(CPU, workers=workers).lowshot_voc07(X, X_eval, Lte, samples, COSTS, 3, {}.get)
               for workers in (1, 2)}
    finally:
        torch.set_num_threads(threads)
    serial, side_by_side = out[1], out[2]
    np.testing.assert_array_equal(side_by_side[0], serial[0])
    np.testing.assert_array_equal(side_by_side[1], serial[1])
    assert side_by_side[2] == serial[2]
    assert [(log.fits, log.not_converged) for log in side_by_side[3]] == [(log.fits, log.not_converged)
                                                                         for log in serial[3]]
    # every sample at every cost, and the 3 CV folds of the k = 8 and k = 4 samples (k = 2 has
    # fewer positives than folds: no CV, and no fallback cost here)
    assert serial[3][0].fits == 3 * len(COSTS) + 2 * 3 * len(COSTS)
    assert serial[2][0] == ["none(too-few-positives)"] * Lte.shape[1]
    assert serial[2][1] == ["3-fold-cv-on-sample"] * Lte.shape[1]
    assert not np.isnan(serial[0]).any()
    torch.set_num_threads(1)
    try:
        alone = TorchSolver(CPU, workers=2).lowshot_voc07(X, X_eval, Lte, samples[1:2], COSTS, 3, {}.get)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(alone[0], serial[0][1:2])
    np.testing.assert_array_equal(alone[1], serial[1][1:2])
    assert alone[2] == serial[2][1:2]


def test_balanced_parts_split_the_work_evenly() -> None:
    from benchmark.svm.solvers import _balanced_parts

    assert _balanced_parts([1.0] * 6, 2) == [[0, 2, 4], [1, 3, 5]]
    # largest first, each to the lighter part: 9 | 5, 3, then 1 to (9 | 8), the last 1 to (9 | 9): 10 against 9
    assert _balanced_parts([9, 1, 1, 5, 3], 2) == [[0, 2], [1, 3, 4]]
    assert _balanced_parts([4, 4], 3) == [[0], [1]]  # no empty part
    parts = _balanced_parts(list(range(20)), 3)
    assert sorted(i for part in parts for i in part) == list(range(20))
    assert max(sum(part) for part in parts) - min(sum(part) for part in parts) <= 1


def test_sample_workers_follow_the_cores_the_memory_and_the_device() -> None:
    solver = TorchSolver(CPU)
    threads = torch.get_num_threads()
    assert solver.sample_workers(1, 10, 10**9) == 1
    assert solver.sample_workers(40, 10, 10**9) == threads
    assert solver.sample_workers(40, 10**9, 10**9) == 1  # one sample's memory fills the budget
    assert TorchSolver(CPU, workers=3).sample_workers(40, 10, 10**9) == 3
    assert TorchSolver(CPU, workers=3).sample_workers(40, 10**9 // 2, 10**9) == 2
    assert TorchSolver(torch.device("cuda"), workers=3).sample_workers(40, 10, 10**9) == 1


def test_each_in_threads_runs_every_item_once_in_order_and_raises_the_first_error() -> None:
    from benchmark.svm.solvers import _each_in_threads

    scopes = []

    @contextlib.contextmanager
    def scope():
        scopes.append(threading.get_ident())
        yield

    sizes = [1, 5, 3, 2, 4]
    assert _each_in_threads(lambda i: i * i, sizes, 2, scope) == [0, 1, 4, 9, 16]
    assert len(scopes) == 2  # one per worker
    scopes.clear()
    assert _each_in_threads(lambda i: i + 1, sizes, 1, scope) == [1, 2, 3, 4, 5]
    assert scopes == [threading.get_ident()]  # one worker: in order, here, in one scope
    started = []

    def failing(i):
        started.append(i)
        if i == 1:  # the largest item: taken first
            raise ValueError("sample 1 is broken")
        return i

    with pytest.raises(ValueError, match="sample 1 is broken"):
        _each_in_threads(failing, sizes, 2, contextlib.nullcontext)
    assert len(started) < len(sizes)  # the others stopped taking items
