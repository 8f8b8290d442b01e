"""Many liblinear-equivalent SVMs at once: batched primal Newton in kernel coordinates, in torch.

The problem is exactly liblinear's L2-regularised squared-hinge SVM (``LinearSVC(loss=
"squared_hinge", dual=True)``) with the bias as a regularised constant feature of value 1 and
per-sample costs c_i = C * class_weight(y_i):

    min_w  1/2 |w|^2 + sum_i c_i max(0, 1 - y_i w.x_i)^2,     x_i = [features_i, 1].

Every solution is a combination of the training rows, w = sum_i beta_i x_i (beta_i = y_i alpha_i
with alpha the dual variables), so with the kernel K = X X^T all problems of a layer (classes x
costs x CV folds: a fold is only a mask of training rows) share one n x n matrix and are solved
together with matrix products, which is where CPUs and GPUs are fast.

Solver: the finite Newton method for the squared hinge (Keerthi & DeCoste 2005; Chapelle 2007).
For the current active set S = {i : y_i f_i < 1} the Newton point solves (K_SS + D_S) z_S = y_S
with D_i = 1 / (2 c_i), z = 0 off S; it is found by Jacobi-preconditioned conjugate gradients
batched over problems, then an exact line search on the piecewise-quadratic primal objective
moves to the best point between the current iterate and the Newton point. This converges in a
finite number of steps; in practice a handful.

Stopping is liblinear's own test on the dual: with alpha = y * beta and
G_i = y_i f_i - 1 + alpha_i / (2 c_i), the projected gradient PG_i = G_i (alpha_i > 0) or
min(G_i, 0) (alpha_i = 0) must satisfy max PG - min PG <= tol (1e-4, as the reference; 0 counted in both), per
problem. Problems that do not reach it within the iteration limits are reported as not converged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

TOL = 1e-4


@dataclass
class SolveInfo:
    """Per problem: converged, Newton iterations, conjugate-gradient iterations, final PG range."""

    converged: torch.Tensor
    newton_iters: torch.Tensor
    cg_iters: torch.Tensor
    pg_range: torch.Tensor
    decision: torch.Tensor | None = None  # K @ beta on the kernel's rows, on the solver's device


# ``Kernel.sparse_matmul`` reads only the rows it needs when they are at most 1 / SPARSE_SHARE
# of the kernel's (gathering them costs about a product's worth of reads more)
SPARSE_SHARE = 4


def _nonzero_rows(p: torch.Tensor) -> torch.Tensor:
    return torch.nonzero((p != 0).any(1)).flatten()


def _few(rows: torch.Tensor, n: int) -> bool:
    """Whether reading only these of n kernel rows pays (at most 1 / SPARSE_SHARE of them)."""
    return len(rows) * SPARSE_SHARE <= n


def _symmetric_rows_product(data: torch.Tensor, rows: torch.Tensor, p_rows: torch.Tensor) -> torch.Tensor:
    """data[:, rows] @ p_rows for a symmetric matrix (data[:, rows] = data[rows]^T), in data's dtype."""
    return (p_rows.T.to(data.dtype) @ data[rows]).T


class Kernel:
    """A kernel the solver multiplies by, kept as ``data`` (float64): exact products for the
    decision values, the line search and liblinear's stopping test, and ``fast`` products for the
    conjugate-gradient steps towards a Newton point, through a float32 copy when ``mixed``.
    Subclasses give the product through either copy (``_product``) and the diagonal.

    Why float32 is enough there: a Newton point is only a search direction. The solver computes
    the residual each CG run starts from, the decision values and the stopping test exactly, so
    each Newton step is one round of iterative refinement and the answer meets the same float64
    criterion (max PG - min PG <= tol) as a float64 solve; tests check it on the float64 kernel."""

    def __init__(self, data: torch.Tensor, mixed: bool = False, fast: torch.Tensor | None = None):
        self.data = data
        # ``fast``: the float32 copy, made by the caller (in memory it reuses)
        self.data32 = fast if fast is not None else (
            data.to(torch.float32) if mixed and data.dtype == torch.float64 else None)

    @property
    def mixed(self) -> bool:
        return self.data32 is not None

    def _product(self, data: torch.Tensor, p: torch.Tensor, cols) -> torch.Tensor:
        raise NotImplementedError

    def __matmul__(self, p: torch.Tensor) -> torch.Tensor:
        return self._product(self.data, p, None)

    def matmul(self, p: torch.Tensor, cols=None) -> torch.Tensor:
        """K p, exact; ``cols`` (which problems p's columns are) matters to ``BlockKernel`` only."""
        return self._product(self.data, p, cols)

    def fast_matmul(self, p: torch.Tensor, cols=None) -> torch.Tensor:
        return self._product(self.data if self.data32 is None else self.data32, p, cols)

    def sparse_matmul(self, p: torch.Tensor, cols=None) -> torch.Tensor:
        """K p, exact, for p that is zero on most rows: only the kernel's rows where some column of
        p is non-zero are read (``solve``'s corrections: the dual weight on the few rows that left
        the active set, clipped negative duals). Falls back to ``matmul`` when they are not few."""
        rows = _nonzero_rows(p)
        if not _few(rows, p.shape[0]):
            return self.matmul(p, cols)
        return self._rows_product(rows, p[rows], cols).to(p.dtype)

    def _rows_product(self, rows: torch.Tensor, p_rows: torch.Tensor, cols) -> torch.Tensor:
        """K[:, rows] @ p_rows, exact."""
        raise NotImplementedError

    def diagonal(self) -> torch.Tensor:
        raise NotImplementedError

    def column_diagonal(self, cols=None) -> torch.Tensor:
        """The diagonal as (n, 1), or per problem (m, columns) for a ``BlockKernel``."""
        return self.diagonal().unsqueeze(1)

    def trace_bound(self) -> float:
        """An upper bound of the top eigenvalue (of every block)."""
        return float(self.diagonal().sum())

    def tiled(self, times: int) -> "Kernel":
        """The kernel for problems repeated ``times`` times as more columns (the same problems at
        several costs); only a ``BlockKernel`` maps columns to its blocks."""
        return self

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self):
        return self.data.device


