"""The SVM protocols on the batched solver (``benchmark.svm.newton``): cost paths with warm starts,
per-class cross-validation over costs, the VOC07 per-layer protocol and the low-shot sweeps.

All problems of a layer share the training rows: a class is a column of labels, a CV fold or a
low-shot sample a mask of rows, so each (fold, cost) is one batched solve. Costs are visited in
increasing order and every problem starts from its solution at the previous cost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from .._heap import kept_heap
from ..metrics import stepwise_ap, voc_ap
from ..provenance import resolve_device
from .newton import (TOL, BlockKernel, DenseKernel, FactoredKernel, LowRank, SolveInfo, as_kernel, lowrank_eig, solve,
                     warm_start)
from .protocol import ClassResult, FitLog, l2_normalize, normalized_features, to_binary, too_few_for_cv

logger = logging.getLogger(__name__)

SMALL_KERNEL = 2048  # training rows up to which CPU solves run single-threaded
KERNEL_FORMS = ("auto", "dense", "factored")
DENSE_UP_TO = 2.5  # training rows per feature dimension up to which the n x n kernel is kept
BYTES_PER_COLUMN_ROW = 8 * 40  # float64 vectors the solver and the fold batches keep per problem and row
# SSL_BENCH_SVM_DEBUG=1: one line per cost path (time, Newton and CG iterations), logged at INFO so
# that the variable alone shows it, as it did when the line was printed
DEBUG = bool(os.environ.get("SSL_BENCH_SVM_DEBUG"))


@dataclass
class SolverOptions:
    tol: float = TOL
    max_newton: int = 60
    max_cg: int = 2000
    # low-rank + diagonal CG preconditioner (rank 0: Jacobi only), used for the costs where the
    # kernel's top eigenvalue outweighs the cost's diagonal 1/(2c) by this factor: below it Jacobi
    # needs only a few steps and building the r x r factors would cost more than it saves
    lowrank_rank: int = 128
    lowrank_from: float = 2500.0


def cv_masks(y: np.ndarray, folds: int) -> np.ndarray:
    """(n, folds) bool: the training rows of each fold of scikit-learn's StratifiedKFold without
    shuffling, which the reference's cross_val_score uses (folds depend on the class's labels)."""
    masks = np.ones((len(y), folds), dtype=bool)
    for j, (_, val_idx) in enumerate(StratifiedKFold(n_splits=folds, shuffle=False).split(np.zeros(len(y)), y)):
        masks[val_idx, j] = False
    return masks


@contextlib.contextmanager
def cpu_run(n: int, device: torch.device):
    """On CPU: freed memory kept in the process while the engine runs (``benchmark._heap``: its
    temporaries were page-faulted in again at every allocation), and one intra-op thread for
    small kernels (their products are too small to split, and threads that wait on each other
    are measured 4x slower on a busy 2-core machine)."""
    if device.type != "cpu":
        yield
        return
    with kept_heap():
        if n > SMALL_KERNEL:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def memory_budget(device: torch.device) -> int:
    """Bytes the engine lets itself use: half the free GPU memory, or half the RAM this process
    can still get (available memory, capped by its cgroup's limit: a SLURM job's --mem)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return available_ram() // 2


