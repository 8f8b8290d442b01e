"""CG steps on each class's active rows (``newton._compaction``) and the batched block products
(``newton._Packing``): the same problems, the same stopping test, on the float64 kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.datasets.synth_features import voc_like_features
from benchmark.svm import newton
from benchmark.svm.batched import SolverOptions, sample_and_folds_along_costs, shared_layout
from benchmark.svm.newton import (
    TOL,
    BlockKernel,
    DenseKernel,
    _Packing,
    lowrank_eig,
    projected_gradient_range,
    solve,
)
from benchmark.svm.protocol import FitLog, l2_normalize
from tasks.lowshot import protocol as lowshot

CPU = torch.device("cpu")
COSTS = [1e-5, 1e-3, 0.03125, 0.1, 1.0, 10.0, 100.0]


@pytest.fixture
def compaction_counter(monkeypatch):
    """Compaction allowed at any size, and a count of the CG runs that were compacted."""
    runs = []
    original = newton._compact_cg

    def counting(K, chunks, *args, **kwargs):
        runs.append(len(chunks))
        return original(K, chunks, *args, **kwargs)

    monkeypatch.setattr(newton, "COMPACT_FROM_ENTRIES", 0)
    monkeypatch.setattr(newton, "_compact_cg", counting)
    return runs


@pytest.mark.parametrize("few_blocks", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("many_columns", [False, True])  # both bmm layouts (``_Packing.TRANSPOSED_UP_TO``)
def test_packing_product_is_each_columns_block_product(few_blocks, symmetric, many_columns) -> None:
    rng = np.random.default_rng(0)
    blocks = torch.as_tensor(rng.normal(size=(6, 20, 20 if symmetric else 7)))
    if symmetric:
        blocks = blocks + blocks.transpose(1, 2)
    owner = [1, 1, 2] if few_blocks else [0, 3, 3, 3, 1, 5, 2, 4, 0]  # uneven, some blocks empty
    if many_columns:
        owner += [3] * (_Packing.TRANSPOSED_UP_TO + 1)
    owner = torch.tensor(owner)
    v = torch.as_tensor(rng.normal(size=(20, len(owner))))
    packing = _Packing(owner, len(blocks))
    assert packing.looped == few_blocks
    assert (packing.q > _Packing.TRANSPOSED_UP_TO) == many_columns
    out = packing.product(v, blocks, symmetric=symmetric)
    expected = torch.stack([v[:, j] @ blocks[owner[j]] for j in range(len(owner))], dim=1)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["dense", "factored", "blocks"])
@pytest.mark.parametrize("nonzero_rows", [3, 40])  # few rows: their kernel rows only; many: the full product
def test_sparse_matmul_is_the_full_product(kind, nonzero_rows) -> None:
    rng = np.random.default_rng(1)
    A = torch.as_tensor(rng.normal(size=(48, 10)))
    blocks = torch.stack([A @ A.T, 2 * A @ A.T + 1, A @ A.T + 3])
    kernel = {"dense": DenseKernel(A @ A.T), "factored": newton.FactoredKernel(A),
              "blocks": BlockKernel(blocks, torch.tensor([2, 0, 2, 2, 1]))}[kind]
    cols = torch.tensor([0, 2, 3])
    p = torch.zeros((48, len(cols)), dtype=torch.float64)
    rows = rng.choice(48, nonzero_rows, replace=False)
    p[rows] = torch.as_tensor(rng.normal(size=(nonzero_rows, len(cols))))
    expected = (torch.stack([blocks[[2, 2, 2][j]] @ p[:, j] for j in range(len(cols))], 1) if kind == "blocks"
                else (A @ A.T) @ p)
    np.testing.assert_allclose(kernel.sparse_matmul(p, cols).numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)


def test_block_sparse_matmul_mixes_sparse_and_full_blocks() -> None:
    """Columns of two blocks, one with a few non-zero rows (read row by row), one with many (its
    full block product): each column is its own block's product."""
    rng = np.random.default_rng(2)
    A = torch.as_tensor(rng.normal(size=(48, 10)))
    blocks = torch.stack([A @ A.T, 2 * A @ A.T + 1, A @ A.T + 3])
    kernel = BlockKernel(blocks, torch.tensor([2, 0, 2, 2, 1]))
    cols = torch.tensor([1, 0, 3])  # blocks 0, 2, 2
    p = torch.zeros((48, 3), dtype=torch.float64)
    p[:, 0] = torch.as_tensor(rng.normal(size=48))
    p[[4, 9], 1:] = torch.as_tensor(rng.normal(size=(2, 2)))
    expected = torch.stack([blocks[b] @ p[:, j] for j, b in enumerate([0, 2, 2])], 1)
    np.testing.assert_allclose(kernel.sparse_matmul(p, cols).numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)