class DenseKernel(Kernel):
    """The n x n kernel K = A A^T (bias included). Products use the (q, n) @ (n, n) layout (K is
    symmetric): BLAS's fast path for few columns, measured x2.7 over n x n @ n x q in float64
    with 20 columns."""

    def _product(self, data, p, cols):
        return (p.T.to(data.dtype) @ data).T.to(p.dtype)

    def _rows_product(self, rows, p_rows, cols):
        return _symmetric_rows_product(self.data, rows, p_rows)

    def diagonal(self) -> torch.Tensor:
        return torch.diagonal(self.data)

    @property
    def shape(self):
        return self.data.shape


class FactoredKernel(Kernel):
    """K = A A^T kept as A = [features, 1] (m x (d+1)): a product costs 4 m d instead of 2 m^2 and
    no m x m matrix is stored. Pays when m > 2 (d + 1) or when the dense kernel does not fit (large
    training sets); the solver only needs products and the diagonal."""

    def _product(self, data, p, cols):
        return ((p.T.to(data.dtype) @ data) @ data.T).T.to(p.dtype)

    def _rows_product(self, rows, p_rows, cols):
        return ((p_rows.T.to(self.dtype) @ self.data[rows]) @ self.data.T).T

    def diagonal(self) -> torch.Tensor:
        return (self.data * self.data).sum(1)

    @property
    def shape(self):
        return (self.data.shape[0], self.data.shape[0])


class _Packing:
    """Columns grouped by their block (``owner``) for one batched product: column j becomes row
    ``slot[j]`` of batch ``owner[j]`` in a zero-padded (blocks, q, m) tensor. One bmm over every
    block was measured x2 faster than a loop of per-block (q, m) @ (m, m) products, which BLAS runs
    far from the memory bandwidth with a few columns. Where few blocks have columns, symmetric
    blocks are multiplied one by one instead, as (m, m) @ (m, q) (1.2 ms per 1,920^2 float32 block
    against 17 ms for a bmm over 20 of them); selecting the blocks for a bmm would copy them,
    which cost more than the bmm itself."""

    # below this share of blocks with columns, the per-block loop (symmetric blocks)
    LOOP_BELOW = 0.7
    # up to this many columns per block, symmetric blocks multiply as blocks @ v with v column-major
    TRANSPOSED_UP_TO = 8

    def __init__(self, owner: torch.Tensor, n_blocks: int):
        counts = torch.bincount(owner, minlength=n_blocks)
        order = torch.argsort(owner, stable=True)
        self.slot = torch.empty_like(owner)
        starts = torch.cumsum(counts, 0) - counts  # each block's first position in ``order``
        self.slot[order] = torch.arange(len(owner), device=owner.device) - starts[owner[order]]
        self.owner, self.n_blocks = owner, n_blocks
        self.q = int(counts.max()) if len(owner) else 0
        present = torch.nonzero(counts).flatten()
        self.looped = len(present) < self.LOOP_BELOW * n_blocks
        if self.looped:  # (block, its columns) pairs
            self.by_block = list(zip(present.tolist(), torch.split(order, counts[present].tolist())))

    def product(self, v: torch.Tensor, blocks: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
        """(k, P): column j is v_j^T blocks[owner j] (v: (m, P), blocks: (n_blocks, m, k)), in
        the blocks' dtype. ``symmetric``: every block equals its transpose (kernel blocks)."""
        if self.looped and symmetric:
            out = torch.empty((blocks.shape[2], v.shape[1]), dtype=blocks.dtype, device=v.device)
            rows = v.T.to(blocks.dtype)  # (P, m): a column's vector as (m, q) column-major, BLAS's fast layout
            for b, cols in self.by_block:
                out[:, cols] = blocks[b] @ rows[cols].T
            return out
        packed = torch.zeros((self.n_blocks, self.q, v.shape[0]), dtype=blocks.dtype, device=v.device)
        packed[self.owner, self.slot] = v.T.to(blocks.dtype)
        if symmetric and self.q <= self.TRANSPOSED_UP_TO:
            return torch.bmm(blocks, packed.transpose(1, 2))[self.owner, :, self.slot].T
        return torch.bmm(packed, blocks)[self.owner, self.slot].T


class BlockKernel(Kernel):
    """Problems that each live on their own rows: problem j's kernel is ``blocks[block[j]]``
    (B x m x m, bias included) and the solver's (m, P) vectors hold each problem's rows in its
    block's order (rows past a block's own are padding, never training rows). VOC07 low-shot
    classes train on k + 19k rows each: one block per class instead of masked columns of the
    union of the 20 samples, which for k <= 32 is 7-80 times more kernel per product.
    Products are one batched (q, m) @ (m, m) product over the blocks (``_Packing``)."""

    def __init__(self, blocks: torch.Tensor, block: torch.Tensor, mixed: bool = False,
                 fast: torch.Tensor | None = None):
        super().__init__(blocks, mixed, fast)
        self.block = block

    def _product(self, data, p, cols):
        owner = self.block if cols is None else self.block[cols]
        return _Packing(owner, len(data)).product(p, data, symmetric=True).to(p.dtype)  # (p^T K)^T = K p

    def sparse_matmul(self, p: torch.Tensor, cols=None) -> torch.Tensor:
        """``Kernel.sparse_matmul`` block by block: each block's own non-zero rows."""
        owner = self.block if cols is None else self.block[cols]
        blocks = []
        for b in torch.unique(owner).tolist():
            columns = torch.nonzero(owner == b).flatten()
            blocks.append((b, columns, _nonzero_rows(p[:, columns])))
        if not any(_few(rows, p.shape[0]) for _, _, rows in blocks):
            return self.matmul(p, cols)  # one bmm over the blocks beats a loop of full block products
        out = torch.empty_like(p)
        for b, columns, rows in blocks:
            p_b = p[:, columns]
            if _few(rows, p.shape[0]):
                out[:, columns] = _symmetric_rows_product(self.data[b], rows, p_b[rows])
            else:
                out[:, columns] = (p_b.T @ self.data[b]).T
        return out

    def tiled(self, times: int) -> "BlockKernel":
        if times == 1:
            return self
        tiled = copy.copy(self)  # shares the blocks and their float32 copy
        tiled.block = self.block.repeat(times)
        return tiled

    def column_diagonal(self, cols=None) -> torch.Tensor:
        owner = self.block if cols is None else self.block[cols]
        return torch.diagonal(self.data, dim1=1, dim2=2)[owner].T

    def trace_bound(self) -> float:
        return float(torch.diagonal(self.data, dim1=1, dim2=2).sum(1).max())

    @property
    def shape(self):
        return self.data.shape[1:]


def as_kernel(K):
    """A plain tensor is a float64 ``DenseKernel``; kernel objects pass through."""
    return DenseKernel(K) if isinstance(K, torch.Tensor) else K


def kernel_diagonal(K) -> torch.Tensor:
    return torch.diagonal(K) if isinstance(K, torch.Tensor) else K.diagonal()


def column_diagonal(K, cols=None) -> torch.Tensor:
    """The kernel's diagonal as (n, 1), or (m, columns) for a ``BlockKernel``."""
    return torch.diagonal(K).unsqueeze(1) if isinstance(K, torch.Tensor) else K.column_diagonal(cols)


def projected_gradient_range(beta, f, y, c, train) -> torch.Tensor:
    """liblinear's stopping quantity max PG - min PG over the training rows of each problem."""
    alpha = y * beta
    inv2c = torch.where(train, 0.5 / c.clamp_min(1e-300), torch.zeros_like(c))
    grad = y * f - 1 + alpha * inv2c
    pg = torch.where(alpha > 0, grad, grad.clamp(max=0))
    big = torch.finfo(f.dtype).max
    # 0 is included so that a point where every PG is equal but not 0 (e.g. alpha = 0, where all
    # G = -1) is not mistaken for an optimum
    pg_max = torch.where(train, pg, torch.full_like(pg, -big)).amax(dim=0).clamp_min(0)
    pg_min = torch.where(train, pg, torch.full_like(pg, big)).amin(dim=0).clamp_max(0)
    return pg_max - pg_min


@dataclass
class LowRank:
    """Top eigenpairs of a kernel, K ~ U diag(lam) U^T (U: n x r, orthonormal columns; a
    ``BlockKernel``'s are batched: U (B, m, r), lam (B, r)). What every preconditioner built from
    them needs is derived once, here, not at each Newton step: U in float32 (``fast``, for mixed
    kernels), its transpose and the low-rank part's diagonal (``diagonal``)."""

    U: torch.Tensor
    lam: torch.Tensor
    U_fast: torch.Tensor | None = None
    Ut_fast: torch.Tensor | None = None
    diag: torch.Tensor | None = None

    def fast(self) -> torch.Tensor:
        if self.U_fast is None:
            self.U_fast = self.U.to(torch.float32)
        return self.U_fast

    def fast_transposed(self) -> torch.Tensor:
        """(B, r, m), contiguous: the layout of the batched product back to the rows."""
        if self.Ut_fast is None:
            self.Ut_fast = self.fast().transpose(1, 2).contiguous()
        return self.Ut_fast

    def diagonal(self) -> torch.Tensor:
        """diag(U diag(lam) U^T): (n,), or (B, m) for a block kernel's."""
        if self.diag is None:
            U, lam = self.U, self.lam
            self.diag = ((U * U) @ lam.unsqueeze(2))[:, :, 0] if U.dim() == 3 else (U * U * lam).sum(1)
        return self.diag

    def as_blocks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U, its float32 copy, lam, the diagonal) batched over blocks: a dense kernel's as block 0."""
        if self.U.dim() == 3:
            return self.U, self.fast(), self.lam, self.diagonal()
        return self.U.unsqueeze(0), self.fast().unsqueeze(0), self.lam.unsqueeze(0), self.diagonal().unsqueeze(0)

    def gathered(self, source: torch.Tensor, rows: torch.Tensor) -> "LowRank":
        """Block ``source[i]``'s eigenvectors on its rows ``rows[i]``, with what was derived from
        them (the float32 copy included: compacted CG runs in float32)."""
        U, U_fast, lam, diag = self.as_blocks()
        index = (source.unsqueeze(1), rows)
        return LowRank(U[index], lam[source], U_fast=U_fast[index], diag=diag[index])