def available_ram(meminfo: Path = Path("/proc/meminfo"), proc_cgroup: Path = Path("/proc/self/cgroup"),
                  cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """MemAvailable (page cache counts as available), capped by the cgroup's limit minus its usage
    (cgroup v2 memory.max / memory.current, or v1 memory.limit_in_bytes / memory.usage_in_bytes)."""
    try:
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        available = 4 * 2**30  # no /proc (not Linux): a modest default
    for headroom in _cgroup_headroom(proc_cgroup, cgroup_root):
        available = min(available, headroom)
    return available


def _cgroup_headroom(proc_cgroup: Path, cgroup_root: Path):
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":  # v2
            files = cgroup_root / relative / "memory.max", cgroup_root / relative / "memory.current"
        elif "memory" in controllers.split(","):  # v1
            base = cgroup_root / "memory" / relative
            files = base / "memory.limit_in_bytes", base / "memory.usage_in_bytes"
        else:
            continue
        try:
            limit, usage = (f.read_text().strip() for f in files)
            if limit != "max" and int(limit) < 2**60:  # v1 writes a huge number for "no limit"
                yield max(0, int(limit) - int(usage))
        except (OSError, ValueError):
            continue


def choose_kernel_form(n: int, d: int, budget: int, form: str = "auto") -> str:
    """'dense' (the n x n kernel, products 2 n^2) or 'factored' (the features, products 4 n (d+1)):
    dense up to n = DENSE_UP_TO (d + 1); factored for larger training sets or when the kernel would
    take more than half the memory budget. The products cost the same at n = 2 (d + 1), but only a
    dense kernel lets CG run on the active rows (``newton._compaction``): Places205 low-shot at
    k = 96 (n = 19,680 = 2.14 (d + 1)) took 210 s dense against 392 s factored (5 classes)."""
    if form not in KERNEL_FORMS:
        raise ValueError(f"kernel form must be one of {KERNEL_FORMS}, got {form!r}")
    if form != "auto":
        return form
    return "factored" if n > DENSE_UP_TO * (d + 1) or 8 * n * n > budget // 2 else "dense"


def class_chunks(classes: list, n: int, budget: int, kernel_bytes: int) -> list[list]:
    """Split the classes so that one chunk's problems (every class x fold keeps a few vectors per
    row) fit in what the kernel leaves of the budget; one chunk when they do (the usual case)."""
    per_class = BYTES_PER_COLUMN_ROW * n
    size = max(1, int((budget - kernel_bytes) // per_class))
    return [classes[i:i + size] for i in range(0, len(classes), size)]


class TrainingRows:
    """The training rows of a layer on the device as A = [x, 1] (liblinear's bias is a constant
    feature of value 1), float64, with the kernel A A^T when it is kept dense.

    Built once per layer and shared by every problem on subsets of its rows (CV folds, low-shot
    samples of every k): a subset's kernel is a gather, never new products over the features.
    ``mixed``: the CG steps use float32 copies (``newton.DenseKernel``). ``X_eval``: evaluation
    rows whose decision values are wanted at every cost; with a dense kernel their cross kernel
    [x, 1] [x_eval, 1]^T is computed once too, so a decision value costs one product over the
    training rows instead of two over the features."""

    def __init__(self, X: np.ndarray, device: torch.device, form: str, mixed: bool = False,
                 X_eval: np.ndarray | torch.Tensor | None = None):
        X = torch.as_tensor(X, dtype=torch.float64, device=device)
        self.A = with_bias(X)
        self.K = self.A @ self.A.T if form == "dense" else None
        self.n = len(X)
        self.mixed = mixed
        self.A_eval = self.cross = None
        self._scopes = threading.local()  # a thread's class-block buffers while its ``block_workspace`` is open
        if X_eval is not None:
            self.A_eval = with_bias(torch.as_tensor(X_eval, dtype=torch.float64, device=device))
            if self.K is not None:
                self.cross = self.A @ self.A_eval.T  # (n, n_eval)

    def restricted(self, rows: np.ndarray | None = None):
        """(kernel of these rows for the solver, beta -> decision values on every training row);
        rows=None: all of them. Products are (q, rows) @ (rows, n): BLAS's fast layout."""
        if rows is None or len(rows) == self.n:
            kernel = DenseKernel(self.K, self.mixed) if self.K is not None else FactoredKernel(self.A, self.mixed)
            return kernel, kernel.__matmul__
        index = torch.as_tensor(rows, device=self.A.device)
        if self.K is not None:
            K_rows_all = self.K[index]
            return DenseKernel(K_rows_all[:, index], self.mixed), lambda beta: (beta.T @ K_rows_all).T
        A_rows = self.A[index]
        return FactoredKernel(A_rows, self.mixed), lambda beta: ((beta.T @ A_rows) @ self.A.T).T

    @contextlib.contextmanager
    def block_workspace(self):
        """Inside this scope ``class_blocks`` gathers every sample's blocks into the same memory
        (one workspace per thread: samples solved in several threads each keep their own).
        Fresh blocks of a VOC07 k = 96 sample (590 MB float64 and a 295 MB float32 copy) are
        mapped anew by the allocator and page-faulted in, 216,000 pages per sample; writing
        into kept ones took the gather and copy from 0.70 to 0.27 s in a microbenchmark."""
        self._scopes.workspace = {}
        try:
            yield
        finally:
            self._scopes.workspace = None

    def class_blocks(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(blocks, their float32 copy when mixed): block i is the kernel on rows ``index[i]``
        (a (B, m) index). In a ``block_workspace`` the buffers of the last call of this shape are
        overwritten: its blocks must no longer be in use."""
        shape = (index.shape[0], index.shape[1], index.shape[1])
        workspace = getattr(self._scopes, "workspace", None)
        if workspace is None:
            blocks = self.K[index.unsqueeze(2), index.unsqueeze(1)]
            return blocks, blocks.to(torch.float32) if self.mixed else None
        if workspace.get("shape") != shape:
            workspace.clear()  # frees the previous shape's buffers first
            workspace.update(shape=shape, blocks=torch.empty(shape, dtype=self.K.dtype, device=self.K.device),
                             fast=torch.empty(shape, dtype=torch.float32, device=self.K.device) if self.mixed else None)
        blocks, fast = workspace["blocks"], workspace["fast"]
        if self.K.device.type == "cpu":
            # numpy's gather on a row x column grid takes half the time of torch's indexing on two
            # broadcast indices (a 1,920-row block of a 5,011-row kernel: 22 against 46 ms)
            kernel = self.K.numpy()
            for i, rows in enumerate(index.numpy()):  # one block at a time: no (B, m, m) temporary
                blocks[i].numpy()[...] = kernel[np.ix_(rows, rows)]
        else:
            for i, rows in enumerate(index):
                blocks[i] = self.K[rows.unsqueeze(1), rows.unsqueeze(0)]
        if fast is not None:
            fast.copy_(blocks)
        return blocks, fast

    def weights(self, beta: torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
        """(d + 1, P) weights of [x, 1] of the solutions beta on ``rows`` (default: all rows)."""
        A = self.A if rows is None or len(rows) == self.n else self.A[torch.as_tensor(rows, device=self.A.device)]
        return A.T @ beta

    def eval_scorer(self, rows: np.ndarray | None = None):
        """beta (solutions on ``rows``, default all) -> (n_eval, P) decision values on the evaluation
        rows; the rows' part of the cross kernel is gathered once, here."""
        index = None if rows is None or len(rows) == self.n else torch.as_tensor(rows, device=self.A.device)
        if self.cross is not None:
            cross = self.cross if index is None else self.cross[index]
            return lambda beta: (beta.T @ cross).T
        A = self.A if index is None else self.A[index]
        return lambda beta: ((beta.T @ A) @ self.A_eval.T).T


def with_bias(X: torch.Tensor) -> torch.Tensor:
    return torch.cat([X, torch.ones((len(X), 1), dtype=X.dtype, device=X.device)], dim=1)


def layout_for(X: np.ndarray, device: torch.device, kernel_form: str, memory_bytes: int | None,
               mixed: bool = False, X_eval=None) -> TrainingRows:
    """The layer's TrainingRows, with ``budget`` (the memory budget) and ``kernel_bytes`` (what it
    keeps: the features with their bias column, the kernel and its float32 copy or the features'
    float32 copy, the evaluation rows and their cross kernel). The cross kernel is kept only when
    it fits in a quarter of the budget."""
    budget = memory_budget(device) if memory_bytes is None else int(memory_bytes)
    form = choose_kernel_form(len(X), X.shape[1], budget, kernel_form)
    n, d1 = len(X), X.shape[1] + 1
    kept = 8 * n * d1
    if form == "dense":
        kept += 8 * n * n + (4 * n * n if mixed else 0)
    elif mixed:
        kept += 4 * n * d1
    if X_eval is not None:
        kept += 8 * len(X_eval) * d1
    if X_eval is not None and (form != "dense" or 8 * n * len(X_eval) > budget // 4):
        layout = TrainingRows(X, device, form, mixed)
        layout.A_eval = with_bias(torch.as_tensor(X_eval, dtype=torch.float64, device=device))
    else:
        layout = TrainingRows(X, device, form, mixed, X_eval)
        kept += 0 if X_eval is None else 8 * n * len(X_eval)
    layout.budget, layout.kernel_bytes = budget, int(kept)
    return layout


def preconditioner_for(kernel, c: torch.Tensor, options: SolverOptions, computed: LowRank | None = None):
    """(the kernel's eigenpairs, computed once when first worth it, and whether these costs use
    them): low-rank + diagonal CG when 2 max(c) x top eigenvalue >= options.lowrank_from."""
    if options.lowrank_rank <= 0:
        return None, None
    scale = 2 * float(c.max())
    # the trace bounds the top eigenvalue: no eigenpairs are computed for costs that cannot use them
    if computed is None and scale * kernel.trace_bound() >= options.lowrank_from:
        computed = lowrank_eig(kernel, options.lowrank_rank)
    use = computed is not None and scale * float(computed.lam.max()) >= options.lowrank_from
    return computed, (computed if use else None)


# Costs solved in one batch: up to this many bytes (rows x columns x 8) per solver vector, and
# costs up to BATCH_RATIO times the last solved one (measured on one VOC07 k = 96 sample: 11.3 s
# with only the all-active rule, 10.3 s with ratio 8, 9.8 s with 64; Places205 k = 96, 5 classes:
# 103 s with the rule alone, 93 s with 64)
BATCH_BYTES = 2 ** 27
BATCH_RATIO = 64.0
# Batching pays only while more columns make a product cheaper per column, i.e. while each kernel
# block it reads serves at most this many columns: a bmm over 20 float32 blocks of 1,920^2 took
# 16.8 ms with 4 columns per block and 36.7 ms with 32 (x3.7 less per column). Places205 with 205
# classes has 820 columns per cost on one kernel, where batching saves nothing: batching k = 8's
# small costs took its sample from 64 to 94 s
BATCH_COLUMNS_PER_BLOCK = 64


def cost_path(kernel, y: torch.Tensor, train: torch.Tensor, costs, options: SolverOptions, label: str = "",
              groups: torch.Tensor | None = None):
    """Solve the columns (labels y, training rows train) at every cost, in increasing order, each
    from its solution at the previous cost (rescaled by ``warm_start``). Costs are C times the
    class weights 2 (positives) : 1. ``groups``: see ``newton.solve``. Yields (index into costs, beta,
    SolveInfo), in increasing cost.

    Small costs are solved together, as more columns of one solve (``batch_costs``): while every
    training row is active the optimum is the Newton point of the all-rows system, one Newton
    step from any start, so a warm start from the next smaller cost saves nothing; one solve
    for several costs reads the kernel once per product instead of once per cost (VOC07
    low-shot: the products on a class's kernel block are memory-bound at 4 columns)."""
    weight = torch.where(y > 0, 2.0, 1.0)
    order = [int(k) for k in np.argsort(costs, kind="stable")]
    most = max(1, min(BATCH_BYTES // max(1, 8 * y.shape[0] * y.shape[1]),
                      BATCH_COLUMNS_PER_BLOCK // max(1, columns_per_block(kernel, y.shape[1]))))
    beta = f = previous = lowrank = None
    group_count = None if groups is None else int(groups.max()) + 1
    position = 0
    while position < len(order):
        batch = batch_costs([float(costs[k]) for k in order[position:position + most]], y, f, train, previous)
        ks = order[position:position + batch]
        position += batch
        c = torch.cat([float(costs[k]) * weight for k in ks], 1)
        if beta is None:
            beta0 = f0 = None
        else:
            starts = [warm_start(beta, f, y, float(costs[k]) * weight, train, float(costs[k]) / previous) for k in ks]
            beta0, f0 = torch.cat([b for b, _ in starts], 1), torch.cat([v for _, v in starts], 1)
        lowrank, use = preconditioner_for(kernel, c, options, lowrank)
        started = time.perf_counter()
        many = len(ks)
        if many == 1:  # no copies of the (n, P) labels and masks on the large costs' path
            y_all, train_all, groups_all = y, train, groups
        else:
            y_all, train_all = y.repeat(1, many), train.repeat(1, many)
            groups_all = None if groups is None else torch.cat([groups + i * group_count for i in range(many)])
        beta_all, info = solve(as_kernel(kernel).tiled(many), y_all, c, train_all, beta0=beta0, f0=f0,
                               tol=options.tol, max_newton=options.max_newton, max_cg=options.max_cg, lowrank=use,
                               groups=groups_all)
        if DEBUG:
            logger.info(f"C={','.join(f'{float(costs[k]):g}' for k in ks)} {label} "
                        f"{time.perf_counter() - started:.2f}s "
                        f"newton max {int(info.newton_iters.max())} mean {info.newton_iters.float().mean():.1f} cg max "
                        f"{int(info.cg_iters.max())} mean {info.cg_iters.float().mean():.0f} "
                        f"not converged {int((~info.converged).sum())}")
        P = y.shape[1]
        for i, k in enumerate(ks):
            part = slice(i * P, (i + 1) * P)
            beta = beta_all[:, part]
            step = SolveInfo(info.converged[part], info.newton_iters[part], info.cg_iters[part], info.pg_range[part],
                             info.decision[:, part])
            f, previous = step.decision, float(costs[k])
            yield k, beta, step


def columns_per_block(kernel, columns: int) -> int:
    """How many of a solve's columns each kernel block serves in a product, at most (a dense or
    factored kernel is one block)."""
    if isinstance(kernel, BlockKernel):
        return int(torch.bincount(kernel.block[:columns]).max())
    return columns


def batch_costs(next_costs: list, y: torch.Tensor, f: torch.Tensor | None, train: torch.Tensor,
                previous: float | None) -> int:
    """How many of ``next_costs`` (increasing) to solve in one batch, each from the solution at
    ``previous`` (rescaled): the first cost alone when there is no solution yet; then every cost
    at which all training rows are predicted to stay active (margin y f < 1: while they are, f
    grows at most linearly in C, as the duals alpha = 2 c (1 - y f) grow slower than c, so
    (C / previous) max y f over-estimates the margins), and any cost within BATCH_RATIO of
    ``previous``. A wrong guess only costs Newton steps; every problem meets the same test."""
    if f is None:
        return 1
    largest = float(torch.where(train, y * f, torch.full_like(f, -float("inf"))).max())
    if not largest > 0:  # no margin to extrapolate from
        return 1
    batch = 1
    while batch < len(next_costs) and (largest * next_costs[batch] / previous < 1
                                       or next_costs[batch] / previous <= BATCH_RATIO):
        batch += 1
    return batch


def _labels(Y: np.ndarray, rows: np.ndarray, classes: list, device) -> torch.Tensor:
    return torch.as_tensor(np.where(Y[rows][:, classes] > 0, 1.0, -1.0), dtype=torch.float64, device=device)


def cross_validated_ap(layout: TrainingRows, Y: np.ndarray, member: np.ndarray, classes: list, costs, folds: int,
                       logs: dict, options: SolverOptions) -> dict[int, np.ndarray]:
    """Per class: the mean held-out AP over its stratified CV folds at every cost (scikit-learn's
    cross_val_score with scoring='average_precision', as the reference).

    Y: (n, C) labels (> 0 positive); member: (n, C) bool, the rows each class trains on (all for
    the full-data protocol, the sample for low-shot); its folds split those rows in index order.
    One batch per fold j, one column per class. The classes' folds differ (stratified per class)
    but overlap, so each batch works on the union of its classes' training rows (for the full-data
    protocol about 2/3 of the kernel, i.e. ~half the work of masking the whole one).
    """
    device = layout.A.device
    n = len(Y)
    masks = {}
    for c in classes:
        masks[c] = np.zeros((n, folds), dtype=bool)
        own = np.flatnonzero(member[:, c])
        masks[c][own] = cv_masks(np.where(Y[own, c] > 0, 1, -1), folds)
    paths, scorers = [], []
    for j in range(folds):
        rows = np.flatnonzero(np.any([masks[c][:, j] for c in classes], axis=0))
        kernel, score = layout.restricted(rows)
        train = torch.as_tensor(np.stack([masks[c][rows, j] for c in classes], axis=1), device=device)
        paths.append(cost_path(kernel, _labels(Y, rows, classes, device), train, costs, options, f"fold {j}"))
        scorers.append(score)
    cv_ap = {c: np.full(len(costs), np.nan) for c in classes}
    for steps in zip(*paths):  # the folds at one cost
        k = steps[0][0]
        fold_aps = {c: [] for c in classes}
        for j, ((_, beta, info), score) in enumerate(zip(steps, scorers)):
            scores = score(beta).cpu().numpy()  # every row, held-out ones included
            for col, c in enumerate(classes):
                logs[c].record(int(info.newton_iters[col]), bool(info.converged[col]))
                held_out = member[:, c] & ~masks[c][:, j]
                fold_aps[c].append(stepwise_ap(Y[held_out, c] > 0, scores[held_out, col]))
        for c, aps in fold_aps.items():
            cv_ap[c][k] = float(np.mean(aps))
    return cv_ap


def sample_and_folds_along_costs(layout: TrainingRows, Y: np.ndarray, member: np.ndarray, classes: list,
                                 cv_classes: list, costs, folds: int, logs: dict, options: SolverOptions,
                                 blocks: bool | None = None):
    """A low-shot sample's problems along the costs in one batch: every class trained on its sample
    rows (decision values on the layout's evaluation rows) and, for ``cv_classes``, on each of its
    stratified CV folds (held-out AP, as scikit-learn's cross_val_score). One cost path and one
    product per CG step serve them all, and the held-out rows' decision values come with the
    solutions (no product).

    Where the classes have their own rows (VOC07) and the union of their samples is large next to
    each sample, every class gets its own kernel block
    (``BlockKernel``, gathered from the layer's kernel); otherwise all problems share the union's
    kernel with masked rows (``blocks``: True / False forces one). Chosen by what a product reads:
    the blocks' entries (a class's 1 + folds columns are too few to be compute-bound), against the
    union's, which with P columns is compute-bound from ~16 on (cost ~ union^2 P / 16). VOC07:
    blocks at every k (at k = 96 the blocks hold 3x the union's entries, but 80 columns make the
    union's product 5x its reads: one sample took 12.6 s with blocks against 15.5 s on the union).
    Places205's classes share all rows: the union. Returns (n_eval, len(classes), len(costs))
    float32 scores and {class: CV AP per cost}."""
    device = layout.A.device
    rows = np.flatnonzero(member[:, classes].any(axis=1))
    own = [np.flatnonzero(member[:, c]) for c in classes]
    m = max(len(r) for r in own)
    possible = layout.K is not None and layout.cross is not None and all(len(r) for r in own)
    columns = len(classes) + folds * len(cv_classes)
    union_cost = len(rows) ** 2 * max(1.0, columns / 16)
    blocked = possible and (len(classes) * m * m < union_cost if blocks is None else blocks)
    if blocked:  # the vector rows of class i's problems: its own rows, padded with never-trained ones
        row_sets = [np.concatenate([r, np.full(m - len(r), r[0])]) for r in own]
        valid = [np.arange(m) < len(r) for r in own]
    else:
        row_sets = [rows] * len(classes)
        valid = [np.ones(len(rows), dtype=bool)] * len(classes)
    labels, train, owner, block = [], [], [], []
    for i, c in enumerate(classes):
        labels.append(np.where(Y[row_sets[i], c] > 0, 1.0, -1.0))
        train.append(member[row_sets[i], c] & valid[i])
        owner.append((c, -1))
        block.append(i)
    held_out = {}
    for c in cv_classes:
        i = classes.index(c)
        positions = np.flatnonzero(train[i])  # the class's sample rows in index order, as before
        masks = cv_masks(np.where(Y[row_sets[i][positions], c] > 0, 1, -1), folds)
        for j in range(folds):
            fold = np.zeros(len(row_sets[i]), dtype=bool)
            fold[positions[masks[:, j]]] = True
            labels.append(labels[i])
            train.append(fold)
            owner.append((c, j))
            block.append(i)
            held_out[c, j] = positions[~masks[:, j]]
    y = torch.as_tensor(np.stack(labels, axis=1), dtype=torch.float64, device=device)
    train = torch.as_tensor(np.stack(train, axis=1), device=device)
    if blocked:
        index = torch.as_tensor(np.stack(row_sets), device=device)
        blocks, fast = layout.class_blocks(index)  # (classes, m, m)
        kernel = BlockKernel(blocks, torch.as_tensor(block, device=device), fast=fast)
        scatter_rows = torch.as_tensor(np.searchsorted(rows, np.concatenate(own)), device=device)
        scatter_cols = torch.as_tensor(np.repeat(np.arange(len(classes)), [len(r) for r in own]), device=device)
        local = torch.as_tensor(np.concatenate([np.arange(len(r)) for r in own]), device=device)

        def union_weights(beta):  # each class's solution on its rows, as weights on the union's rows
            union = torch.zeros((len(rows), len(classes)), dtype=beta.dtype, device=device)
            union[scatter_rows, scatter_cols] = beta[local, scatter_cols]
            return union
    else:
        kernel, _ = layout.restricted(rows)

        def union_weights(beta):
            return beta
    out = np.empty((len(layout.A_eval), len(classes), len(costs)), dtype=np.float32)
    scorer = _PendingScores(layout.eval_scorer(rows), out)
    cv_ap = {c: np.full(len(costs), np.nan) for c in cv_classes}
    groups = torch.as_tensor(block, device=device)  # a class's problems: its sample and its CV folds
    for k, beta, info in cost_path(kernel, y, train, costs, options, "blocks" if blocked else "union", groups):
        scorer.add(k, union_weights(beta[:, :len(classes)]))
        decision = info.decision.cpu().numpy()  # K beta on each problem's rows: every held-out row is one
        fold_aps = {c: [] for c in cv_classes}
        for col, (c, j) in enumerate(owner):
            logs[c].record(int(info.newton_iters[col]), bool(info.converged[col]))
            if j >= 0:
                positions = held_out[c, j]
                fold_aps[c].append(stepwise_ap(Y[row_sets[classes.index(c)][positions], c] > 0,
                                               decision[positions, col]))
        for c, aps in fold_aps.items():
            cv_ap[c][k] = float(np.mean(aps))
    scorer.flush()
    return out, cv_ap


class _PendingScores:
    """Evaluation-row decision values of several costs' solutions in one product: one cost's few
    columns read the whole cross kernel for little work (VOC07 low-shot k = 96: 26 products of 20
    columns took 547 ms per sample, one of 520 columns 249 ms). ``out[:, :, k]`` gets cost k's
    scores; solutions wait while one more of the same size would still fit in BYTES."""

    BYTES = 2 ** 27

    def __init__(self, score, out: np.ndarray):
        self.score, self.out = score, out
        self.pending: list = []
        self.bytes = 0

    def add(self, k: int, weights: torch.Tensor):
        self.pending.append((k, weights))
        size = weights.numel() * weights.element_size()
        self.bytes += size
        if self.bytes + size > self.BYTES:
            self.flush()

    def flush(self):
        if not self.pending:
            return
        scores = self.score(torch.cat([w for _, w in self.pending], 1)).cpu().numpy()
        width = self.out.shape[1]
        for i, (k, _) in enumerate(self.pending):
            self.out[:, :, k] = scores[:, i * width:(i + 1) * width]
        self.pending, self.bytes = [], 0


def _device(device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device or "auto")


def voc07_svm_torch(train_features, train_labels, test_features, test_labels, costs, folds: int = 3,
                    device=None, tol: float = TOL, max_newton: int = 60, max_cg: int = 2000,
                    kernel_form: str = "auto", memory_bytes: int | None = None, mixed: bool = True) -> list:
    """The per-layer protocol of ``benchmark.svm.liblinear.voc07_svm`` (CV over costs per class, refit at
    the best, test AP) with every class x fold x cost solved by the batched kernel solver.

    ``memory_bytes`` caps what the engine plans to use (default: ``memory_budget(device)``); it
    decides the kernel form (``kernel_form='auto'``) and whether classes are solved in chunks.
    ``mixed``: float32 products in the conjugate-gradient steps, float64 everywhere else
    (``newton.DenseKernel``); False solves in float64 throughout.
    """
    device = _device(device)
    options = SolverOptions(tol, max_newton, max_cg)
    X_train, X_test = normalized_features(train_features, test_features)
    n, n_classes = train_labels.shape
    results = [ClassResult(cls=c, costs=tuple(costs), log=FitLog()) for c in range(n_classes)]
    Y = np.stack([to_binary(train_labels[:, c]) for c in range(n_classes)], axis=1)
    trainable = []
    for c, r in enumerate(results):
        r.note = too_few_for_cv(Y[:, c], folds)
        if not r.note:
            trainable.append(c)
    if not trainable:
        return results
    with cpu_run(n, device):
        layout = layout_for(X_train, device, kernel_form, memory_bytes, mixed)
        X_eval = torch.as_tensor(X_test, dtype=torch.float64, device=device)
        member = np.ones_like(Y, dtype=bool)
        logs = {c: results[c].log for c in trainable}
        for chunk in class_chunks(trainable, n, layout.budget, layout.kernel_bytes):
            cv_ap = cross_validated_ap(layout, Y, member, chunk, costs, folds, logs, options)
            # refit on all training rows at the chosen cost (first maximum in the given cost
            # order, as the reference's argmax)
            best = {c: int(np.argmax(cv_ap[c])) for c in chunk}
            y = _labels(Y, np.arange(n), chunk, device)
            cost = torch.as_tensor([float(costs[best[c]]) for c in chunk], dtype=torch.float64, device=device)
            kernel, _ = layout.restricted()
            c = cost * torch.where(y > 0, 2.0, 1.0)
            _, lowrank = preconditioner_for(kernel, c, options)
            beta, info = solve(kernel, y, c, torch.ones_like(y, dtype=torch.bool), tol=tol, max_newton=max_newton,
                               max_cg=max_cg, lowrank=lowrank)
            w = layout.weights(beta)
            test_scores = (X_eval @ w[:-1] + w[-1]).cpu().numpy()
            for col, c in enumerate(chunk):
                r = results[c]
                r.log.record(int(info.newton_iters[col]), bool(info.converged[col]))
                r.cv_ap = cv_ap[c].tolist()
                r.best_cost, r.best_cv_ap = float(costs[best[c]]), float(cv_ap[c][best[c]])
                keep = np.asarray(test_labels[:, c]) != -1  # difficult-only rows are removed for this class
                r.test_ap = voc_ap(np.asarray(test_labels[:, c])[keep] == 1, test_scores[keep, col])
    return results


@dataclass
class LowShotSweep:
    """One low-shot sample, every class: decision values on the evaluation rows at every cost
    (n_eval, C, costs), CV AP on the sample at every cost (C, costs; NaN where a class has fewer
    positives or negatives than folds, or cv=False) and each class's FitLog."""

    scores: np.ndarray
    cv_ap: np.ndarray
    logs: list = field(default_factory=list)


def shared_layout(X_train: np.ndarray, X_eval: np.ndarray, device=None, kernel_form: str = "auto",
                  memory_bytes: int | None = None, mixed: bool = True) -> TrainingRows:
    """The kernels of a layer's training rows (and their cross kernel with the evaluation rows),
    computed once and shared by every low-shot sample of every k: each sample only gathers its
    rows (for VOC07 the product over the features was most of a k = 96 sample's time)."""
    return layout_for(np.asarray(X_train), _device(device), kernel_form, memory_bytes, mixed, X_eval)


def lowshot_sweep_torch(X_train: np.ndarray, Y: np.ndarray, X_eval: np.ndarray, costs, folds: int = 3,
                        cv: bool = True, device=None, tol: float = TOL, max_newton: int = 60, max_cg: int = 2000,
                        kernel_form: str = "auto", memory_bytes: int | None = None, mixed: bool = True,
                        layout: TrainingRows | None = None) -> LowShotSweep:
    """Every class of one low-shot sample at every cost, batched: what ``liblinear.decision_values_
    all_costs`` and ``liblinear.cv_cost`` compute with liblinear, one class and cost at a time.

    X_train, X_eval: L2-normalised features. Y: (n, C) with 1 / -1 for the rows of class c's
    training sample and 0 for rows outside it (VOC07 samples differ per class; Places205 classes
    share one sample: no zeros). Only rows in some class's sample enter the kernel. ``layout``:
    the layer's ``shared_layout(X_train, X_eval)`` when several samples are solved (X_train and
    X_eval are then not read again); built for this sample otherwise.
    """
    device = _device(device)
    options = SolverOptions(tol, max_newton, max_cg)
    member = Y != 0
    used = np.flatnonzero(member.any(axis=1))
    if layout is None:
        Y, member = Y[used], member[used]
    n_classes = Y.shape[1]
    logs = {c: FitLog() for c in range(n_classes)}
    cv_ap = np.full((n_classes, len(costs)), np.nan)
    with cpu_run(len(used), device):
        if layout is None:
            layout = layout_for(np.asarray(X_train)[used], device, kernel_form, memory_bytes, mixed, X_eval)
        scores = np.empty((len(layout.A_eval), n_classes, len(costs)), dtype=np.float32)
        per_class = 1 + (folds if cv else 0)  # columns: the sample, then each CV fold's training rows
        for chunk in class_chunks(list(range(n_classes)), len(used) * per_class, layout.budget, layout.kernel_bytes):
            cv_able = [c for c in chunk if cv and not too_few_for_cv(Y[:, c], folds)]
            chunk_scores, chunk_cv = sample_and_folds_along_costs(layout, Y, member, chunk, cv_able, costs, folds,
                                                                  logs, options)
            scores[:, chunk] = chunk_scores
            for c, aps in chunk_cv.items():
                cv_ap[c] = aps
    return LowShotSweep(scores, cv_ap, [logs[c] for c in range(n_classes)])


def scores_all_costs(train_features, train_labels, test_features, costs, device=None, tol: float = TOL):
    """Decision values on the test rows of one SVM per (class, cost), each trained on all training
    rows: (n_test, n_classes, n_costs) and the SolveInfo of the (n_classes x n_costs) problems,
    solved cold (no cost path). Used to compare with liblinear at every cost (fidelity tests)."""
    device = _device(device)
    X = torch.as_tensor(l2_normalize(train_features), dtype=torch.float64, device=device)
    Xs = torch.as_tensor(l2_normalize(test_features), dtype=torch.float64, device=device)
    Y = np.stack([to_binary(train_labels[:, c]) for c in range(train_labels.shape[1])], axis=1)
    y = torch.as_tensor(np.repeat(Y, len(costs), axis=1), dtype=torch.float64, device=device)
    c = (torch.as_tensor(np.tile(np.asarray(costs, dtype=float), Y.shape[1]), device=device)
         * torch.where(y > 0, 2.0, 1.0))
    K = X @ X.T + 1.0
    beta, info = solve(K, y, c, torch.ones_like(y, dtype=torch.bool), tol=tol)
    scores = (Xs @ X.T + 1.0) @ beta
    return scores.cpu().numpy().reshape(len(Xs), Y.shape[1], len(costs)), info


def cv_costs_torch(X_train: np.ndarray, Y: np.ndarray, costs, folds: int = 3, device=None,
                   tol: float = TOL, mixed: bool = True) -> dict[int, float | None]:
    """Per class, the cost with the best mean CV AP on all training rows (Y: (n, C) +-1), or None
    for a class with fewer positives or negatives than folds: ``liblinear.cv_cost`` for every class
    at once."""
    device = _device(device)
    classes = [c for c in range(Y.shape[1]) if not too_few_for_cv(Y[:, c], folds)]
    out: dict[int, float | None] = {c: None for c in range(Y.shape[1])}
    if not classes:
        return out
    with cpu_run(len(Y), device):
        layout = layout_for(X_train, device, "auto", None, mixed)
        logs = {c: FitLog() for c in classes}
        for chunk in class_chunks(classes, len(Y), layout.budget, layout.kernel_bytes):
            cv_ap = cross_validated_ap(layout, Y, np.ones_like(Y, dtype=bool), chunk, costs, folds, logs,
                                       SolverOptions(tol=tol))
            out.update({c: float(costs[int(np.argmax(cv_ap[c]))]) for c in chunk})
    return out