def _grouped_problem(seed=3, n=360, d=300, classes=3, folds=2):
    """Classes x (all rows, then each fold's training rows): one group per class, as a low-shot
    sample and its CV folds. Separated clusters, so that few rows stay active at large costs."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, classes, n)
    X = l2_normalize(rng.normal(size=(classes, d))[label] + 0.6 * rng.normal(size=(n, d)))
    A = torch.cat([torch.as_tensor(X, dtype=torch.float64), torch.ones(n, 1, dtype=torch.float64)], 1)
    labels, train, groups = [], [], []
    fold_of = np.arange(n) % folds
    for c in range(classes):
        y = np.where(label == c, 1.0, -1.0)
        for j in range(-1, folds):
            labels.append(y)
            train.append(np.ones(n, bool) if j < 0 else fold_of != j)
            groups.append(c)
    return (A @ A.T, torch.as_tensor(np.stack(labels, 1)), torch.as_tensor(np.stack(train, 1)),
            torch.as_tensor(groups))


@pytest.mark.parametrize("bytes_per_chunk", [2**30, 40_000])
def test_compacted_cg_meets_liblinears_test_on_the_float64_kernel(compaction_counter, monkeypatch,
                                                                  bytes_per_chunk) -> None:
    monkeypatch.setattr(newton, "COMPACT_BYTES", bytes_per_chunk)  # 40 kB: one class per chunk
    K, Y, train, groups = _grouped_problem()
    for cost in (10.0, 100.0):
        c = cost * torch.where(Y > 0, 2.0, 1.0)
        lowrank = lowrank_eig(K, 32)
        compacted, info = solve(DenseKernel(K, mixed=True), Y, c, train, lowrank=lowrank, groups=groups)
        plain, _ = solve(DenseKernel(K, mixed=True), Y, c, train, lowrank=lowrank)
        assert bool(info.converged.all())
        pg = projected_gradient_range(compacted, K @ compacted, Y, c, train)  # from scratch, float64
        assert float(pg.max()) <= TOL
        assert float((Y * compacted).min()) >= 0 and float(compacted[~train].abs().max()) == 0
        np.testing.assert_allclose((K @ compacted).numpy(), (K @ plain).numpy(), atol=2e-3)
    assert compaction_counter, "no CG run was compacted"
    if bytes_per_chunk < 2**30:
        assert max(compaction_counter) > 1  # the classes really ran in several chunks


def test_compaction_needs_a_mixed_kernel_and_skips_small_or_dense_active_sets(monkeypatch) -> None:
    K, Y, train, groups = _grouped_problem()
    active = train.clone()
    columns = torch.arange(Y.shape[1])
    # below COMPACT_FROM_ENTRIES kernel entries: never
    assert newton._compaction(DenseKernel(K, mixed=True), active, groups, columns) is None
    monkeypatch.setattr(newton, "COMPACT_FROM_ENTRIES", 0)
    # every row active in each class: gathering would copy the whole kernel per class
    assert newton._compaction(DenseKernel(K, mixed=True), active, groups, columns) is None
    few = active & (torch.arange(len(K)) % 10 == 0).unsqueeze(1)
    assert newton._compaction(DenseKernel(K), few, groups, columns) is None  # float64 throughout: no
    chunks = newton._compaction(DenseKernel(K, mixed=True), few, groups, columns)
    assert chunks is not None and len(chunks) == 1
    (chunk,) = chunks
    assert chunk.rows.shape == (3, 36) and bool(chunk.valid.all())
    np.testing.assert_array_equal(chunk.rows[0].numpy(), np.arange(0, 360, 10))


@pytest.mark.parametrize("blocked", [False, True])
def test_kept_blocks_take_newly_active_rows_and_equal_a_fresh_gather(monkeypatch, blocked) -> None:
    """A Newton step whose active rows are mostly those of the last gather reuses its blocks: rows
    that became active are written into free slots (blocks, eigenvectors, their float32 copies
    and diagonal), and every kept entry equals the kernel's own."""
    monkeypatch.setattr(newton, "COMPACT_FROM_ENTRIES", 0)
    K, Y, train, groups = _grouped_problem()
    if blocked:  # two blocks: class 0 on the first, classes 1 and 2 on the second (scaled) one
        kernel = BlockKernel(torch.stack([K, 2 * K]), (groups > 0).long(), mixed=True)
        source = torch.stack([K, 2 * K])
    else:
        kernel, source = DenseKernel(K, mixed=True), K.unsqueeze(0)
    lowrank = lowrank_eig(kernel, 16)
    columns = torch.arange(Y.shape[1])
    rng = np.random.default_rng(4)
    first = train & torch.as_tensor(rng.random(Y.shape) < 0.15)
    (chunk,) = newton._compaction(kernel, first, groups, columns)
    kept = newton._gather(kernel, chunk, kernel.data32 if blocked else kernel.data32.unsqueeze(0), single=True)
    kept.lowrank = lowrank.gathered(kept.source, kept.rows)
    kept.lowrank_of = lowrank
    # the next step: a fifth of those rows leave, a few new ones join
    second = first & torch.as_tensor(rng.random(Y.shape) < 0.8)
    joined = torch.nonzero(~chunk.union[:, 0]).flatten()[:3]
    second[joined, 0] = True
    (chunk2,) = newton._compaction(kernel, second, groups, columns)
    reused = newton._reusable(kernel, chunk2, kernel.data32 if blocked else kernel.data32.unsqueeze(0))
    assert reused is not None
    kept2, where = reused
    assert kept2 is kept
    U = lowrank.U if blocked else lowrank.U.unsqueeze(0)
    for g in range(len(kept.labels)):
        rows = kept.rows[g][kept.valid[g]]
        assert bool(chunk2.union[:, int(torch.nonzero(where == g)[0])].le(kept.member[:, g]).all())
        np.testing.assert_array_equal(torch.nonzero(kept.member[:, g]).flatten().numpy(), np.sort(rows.numpy()))
        block = kept.blocks[g][kept.valid[g]][:, kept.valid[g]]
        expected = source[kept.source[g]][rows][:, rows].to(torch.float32)
        np.testing.assert_array_equal(block.numpy(), expected.numpy())
        np.testing.assert_array_equal(kept.lowrank.U[g][kept.valid[g]].numpy(), U[kept.source[g]][rows].numpy())
        np.testing.assert_array_equal(kept.lowrank.fast()[g][kept.valid[g]].numpy(),
                                      U[kept.source[g]][rows].to(torch.float32).numpy())
        diagonal = (U[kept.source[g]][rows] ** 2 * (lowrank.lam[kept.source[g]] if blocked else lowrank.lam)).sum(1)
        np.testing.assert_allclose(kept.lowrank.diagonal()[g][kept.valid[g]].numpy(), diagonal.numpy(), rtol=1e-12)
    assert set(joined.tolist()) <= set(kept.rows[0][kept.valid[0]].tolist())
    # far fewer active rows: a new, smaller gather instead
    few = second & (torch.arange(len(K)) % 7 == 0).unsqueeze(1)
    (chunk3,) = newton._compaction(kernel, few, groups, columns)
    assert newton._reusable(kernel, chunk3, kernel.data32 if blocked else kernel.data32.unsqueeze(0)) is None