def lowrank_eig(K, rank: int, seed: int = 0, oversample: int = 16) -> LowRank:
    """Randomised eigendecomposition of the PSD kernel (one power iteration, Halko et al. 2011):
    three products with rank + oversample columns. The test matrix comes from a seeded CPU
    generator, so the result does not depend on the device. A mixed kernel's are computed from
    its float32 copy (half the time): they only precondition CG, whose answer does not depend on
    them; they are returned in the kernel's dtype."""
    n = K.shape[0]
    rank = min(rank, n)
    K = as_kernel(K)
    dtype = torch.float32 if K.mixed else K.dtype
    omega = torch.randn(n, min(n, rank + oversample), generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64).to(device=K.device, dtype=dtype)
    if isinstance(K, BlockKernel):  # every block's own eigenpairs, batched; U: (B, m, r), lam: (B, r)
        data = K.data32 if K.mixed else K.data
        Q, _ = torch.linalg.qr(data @ (data @ omega))
        lam, V = torch.linalg.eigh(Q.transpose(1, 2) @ (data @ Q))
        lam, V = lam.flip(-1)[:, :rank], V.flip(-1)[:, :, :rank]
        # blocks are not cut to their own numerical rank (that would make them ragged): tiny
        # eigenvalues are raised instead, which only makes those directions weigh nothing
        lam = lam.clamp_min(float(lam.max()) * 1e-10)
        return LowRank((Q @ V).to(K.dtype), lam.to(K.dtype))
    Q, _ = torch.linalg.qr(K.fast_matmul(K.fast_matmul(omega)))
    lam, V = torch.linalg.eigh(Q.T @ K.fast_matmul(Q))
    lam, V = lam.flip(0)[:rank], V.flip(1)[:, :rank]
    # float32 eigenvalues are only good to ~1e-7 of the largest
    keep = lam > (1e-10 if dtype == torch.float64 else 1e-6) * lam[0].clamp_min(1e-300)
    return LowRank((Q @ V[:, keep]).to(K.dtype), lam[keep].to(K.dtype))


class _Jacobi:
    """Preconditioner diag(K_SS + D_S)^-1 on the active rows (identity elsewhere, where r = 0)."""

    def __init__(self, K, d, a, cols=None):
        self.inv = a / (column_diagonal(K, cols) + d + (1 - a))

    def __call__(self, r):
        return r * self.inv

    def keep(self, columns):
        self.inv = self.inv[:, columns]


def _woodbury_factors(U_fast, U, W, inv_lam, chunk: int = 16) -> torch.Tensor:
    """(columns, r, r): per column j of W (n, columns), the Cholesky factor of
    U_S^T diag(W_S,j) U_S + inv_lam, summed over the column's own rows S = {i : W_ij != 0} only
    (at large costs 15-50 % of them: the sums over all rows were most of the set-up's work).
    U_fast: U in the dtype the sums are formed in (float32 for a mixed kernel: a preconditioner only
    steers CG, its rounding cannot change the answer); a column whose rounded factor is not
    positive definite is factored from sums in U's dtype instead. Factored ``chunk`` columns at a
    time (no (columns, r, r) temporary of all columns at once)."""

    def gram(basis, w):
        rows = torch.nonzero(w).flatten()
        part = basis[rows]
        return (part.T * w[rows].to(basis.dtype)) @ part

    r = U.shape[1]
    L = torch.empty((W.shape[1], r, r), dtype=U.dtype, device=U.device)
    for start in range(0, W.shape[1], chunk):
        columns = range(start, min(W.shape[1], start + chunk))
        M = torch.stack([gram(U_fast, W[:, j]) for j in columns]).to(U.dtype) + inv_lam
        factor, info = torch.linalg.cholesky_ex(M)
        for failed in torch.nonzero(info).flatten().tolist():
            factor[failed] = torch.linalg.cholesky(gram(U, W[:, start + failed]) + inv_lam)
        L[start:start + len(columns)] = factor
    return L


class _LowRankJacobi:
    """Preconditioner P^-1 with P = D' + U_S diag(lam) U_S^T, per column (S: its active rows):
    the kernel's top eigenpairs restricted to S plus the diagonal rest (D' = D_S + diag(K_SS) -
    diag of the low-rank part). Applied with the Woodbury identity through one r x r Cholesky
    factor per column, so a step costs O(n r) against the O(n^2) kernel product. Where K has a
    few dominant directions (non-negative features: the mean; class structure) this takes the
    large-cost systems from tens of CG steps to a handful."""

    def __init__(self, K, d, a, lowrank: LowRank, chunk: int = 16, fast: bool = False, cols=None):
        U, lam = lowrank.U, lowrank.lam
        if U.dim() == 3:  # a BlockKernel's eigenpairs (B, m, r): each column uses its block's
            self.blocked = True
            self.owner = K.block if cols is None else K.block[cols]
            U_fast = lowrank.fast() if fast else U
            # applied in the fast dtype too
            self.U, self.Ut = U_fast, (lowrank.fast_transposed() if fast else U.transpose(1, 2).contiguous())
            rest = (column_diagonal(K, cols) - lowrank.diagonal()[self.owner].T).clamp_min(0)
            self.W = a / (rest + d + (1 - a))
            self.L = torch.empty((a.shape[1], len(lam[0]), len(lam[0])), dtype=U.dtype, device=U.device)
            for b in torch.unique(self.owner).tolist():
                group = torch.nonzero(self.owner == b).flatten()
                self.L[group] = _woodbury_factors(U_fast[b], U[b], self.W[:, group], torch.diag(1 / lam[b]), chunk)
            return
        self.blocked = False
        rest = (kernel_diagonal(K) - lowrank.diagonal()).clamp_min(0)
        self.W = a / (rest.unsqueeze(1) + d + (1 - a))  # D'^-1 on the active rows, 0 elsewhere
        self.U = U
        U_fast = lowrank.fast() if fast else U
        self.L = _woodbury_factors(U_fast, U, self.W, torch.diag(1 / lam), chunk)

    def _solve(self, rhs):
        """(L L^T)^-1 rhs per column, as two batched triangular solves: ``torch.cholesky_solve``
        took 5.4 ms for 80 columns of rank 128, these 1.0 ms (the same two substitutions)."""
        half = torch.linalg.solve_triangular(self.L, rhs, upper=False)
        return torch.linalg.solve_triangular(self.L.transpose(1, 2), half, upper=True)

    def __call__(self, r):
        u = r * self.W
        if self.blocked:
            packing = _Packing(self.owner, len(self.U))
            t = self._solve(packing.product(u, self.U).T.to(u.dtype).unsqueeze(2))[:, :, 0]
            return u - self.W * packing.product(t.T, self.Ut).to(u.dtype)
        t = self._solve((self.U.T @ u).T.unsqueeze(2))[:, :, 0].T
        return u - self.W * (self.U @ t)

    def keep(self, columns):
        self.W, self.L = self.W[:, columns], self.L[columns]
        if self.blocked:
            self.owner = self.owner[columns]