def test_a_cost_path_on_one_kernel_reuses_kept_blocks_and_meets_liblinears_test(compaction_counter,
                                                                                 monkeypatch) -> None:
    """Large costs on one kernel object (as a low-shot sample's): gathered blocks serve later
    Newton steps and costs, and every problem still meets liblinear's test on the float64 kernel."""
    from benchmark.svm.batched import cost_path

    reuses = []
    original = newton._reusable

    def counting(*args):
        out = original(*args)
        reuses.append(out is not None)
        return out

    monkeypatch.setattr(newton, "_reusable", counting)
    K, Y, train, groups = _grouped_problem()
    kernel = DenseKernel(K, mixed=True)
    costs = [1.0, 3.0, 10.0, 30.0, 100.0]
    for k, beta, info in cost_path(kernel, Y, train, costs, SolverOptions(), groups=groups):
        c = costs[k] * torch.where(Y > 0, 2.0, 1.0)
        assert bool(info.converged.all())
        assert float(projected_gradient_range(beta, K @ beta, Y, c, train).max()) <= TOL
    assert any(reuses), "no kept blocks were reused"


def test_compacted_low_shot_sweeps_equal_the_plain_ones(compaction_counter, monkeypatch) -> None:
    """A VOC07-like sample and its CV folds, on per-class blocks and on the union: compacted CG
    gives the scores and CV APs of the plain solver."""
    Xtr, Ltr, Xte, _ = voc_like_features(700, 300, 600, classes=4, seed=5)
    Ltr = np.where(Ltr == -1, 0, Ltr)
    X, X_eval = l2_normalize(Xtr), l2_normalize(Xte)
    layout = shared_layout(X, X_eval, CPU)
    sample = lowshot.sample_voc07(Ltr, 16, lowshot.sample_rng(0, 16, 1))
    Y = np.where(sample == 1, 1, np.where(sample == 0, -1, 0))
    member = Y != 0
    classes = list(range(Y.shape[1]))

    def sweep():
        logs = {c: FitLog() for c in classes}
        out = {blocks: sample_and_folds_along_costs(layout, Y, member, classes, classes, COSTS, 3, logs,
                                                    SolverOptions(), blocks=blocks) for blocks in (True, False)}
        assert sum(log.not_converged for log in logs.values()) == 0
        return out

    compacted = sweep()
    assert compaction_counter
    monkeypatch.setattr(newton, "COMPACT_FROM_ENTRIES", float("inf"))
    runs = len(compaction_counter)
    plain = sweep()
    assert len(compaction_counter) == runs  # none this time
    for blocks in (True, False):
        scale = float(np.abs(plain[blocks][0]).max())
        np.testing.assert_allclose(compacted[blocks][0], plain[blocks][0], atol=2e-4 * scale)
        for c in classes:
            np.testing.assert_allclose(compacted[blocks][1][c], plain[blocks][1][c], atol=2e-3)