def _cg(K, rhs, d, active, z0, u0, c, tol, q_stop, max_iter, lowrank: LowRank | None = None, columns=None,
        fast: bool = False):
    """Solve (K_SS + D_S) z_S = rhs_S for every column (S: the column's active rows), z = 0 off S.

    Batched preconditioned conjugate gradients (Jacobi, or low-rank + diagonal when ``lowrank``
    eigenpairs of K are given), from z0 (with u0 = K z0, exact: the residual each run starts
    from is exact, which makes a run with float32 products one round of iterative refinement).
    Along the way u = K z is kept from the same products (a float64 kernel needs no extra product
    for the decision values; a mixed one computes K z exactly once at the end), and with it the
    column's quadratic model q_S(z) = z'Kz / 2 +
    sum_S c (1 - y (Kz))^2. A column stops when its largest residual entry is below its ``tol``
    and q_S(z) < q_stop (the objective at the current iterate, so that z - iterate is a descent
    direction however loosely it was solved). Only unconverged columns take part in the products.
    Returns z, u ~ K z (from the CG products, so to the rounding of fast ones) and the iterations of
    each column. ``fast``: the preconditioner's factors may be formed in float32.
    """
    act = active.to(K.dtype)
    d = d * act
    z_out, u_out = z0 * act, u0.clone()
    iters = torch.zeros(rhs.shape[1], dtype=torch.long, device=K.device)
    # the unconverged columns, kept compact (copied once when some finish, not every iteration)
    cols = torch.arange(rhs.shape[1], device=K.device)
    z, u, a, dd, y, cs, tol_c, q_c = z_out.clone(), u_out.clone(), act, d, rhs, c * act, tol, q_stop
    r = (y - u - dd * z) * a
    precondition = (_Jacobi(K, dd, a, columns) if lowrank is None
                    else _LowRankJacobi(K, dd, a, lowrank, fast=fast, cols=columns))
    s = precondition(r)
    p = s.clone()
    rs = (r * s).sum(0)

    halted = torch.zeros(rhs.shape[1], dtype=torch.bool, device=K.device)

    def finished():
        largest = r.abs().amax(0)
        done = largest <= tol_c
        if bool(done.any()):
            slack = (1 - y[:, done] * u[:, done]) * a[:, done]
            q = 0.5 * (z[:, done] * u[:, done]).sum(0) + (cs[:, done] * slack * slack).sum(0)
            done[done.clone()] = q < q_c[done]
        # a residual at the rounding level cannot get smaller: a column that still has not met
        # q < q_stop there (its iterate is already this active set's solution) stops
        return done | halted | (largest <= 1e-12)

    for _ in range(max_iter + 1):
        done = finished()
        if bool(done.any()):
            z_out[:, cols[done]], u_out[:, cols[done]] = z[:, done], u[:, done]
            keep = ~done
            cols = cols[keep]
            z, u, r, p, rs, s = z[:, keep], u[:, keep], r[:, keep], p[:, keep], rs[keep], s[:, keep]
            a, dd, y, cs, tol_c, q_c = a[:, keep], dd[:, keep], y[:, keep], cs[:, keep], tol_c[keep], q_c[keep]
            halted = halted[keep]
            precondition.keep(keep)
        if cols.numel() == 0 or _ == max_iter:
            break
        kp = K.fast_matmul(p, None if columns is None else columns[cols])
        q = kp * a + dd * p
        curvature = (p * q).sum(0)
        # p'(K_SS + D_S)p >= p'D_S p exactly. Below half of that the (float32) product's rounding
        # dominates the curvature, as it can on the nearly singular systems of large costs: the
        # step would be meaningless or overflow. The column stops at its iterate; the Newton step
        # goes on from there with an exact residual.
        halted = ~(curvature >= 0.5 * (dd * p * p).sum(0))
        step = torch.where(halted, torch.zeros_like(rs), rs / curvature.clamp_min(1e-300))
        z += step * p
        u += step * kp
        r -= step * q
        s = precondition(r)
        rs_new = (r * s).sum(0)
        halted = halted | ~(rs_new > 0)  # a float32-applied preconditioner can round r's norm to <= 0
        p = s + (rs_new / rs.clamp_min(1e-300)) * p
        rs = rs_new
        iters[cols] += 1
    if cols.numel():  # iteration limit: the last iterates
        z_out[:, cols], u_out[:, cols] = z, u
    return z_out, u_out, iters


# Compacting the CG runs to their active rows: products below this many kernel entries are too
# small for the gathering to pay (per-group overheads); gathered float32 blocks per CG run.
COMPACT_FROM_ENTRIES = 2048 ** 2
COMPACT_BYTES = 2 ** 30


@dataclass
class _CompactChunk:
    """CG columns ``cols`` (positions among the solver's columns) on their groups' active rows:
    group i's rows ``rows[i]`` (padded with repeats of its first row where ``valid`` is False),
    ``owner[j]`` the group of column j, ``source`` the kernel block each group's rows index (0 for a
    dense kernel, taken as one block)."""

    cols: torch.Tensor
    rows: torch.Tensor
    valid: torch.Tensor
    owner: torch.Tensor
    source: torch.Tensor
    labels: torch.Tensor  # each group's label in ``groups``
    union: torch.Tensor  # (n, groups) bool: the rows active in some column of the group


@dataclass
class _Gathered:
    """A chunk's gathered float32 blocks (and eigenvectors), kept on the kernel for the next
    Newton steps: at large costs the active sets mostly shrink from one step (and cost) to the
    next, and a gather costs as much as 10-25 of the CG products on the blocks it makes."""

    labels: torch.Tensor
    source: torch.Tensor
    rows: torch.Tensor
    valid: torch.Tensor
    member: torch.Tensor  # (n, groups) bool: rows[i][valid[i]] as a mask
    blocks: torch.Tensor
    lowrank_of: LowRank | None = None
    lowrank: LowRank | None = None


def _compaction(K, active, groups, columns) -> list[_CompactChunk] | None:
    """How to run the CG steps of a Newton iteration on the active rows only, or None.

    Inside one CG run the active sets are fixed and a column's product is only read on its own
    active rows, but the plain product goes over every row of the kernel (or block): at large
    costs the low-shot problems keep 5-15 % of their rows active, so most of the work is wasted.
    Columns of one group (a class: its sample and CV folds) share a gathered float32 block of
    the rows active in any of them; groups run in chunks of at most COMPACT_BYTES of blocks.
    Chosen by a cost model: the full product reads n^2 entries (per block present) and is
    compute-bound from ~16 columns on; the gathered blocks are read at every step and cost
    about as much again to gather (x2)."""
    if groups is None or not K.mixed or not isinstance(K, (DenseKernel, BlockKernel)):
        return None
    n, P = active.shape
    # the kernel block each column's rows index (a dense kernel is one block)
    source = K.block[columns] if isinstance(K, BlockKernel) else torch.zeros(P, dtype=torch.long, device=active.device)
    present = len(torch.unique(source))
    entries = present * n * n
    full = entries * max(1.0, P / present / 16)
    if entries < COMPACT_FROM_ENTRIES:
        return None
    labels, owner = torch.unique(groups, return_inverse=True)
    G = int(owner.max()) + 1
    member = torch.zeros((P, G), dtype=torch.float32, device=active.device)
    member[torch.arange(P, device=active.device), owner] = 1
    union = (active.to(torch.float32) @ member) > 0  # (n, G): rows active in some column of the group
    sizes = union.sum(0)
    if 2 * G * float(sizes.max()) ** 2 >= full:
        return None
    # each group's active rows first, in row order
    order = torch.argsort((~union).to(torch.int8), dim=0, stable=True).T  # (G, n)
    group_source = torch.zeros(G, dtype=torch.long, device=active.device)
    group_source[owner] = source
    chunks, start, by_size = [], 0, sizes.tolist()
    while start < G:
        stop, m = start, 1
        while stop < G:
            m_next = max(m, by_size[stop])
            if stop > start and 4 * (stop + 1 - start) * m_next ** 2 > COMPACT_BYTES:
                break
            m, stop = m_next, stop + 1
        rows = order[start:stop, :m]
        valid = torch.arange(m, device=active.device).unsqueeze(0) < sizes[start:stop].unsqueeze(1)
        rows = torch.where(valid, rows, rows[:, :1])
        cols = torch.nonzero((owner >= start) & (owner < stop)).flatten()
        chunks.append(_CompactChunk(cols, rows, valid, owner[cols] - start, group_source[start:stop],
                                    labels[start:stop], union[:, start:stop]))
        start = stop
    return chunks


# A chunk's kept blocks (``_Gathered``) are reused while every group's active rows fit in them and
# each present group's block has at most this many times the entries a new gather would make (CG
# products read the spare ones too): a gather reads each gathered row's whole source row and was
# measured to take as long as 10-25 products of four columns on its result, while a Newton step
# takes 1-12 CG products. Rows that became active since are written into free slots (a few dozen
# per step at large costs); each gather leaves HEADROOM of its rows free for them. VOC07 low-shot
# k = 96: 11 gathers per sample without reuse, 5 with a bound of 1.5, 2 with 3.
REUSE_ENTRIES = 3.0
HEADROOM = 1 / 32


def _reusable(K, chunk: _CompactChunk, source_blocks) -> tuple[_Gathered, torch.Tensor] | None:
    """The kernel's kept blocks, completed with the chunk's newly active rows, and each chunk
    group's position in them; None when they cannot serve the chunk."""
    kept = getattr(K, "_gathered", None)
    if kept is None:
        return None
    where = torch.searchsorted(kept.labels, chunk.labels).clamp_max(len(kept.labels) - 1)
    if not bool((kept.labels[where] == chunk.labels).all() and (kept.source[where] == chunk.source).all()):
        return None
    if kept.rows.shape[1] ** 2 > REUSE_ENTRIES * chunk.rows.shape[1] ** 2:
        return None
    new = chunk.union & ~kept.member[:, where]  # (n, chunk groups)
    counts = new.sum(0)
    free = (~kept.valid[where]).sum(1)
    if bool((counts > free).any()):
        return None
    if int(counts.sum()):
        _add_rows(kept, where, new, source_blocks)
    return kept, where


def _add_rows(kept: _Gathered, where: torch.Tensor, new: torch.Tensor, source_blocks):
    """Write each chunk group's ``new`` rows into free slots of its kept block (and eigenvectors)."""
    column, row = torch.nonzero(new.T, as_tuple=True)  # by chunk group, then row
    group = where[column]
    # the i-th new row of a group takes the group's i-th free slot
    rank = torch.arange(len(group), device=group.device) - torch.searchsorted(group, group, side="left")
    free_order = torch.argsort(kept.valid.to(torch.int8), dim=1, stable=True)  # free slots first
    slot = free_order[group, rank]
    kept.rows[group, slot] = row
    kept.valid[group, slot] = True
    kept.member[row, group] = True
    values = source_blocks[kept.source[group].unsqueeze(1), row.unsqueeze(1), kept.rows[group]]  # (new, m)
    kept.blocks[group, slot, :] = values
    kept.blocks[group, :, slot] = values
    if kept.lowrank is not None:
        U, U_fast, _, diag = kept.lowrank_of.as_blocks()
        index = (kept.source[group], row)
        kept.lowrank.U[group, slot] = U[index]
        kept.lowrank.fast()[group, slot] = U_fast[index]
        kept.lowrank.diagonal()[group, slot] = diag[index]
        kept.lowrank.Ut_fast = None


def _gather(K, chunk: _CompactChunk, source_blocks, single: bool) -> _Gathered:
    """The chunk's blocks, gathered with HEADROOM free slots; kept on the kernel when the chunk is
    the only one (several chunks would keep several COMPACT_BYTES of blocks alive between Newton
    steps)."""
    K._gathered = None  # frees the previous blocks before gathering new ones
    G, m = chunk.rows.shape
    spare = min(K.shape[0], m + max(8, int(m * HEADROOM))) - m if single else 0
    rows = torch.cat([chunk.rows, chunk.rows[:, :1].expand(G, spare)], 1)
    valid = torch.cat([chunk.valid, torch.zeros((G, spare), dtype=torch.bool, device=rows.device)], 1)
    blocks = source_blocks[chunk.source.view(-1, 1, 1), rows.unsqueeze(2), rows.unsqueeze(1)]
    member = torch.zeros_like(chunk.union)
    group = torch.arange(G, device=rows.device).unsqueeze(1).expand_as(rows)
    member[rows[valid], group[valid]] = True
    gathered = _Gathered(chunk.labels, chunk.source, rows, valid, member, blocks)
    if single:
        K._gathered = gathered
    return gathered