def test_a_newton_step_that_does_not_move_tightens_that_problems_cg_tolerance(monkeypatch) -> None:
    """The first CG run of problem 0 is made to return its starting point (as a run that stops at
    once does): its next run must get a ten times tighter tolerance, the other problem's must not,
    and both still converge to liblinear's test."""
    K, Y, train, _ = _grouped_problem()
    Y, train = Y[:, :2], train[:, :2]
    c = 10.0 * torch.where(Y > 0, 2.0, 1.0)
    tolerances = []
    original = newton._masked_cg

    def stalling(K_, rhs, d, active, z0, u0, c_, tol, *args, **kwargs):
        tolerances.append(tol.clone())
        z, u, iters = original(K_, rhs, d, active, z0, u0, c_, tol, *args, **kwargs)
        if len(tolerances) == 1:  # problem 0 does not move: z = its iterate (here 0), u = K z
            z[:, 0], u[:, 0] = z0[:, 0], u0[:, 0]
        return z, u, iters

    monkeypatch.setattr(newton, "_masked_cg", stalling)
    beta, info = solve(K, Y, c, train)
    assert bool(info.converged.all())
    assert float(tolerances[1][0]) == pytest.approx(0.1 * float(tolerances[0][0]))
    if len(tolerances[1]) == 2:
        assert float(tolerances[1][1]) == float(tolerances[0][1])
    pg = projected_gradient_range(beta, K @ beta, Y, c, train)
    assert float(pg.max()) <= TOL


def test_costs_are_batched_while_rows_stay_active_or_within_the_ratio() -> None:
    from benchmark.svm.batched import BATCH_RATIO, batch_costs

    y = torch.tensor([[1.0], [-1.0], [1.0]], dtype=torch.float64)
    train = torch.tensor([[True], [True], [False]])
    # largest training margin 0.01 (the untrained row does not count)
    f = torch.tensor([[0.005], [-0.01], [5.0]], dtype=torch.float64)
    assert batch_costs([1.0, 2.0], y, None, train, None) == 1  # nothing to extrapolate from yet
    # previous cost 1: margins 0.01 C; 50 is within the ratio, 80 keeps every row active (0.8),
    # 120 does neither (margin 1.2, ratio 120 > 64)
    assert BATCH_RATIO == 64.0
    assert batch_costs([2.0, 50.0, 80.0, 120.0, 1000.0], y, f, train, 1.0) == 3
    assert batch_costs([2.0, 50.0, 80.0], y, -0.01 * y, train, 1.0) == 1  # no positive margin: alone