def _compact_cg(K, chunks: list[_CompactChunk], rhs, d, active, z0, u0, c, tol, q_stop, max_iter,
                lowrank: LowRank | None):
    """``_cg`` on each chunk's gathered active rows (a ``BlockKernel`` of float32 blocks, one per
    group, or the kept blocks of an earlier step that hold them: ``_reusable``); returns the
    solutions scattered back to all rows (zero off the active ones) and the iterations."""
    # a dense kernel (and its eigenpairs) as one block, as ``_compaction`` numbers it
    blocked = isinstance(K, BlockKernel)
    source_blocks = K.data32 if blocked else K.data32.unsqueeze(0)
    z = torch.zeros_like(z0)
    iters = torch.zeros(rhs.shape[1], dtype=torch.long, device=z0.device)
    for chunk in chunks:
        reuse = _reusable(K, chunk, source_blocks) if len(chunks) == 1 else None
        if reuse is None:
            gathered, position = _gather(K, chunk, source_blocks, len(chunks) == 1), chunk.owner
        else:
            gathered, where = reuse
            position = where[chunk.owner]
        index = gathered.rows[position].T  # (m, columns): each column's rows
        mask = gathered.valid[position].T

        def take(v):
            return torch.gather(v[:, chunk.cols], 0, index)

        compact_lowrank = None
        if lowrank is not None:
            if gathered.lowrank_of is not lowrank:
                gathered.lowrank = lowrank.gathered(gathered.source, gathered.rows)
                gathered.lowrank_of = lowrank
            compact_lowrank = gathered.lowrank
        zc, _, it = _cg(BlockKernel(gathered.blocks, position), take(rhs), take(d), take(active) & mask, take(z0),
                        take(u0), take(c), tol[chunk.cols], q_stop[chunk.cols], max_iter, compact_lowrank,
                        torch.arange(len(chunk.cols), device=z0.device), fast=True)
        z[:, chunk.cols] = torch.zeros_like(z[:, chunk.cols]).scatter_add_(0, index, zc * mask)
        iters[chunk.cols] = it
    return z, iters


def _masked_cg(K, rhs, d, active, z0, u0, c, tol, q_stop, max_iter, lowrank: LowRank | None = None, columns=None,
               groups=None):
    """``_cg`` with the decision values u = K z exact on return (a mixed kernel's float32 products
    only steered CG) and, where ``_compaction`` finds it pays, each group's CG steps on its active
    rows (``groups``: the group of each column, e.g. its class)."""
    chunks = _compaction(K, active, groups, columns)
    if chunks is not None:
        z, iters = _compact_cg(K, chunks, rhs, d, active, z0, u0, c, tol, q_stop, max_iter, lowrank)
        return z, K.sparse_matmul(z, columns), iters
    z, u, iters = _cg(K, rhs, d, active, z0, u0, c, tol, q_stop, max_iter, lowrank, columns, fast=K.mixed)
    if K.mixed:  # u was accumulated from float32 products: the caller needs K z exactly
        u = K.sparse_matmul(z, columns)
    return z, u, iters


def _line_search(beta, f, delta, dfx, y, c, train, iters: int = 30):
    """argmin over t in [0, 1] of the primal objective on beta + t delta (exact: phi' is monotone,
    piecewise linear); safeguarded Newton on phi'(t) = 0. Only the columns where the full step
    overshoots (phi'(1) > 0) are searched, on their own copies: at the small costs most of a
    batch's hundreds of columns take the full step."""
    a = (delta * f).sum(0)       # delta' K beta
    b = (delta * dfx).sum(0)     # delta' K delta
    ydf = y * dfx
    ymarg = y * f
    ct = torch.where(train, c, torch.zeros_like(c))

    def dphi(t, ymarg, ydf, ct, a, b):
        slack = (1 - ymarg - t * ydf).clamp_min(0)
        d1 = a + t * b - 2 * (ct * slack * ydf).sum(0)
        d2 = b + 2 * (ct * (slack > 0) * ydf * ydf).sum(0)
        return d1, d2

    t_all = torch.ones_like(a)
    d1_hi, _ = dphi(t_all, ymarg, ydf, ct, a, b)
    cols = torch.nonzero(d1_hi > 0).flatten()  # otherwise the full step is (at least) as good as any shorter one
    if cols.numel() == 0:
        return t_all
    beta, f, ydf, ymarg, ct = beta[:, cols], f[:, cols], ydf[:, cols], ymarg[:, cols], ct[:, cols]
    a, b = a[cols], b[cols]
    lo = torch.zeros_like(a)
    hi = torch.ones_like(a)
    t = hi.clone()
    search = torch.ones_like(a, dtype=torch.bool)
    for _ in range(iters):
        if not bool(search.any()):
            break
        d1, d2 = dphi(t, ymarg, ydf, ct, a, b)
        lo = torch.where(search & (d1 < 0), t, lo)
        hi = torch.where(search & (d1 > 0), t, hi)
        newton = t - d1 / d2.clamp_min(1e-300)
        inside = (newton > lo) & (newton < hi)
        t_next = torch.where(inside, newton, 0.5 * (lo + hi))
        done = d1.abs() <= 1e-12 * (a.abs() + b.abs() + 1)
        search = search & ~done
        t = torch.where(search, t_next, t)
    # Rounding can put the minimiser a hair before 1 when a point's margin crosses 1 right at the
    # Newton point; the full step then keeps a ~1e-9 dual variable alive on an inactive point
    # forever. Take the full step when it is as good to rounding (it zeroes those exactly).
    base = 0.5 * (beta * f).sum(0)

    def phi(t):
        slack = (1 - ymarg - t * ydf).clamp_min(0)
        return base + t * a + 0.5 * t * t * b + (ct * slack * slack).sum(0)

    full_ok = phi(torch.ones_like(t)) <= phi(t) + 1e-10 * phi(torch.zeros_like(t)).abs()
    t_all[cols] = torch.where(full_ok, torch.ones_like(t), t)
    return t_all


def solve(K: torch.Tensor, y: torch.Tensor, c: torch.Tensor, train: torch.Tensor, beta0=None, f0=None,
          tol: float = TOL, max_newton: int = 60, max_cg: int = 1000,
          lowrank: LowRank | None = None, groups: torch.Tensor | None = None) -> tuple[torch.Tensor, SolveInfo]:
    """Solve P squared-hinge SVMs sharing the kernel K (n x n, bias included).

    y: (n, P) labels +-1; c: (n, P) per-sample costs; train: (n, P) bool, the rows each problem is
    trained on (the others are ignored: CV folds). beta0: optional warm start (n, P), f0 = K beta0
    when known. lowrank: top eigenpairs of K for the low-rank + diagonal CG preconditioner (the
    answer is the same; worth it for large costs, see ``needs_lowrank``). Returns beta (n, P), the
    kernel-space solution (decision values: K_rows @ beta; on the n rows of K they are in
    ``info.decision``). groups: optional (P,) group of each problem (problems on the same rows, as a
    class's sample and CV folds): CG steps may then run on each group's active rows
    (``_compaction``); the stopping test is the same.
    """
    K = as_kernel(K)
    n, P = y.shape
    dtype, device = K.dtype, K.device
    y, c = y.to(dtype), c.to(dtype)
    if beta0 is None:
        beta, f = torch.zeros((n, P), dtype=dtype, device=device), torch.zeros((n, P), dtype=dtype, device=device)
    else:
        beta = beta0.to(dtype) * train
        f = f0.to(dtype) if f0 is not None and bool((beta == beta0).all()) else K.matmul(beta)
    converged = torch.zeros(P, dtype=torch.bool, device=device)
    newton = torch.zeros(P, dtype=torch.long, device=device)
    cg_total = torch.zeros(P, dtype=torch.long, device=device)
    pg = projected_gradient_range(beta, f, y, c, train)
    live = torch.nonzero(pg > tol).flatten()
    converged[pg <= tol] = True
    # Newton points to a quarter of liblinear's tolerance: looser (inexact Newton) solves were
    # measured to cost more Newton steps than they save in products. A problem whose Newton step
    # does not move its iterate (its CG run stopped at once, the iterate's residual already under
    # the tolerance, yet the test fails: e.g. a slightly negative dual variable on a row whose
    # margin is 1 to within that residual) gets a ten times tighter one, so that it cannot stall.
    cg_tol_all = torch.full_like(pg, 0.25 * tol)
    for _ in range(max_newton):
        if live.numel() == 0:
            break
        b, fl, yl, cl, tl = beta[:, live], f[:, live], y[:, live], c[:, live], train[:, live]
        active = tl & (yl * fl < 1)
        d = torch.where(active, 0.5 / cl.clamp_min(1e-300), torch.zeros_like(cl))
        cg_tol = cg_tol_all[live]
        z0 = b * active
        stale = (b * ~active != 0).any(0)  # dual weight on rows that left the active set
        u0 = fl.clone()
        if bool(stale.any()):  # K z0 = K b - K (b off the active set); the latter lives on few rows
            u0[:, stale] = fl[:, stale] - K.sparse_matmul((b * ~active)[:, stale], live[stale])
        slack = (1 - yl * fl).clamp_min(0) * tl
        objective = 0.5 * (b * fl).sum(0) + (cl * slack * slack).sum(0)
        z, u, it = _masked_cg(K, yl, d, active, z0, u0, cl, cg_tol, objective, max_cg, lowrank, live,
                              None if groups is None else groups[live])
        delta = z - b
        dfx = u - fl
        t = _line_search(b, fl, delta, dfx, yl, cl, tl)
        # no decrease left to rounding (the Newton point of a borderline active set): take the
        # full step, which puts the iterate on that active set's exact solution
        t = torch.where(t < 1e-8, torch.ones_like(t), t)
        still = (t * delta).abs().amax(0) == 0
        cg_tol_all[live[still]] = (cg_tol_all[live[still]] * 0.1).clamp_min(1e-14)
        b = b + t * delta
        fl = fl + t * dfx
        beta[:, live], f[:, live] = b, fl
        newton[live] += 1
        cg_total[live] += it
        # liblinear's test on the iterate's own dual point alpha = y * beta. A negative alpha is no
        # dual point; but rounding can leave a tiny one on a point whose margin ended just above 1:
        # clip those (one product gives the exact decision values back) and test again.
        pg_l = projected_gradient_range(b, fl, yl, cl, tl)
        negative = (yl * b) < 0
        clip = torch.nonzero(negative.any(0) & (pg_l <= tol)).flatten()
        if clip.numel():
            b_clip = torch.where(negative[:, clip], torch.zeros_like(b[:, clip]), b[:, clip])
            f_clip = fl[:, clip] - K.sparse_matmul(b[:, clip] - b_clip, live[clip])
            pg_clip = projected_gradient_range(b_clip, f_clip, yl[:, clip], cl[:, clip], tl[:, clip])
            keep = pg_clip <= tol  # otherwise Newton goes on from the unclipped iterate
            clip, b_clip, f_clip = clip[keep], b_clip[:, keep], f_clip[:, keep]
            b[:, clip], fl[:, clip] = b_clip, f_clip
            beta[:, live[clip]], f[:, live[clip]] = b_clip, f_clip
            pg_l[clip] = pg_clip[keep]
            negative[:, clip] = False
        pg_l = torch.where(negative.any(0), torch.full_like(pg_l, float("inf")), pg_l)
        pg[live] = pg_l
        done = pg_l <= tol
        converged[live[done]] = True
        live = live[~done]
    return beta, SolveInfo(converged.cpu(), newton.cpu(), cg_total.cpu(), pg.cpu(), f)


def warm_start(beta, f, y, c, train, ratio: float):
    """Rescale the previous cost's solution for the next cost: for small costs the dual variables
    grow in proportion to C, for large ones the solution saturates; keep, per problem, the scale
    among a few candidates with the lowest primal objective (no kernel products needed)."""
    best_obj, best_scale = None, None
    ct = torch.where(train, c, torch.zeros_like(c))
    for scale in sorted({1.0, ratio ** 0.5, ratio}):
        obj = 0.5 * scale * scale * (beta * f).sum(0) + (ct * (1 - scale * y * f).clamp_min(0) ** 2).sum(0)
        s = torch.full_like(obj, scale)
        if best_obj is None:
            best_obj, best_scale = obj, s
        else:
            better = obj < best_obj
            best_obj, best_scale = torch.where(better, obj, best_obj), torch.where(better, s, best_scale)
    return beta * best_scale, f * best_scale


def kernel_with_bias(X: torch.Tensor, Z: torch.Tensor | None = None) -> torch.Tensor:
    """[X, 1] [Z, 1]^T: the bias is liblinear's constant feature of value 1 (intercept_scaling)."""
    Z = X if Z is None else Z
    return X @ Z.T + 1.0