@pytest.mark.parametrize("columns", [8, 16, 65])
def test_costs_are_batched_only_while_each_kernel_block_serves_few_columns(monkeypatch, columns) -> None:
    """Small costs (every row active: ``batch_costs`` would take them all) are solved together up
    to BATCH_COLUMNS_PER_BLOCK columns per kernel block: a dense kernel is one block, a
    ``BlockKernel`` serves only its own problems' columns."""
    from benchmark.svm import batched

    assert batched.BATCH_COLUMNS_PER_BLOCK == 64
    rng = np.random.default_rng(0)
    A = torch.as_tensor(l2_normalize(rng.normal(size=(30, 12))))
    K = A @ A.T + 1.0
    y = torch.as_tensor(np.where(rng.random((30, columns)) < 0.5, 1.0, -1.0))
    train = torch.ones((30, columns), dtype=torch.bool)
    costs = [1e-7 * 2.0 ** i for i in range(10)]  # margins stay far below 1: one batch if uncapped
    widths = []
    original = batched.solve

    def recording(K, y, *args, **kwargs):
        widths.append(y.shape[1])
        return original(K, y, *args, **kwargs)

    monkeypatch.setattr(batched, "solve", recording)
    blocks = torch.arange(columns) // 4  # four columns per block
    kernels = {"dense": (DenseKernel(K, mixed=True), columns),
               "blocks": (BlockKernel(K.expand(int(blocks.max()) + 1, 30, 30).clone(), blocks, mixed=True), 4)}
    for name, (kernel, per_block) in kernels.items():
        widths.clear()
        assert batched.columns_per_block(kernel, columns) == per_block
        solved = [k for k, _, _ in batched.cost_path(kernel, y, train, costs, SolverOptions())]
        assert solved == list(range(len(costs)))
        most = max(1, 64 // per_block)  # costs per solve
        # the first cost alone (nothing to extrapolate from), then batches of at most ``most`` costs
        expected = [1] + [min(most, len(costs) - 1 - i) for i in range(0, len(costs) - 1, most)]
        assert widths == [columns * m for m in expected], name


def test_cost_batches_meet_liblinears_test_as_single_costs(compaction_counter) -> None:
    """The same cost path solved with and without batching: every problem meets the stopping test
    on the float64 kernel at every cost, and the decision values agree to the tolerance."""
    from benchmark.svm import batched

    K, y, train, groups = _grouped_problem()
    costs = [1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0]
    options = SolverOptions()
    paths = {}
    for ratio in (0.0, 64.0):
        original = batched.BATCH_RATIO
        batched.BATCH_RATIO = ratio
        try:
            paths[ratio] = {k: (beta, info) for k, beta, info in
                            batched.cost_path(DenseKernel(K, mixed=True), y, train, costs, options, groups=groups)}
        finally:
            batched.BATCH_RATIO = original
    weight = torch.where(y > 0, 2.0, 1.0)
    for k, cost in enumerate(costs):
        for ratio, path in paths.items():
            beta, info = path[k]
            assert bool(info.converged.all()), (ratio, cost)
            pg = projected_gradient_range(beta, K @ beta, y, cost * weight, train)
            assert float(pg.max()) <= TOL * 1.01, (ratio, cost)
        np.testing.assert_allclose((K @ paths[64.0][k][0]).numpy(), (K @ paths[0.0][k][0]).numpy(), atol=2e-3)


class _NegativeCurvature(DenseKernel):
    """A kernel whose fast (float32) products are rounded so badly that they point the wrong way."""

    def fast_matmul(self, p, cols=None):
        return -10 * self.matmul(p, cols)


def test_cg_stops_a_column_whose_rounded_curvature_is_not_positive() -> None:
    rng = np.random.default_rng(5)
    A = torch.as_tensor(rng.normal(size=(30, 8)))
    K = _NegativeCurvature(A @ A.T + 1.0)
    rhs = torch.as_tensor(np.where(rng.random((30, 2)) < 0.5, 1.0, -1.0))
    active = torch.ones_like(rhs, dtype=torch.bool)
    d = torch.full_like(rhs, 0.5)
    zero = torch.zeros_like(rhs)
    z, u, iters = newton._cg(K, rhs, d, active, zero, zero, torch.ones_like(rhs), torch.full((2,), 1e-8),
                             torch.full((2,), float("inf")), 100, fast=True)
    assert bool(torch.isfinite(z).all()) and bool(torch.isfinite(u).all())
    assert torch.equal(z, zero) and iters.tolist() == [1, 1]  # halted at its first step, no move
