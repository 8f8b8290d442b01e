"""Multinomial logistic regression on fixed features, many problems at once, in torch (CPU/GPU).

The problem is scikit-learn's ``LogisticRegression(C=C)`` (multinomial, L2, intercept not
penalised) exactly. scikit-learn minimises

    C * sum_i CE(W^T x_i + b, y_i) + 0.5 * ||W||_F^2 ;

dividing by C * n gives the same minimiser for

    f(W, b) = mean_i CE(W^T x_i + b, y_i) + lam / 2 * ||W||_F^2 ,   lam = 1 / (C * n),

which is what is solved here (the mean keeps gradients of order one whatever n).

A batch holds B independent problems (e.g. the few-shot draws of one n, or several costs):
features (B, n, d) or shared (n, d), labels (B, n), one lam each. They are solved together by
L-BFGS (memory 10) whose two-loop recursion and backtracking (Armijo) line search are run per
problem as batched tensor operations; a problem stops when its gradient's largest entry is below
``tol``. ``fit_path`` visits the costs in increasing order, each warm-started from the solution at
the previous cost (weaker regularisation moves the optimum only a little).

``precondition=True`` (``logreg``'s named cost lists) solves the same problem in the principal
basis of the features with a diagonal preconditioner (``PrincipalBasis``); ``tol`` then bounds the
gradient in that basis, whose largest entry is not the original one's (the objective is the same).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

MEMORY = 10  # L-BFGS's stored (step, gradient change) pairs


def lam_of(cost: float, n: int) -> float:
    """The L2 weight of the mean-loss objective equivalent to scikit-learn's C (see module doc)."""
    return 1.0 / (cost * n)


def _objective(theta: torch.Tensor, X: torch.Tensor, onehot: torch.Tensor, lam: torch.Tensor,
               grad: bool = True):
    """f and its gradient for every problem. theta: (B, d + 1, K), the last row the intercepts."""
    W, b = theta[:, :-1], theta[:, -1:]
    logits = torch.matmul(X, W) + b  # (B, n, K)
    logp = torch.log_softmax(logits, dim=-1)
    n = logits.shape[1]
    f = -(logp * onehot).sum(dim=(1, 2)) / n + 0.5 * lam * (W * W).sum(dim=(1, 2))
    if not grad:
        return f, None
    residual = (logp.exp() - onehot) / n  # (B, n, K)
    Xt = X.transpose(-1, -2)
    gW = torch.matmul(Xt, residual) + lam[:, None, None] * W
    gb = residual.sum(dim=1, keepdim=True)
    return f, torch.cat([gW, gb], dim=1)


def _objective_of_labels(theta: torch.Tensor, X: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor,
                         grad: bool = True):
    """``_objective`` with the labels as indices (B, n, 1) instead of one-hot rows and the softmax
    and residual computed in place: a third of the passes over the (B, n, K) logits, which on the
    CPU cost as much as the two products with X."""
    W, b = theta[:, :-1], theta[:, -1:]
    n = X.shape[-2]
    logp = torch.log_softmax(torch.matmul(X, W) + b, dim=-1)  # (B, n, K)
    f = -logp.gather(-1, labels).sum(dim=(1, 2)) / n + 0.5 * lam * (W * W).sum(dim=(1, 2))
    if not grad:
        return f, None
    residual = logp.exp_().scatter_add_(-1, labels, torch.full_like(labels, -1, dtype=logp.dtype))
    gW = torch.matmul(X.transpose(-1, -2), residual) / n + lam[:, None, None] * W
    gb = residual.sum(dim=1, keepdim=True) / n
    return f, torch.cat([gW, gb], dim=1)


@dataclass
class FitInfo:
    iterations: np.ndarray  # (B,) L-BFGS iterations per problem
    converged: np.ndarray  # (B,) bool
    grad_max: np.ndarray  # (B,) largest gradient entry at the end


@contextlib.contextmanager
def small_problem_threads(device: torch.device, work: int, limit: int = 2**24):
    """One intra-op thread while a CPU problem of ``work`` multiply-adds per step runs: its many
    tiny operations pay a thread synchronisation each, which on a busy machine costs far more than
    the arithmetic (measured: a 44 x 2304 few-shot path took 70 s with 2 threads, 4 s with one)."""
    small = torch.device(device).type == "cpu" and work < limit
    previous = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(previous)


def fit(X: torch.Tensor, y: torch.Tensor, num_classes: int, lam, *, theta0: torch.Tensor | None = None,
        tol: float = 1e-6, max_iter: int = 500, memory: int = MEMORY,
        precondition: bool = False) -> tuple[torch.Tensor, FitInfo]:
    """Solve B problems. X: (B, n, d) or (n, d) shared; y: (B, n) or (n,) int64; lam: (B,) or a
    float. Returns theta (B, d + 1, K) and per-problem convergence information. ``precondition``:
    solve in the features' principal basis with a diagonal preconditioner (see ``PrincipalBasis``)."""
    with small_problem_threads(X.device, X.numel() * num_classes):
        if not precondition:
            return _fit(X, y, num_classes, lam, theta0, tol, max_iter, memory)[:2]
        basis = PrincipalBasis(X)
        theta, info = basis.fit(y, num_classes, lam, basis.to_basis(theta0), tol, max_iter, memory)
        return basis.from_basis(theta), info


def _eigh(matrix: torch.Tensor):
    """torch.linalg.eigh on one thread: its many small steps synchronise threads, which on a busy
    machine made it 5x slower with two threads than with one (measured: 10 s against 1.9 s at 2,048)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(matrix)
    finally:
        torch.set_num_threads(threads)


class PrincipalBasis:
    """The problem rewritten in the principal basis of the centred features, an exact change of
    variables: logits X W + b = Xc W + (b + mu W) with Xc = X - mu, and W = V U for the orthonormal
    eigenvectors V of Xc' Xc / n, so ||W|| = ||U|| (the L2 penalty is rotation invariant) and the
    new intercept b + mu W stays unpenalised. In that basis the data term's Hessian is close to
    diagonal, c * diag(eigenvalues) for the softmax curvature c, and L-BFGS started from that
    diagonal needs far fewer steps on the badly conditioned features of CNNs (eigenvalues spread
    over many decades) than from a multiple of the identity, which is blind to the spread. With
    fewer rows than dimensions the basis is the row space (from the n x n Gram matrix): a weight
    outside it changes no logit and only adds penalty, so the optimum has none."""

    def __init__(self, X: torch.Tensor):
        if X.dim() == 2:
            X = X.unsqueeze(0)
        n, d = X.shape[-2:]
        self.mean = X.mean(dim=-2, keepdim=True)  # (B, 1, d)
        centred = X - self.mean
        if n >= d:
            eigenvalues, self.vectors = _eigh(centred.transpose(-1, -2) @ centred / n)
        else:
            eigenvalues, left = _eigh(centred @ centred.transpose(-1, -2) / n)
            eigenvalues = eigenvalues.clamp_min(0)
            # left singular vectors to right ones; the Gram matrix's null directions (rank < n after
            # centring) have no right vector and get a zero column: their weight is zero anyway
            null = eigenvalues <= eigenvalues.amax(dim=-1, keepdim=True) * n * torch.finfo(X.dtype).eps
            scale = torch.where(null, torch.zeros_like(eigenvalues), (eigenvalues * n).clamp_min(1e-300).rsqrt())
            self.vectors = centred.transpose(-1, -2) @ left * scale[..., None, :]
            eigenvalues = torch.where(null, torch.zeros_like(eigenvalues), eigenvalues)
        self.eigenvalues = eigenvalues.clamp_min(0)  # (B, r)
        self.features = centred @ self.vectors  # (B, n, r)
        self.last = None  # (theta, lam, f, gradient) at the end of the latest fit

    def to_basis(self, theta: torch.Tensor | None) -> torch.Tensor | None:
        if theta is None:
            return None
        W, b = theta[:, :-1], theta[:, -1:]
        return torch.cat([self.vectors.transpose(-1, -2) @ W, b + self.mean @ W], dim=1)

    def from_basis(self, theta: torch.Tensor) -> torch.Tensor:
        W = self.vectors @ theta[:, :-1]
        return torch.cat([W, theta[:, -1:] - self.mean @ W], dim=1)

    def fit(self, y, num_classes, lam, theta0, tol, max_iter, memory):
        X = self.features
        if y.dim() == 1:
            y = y.unsqueeze(0)
        B = max(X.shape[0], y.shape[0], torch.as_tensor(lam).numel())
        lam_b = torch.as_tensor(lam, dtype=X.dtype, device=X.device).reshape(-1).expand(B)
        curvature = self.softmax_curvature(X, y, num_classes, theta0).expand(B)
        # inverse of the Hessian's diagonal estimate: c * eigenvalue + lam per weight row, c for the intercept
        rows = curvature[:, None] * self.eigenvalues.expand(B, -1) + lam_b[:, None]
        rows = torch.cat([rows, curvature[:, None]], dim=1)
        inverse_hessian = (1.0 / rows)[:, :, None].expand(-1, -1, num_classes).reshape(B, -1)
        start = None
        if theta0 is not None and self.last is not None and self.last[0] is theta0:
            # the previous fit ended at theta0: its objective and gradient need only the new penalty
            _, previous_lam, f, g = self.last
            change = (lam_b - previous_lam.expand(B))
            W = theta0[:, :-1]
            f = f + 0.5 * change * (W * W).sum(dim=(1, 2))
            g = g.reshape(theta0.shape).clone()
            g[:, :-1] += change[:, None, None] * W
            start = f, g
        threads = torch.get_num_threads()

        def objective(*args, **kwargs):
            # the products with X use every thread, the step's many small vector operations one: on
            # a busy machine a thread synchronisation costs more than such an operation (see
            # small_problem_threads), which made the bookkeeping twice as slow as the products
            torch.set_num_threads(threads)
            try:
                return _objective_of_labels(*args, **kwargs)
            finally:
                torch.set_num_threads(1)

        torch.set_num_threads(1)
        try:
            theta, info, f, g = _fit(X, y, num_classes, lam, theta0, tol, max_iter, memory, inverse_hessian, start,
                                     objective)
        finally:
            torch.set_num_threads(threads)
        self.last = theta, lam_b.clone(), f, g
        return theta, info

    @staticmethod
    def softmax_curvature(X, y, num_classes, theta):
        """(B,) mean curvature of the cross-entropy along one logit direction at theta: 1 / K at zero
        weights (uniform probabilities), smaller as the classes separate."""
        if theta is None:
            return torch.full((1,), 1.0 / num_classes, dtype=X.dtype, device=X.device)
        p = torch.softmax(predict(theta, X), dim=-1)
        spread = (1.0 - (p * p).sum(-1)).mean(-1) / max(num_classes - 1, 1)
        return spread.clamp_min(1e-12)


def _fit(X, y, num_classes, lam, theta0, tol, max_iter, memory, inverse_hessian=None, start=None,
         objective=_objective_of_labels):
    """L-BFGS, returning (theta, info, f, g) with the final objective and gradient; with an
    ``inverse_hessian`` diagonal (B, P) as the initial matrix (scaled per step) instead of the
    identity, and the objective on label indices; ``start``: f and g at theta0 when known."""
    if X.dim() == 2:
        X = X.unsqueeze(0)
    if y.dim() == 1:
        y = y.unsqueeze(0)
    B = max(X.shape[0], y.shape[0], torch.as_tensor(lam).numel())
    lam = torch.as_tensor(lam, dtype=X.dtype, device=X.device).reshape(-1).expand(B).contiguous()
    if inverse_hessian is None:
        objective = _objective  # the path of the cost lists without preconditioning, kept as it was
        onehot = torch.nn.functional.one_hot(y, num_classes).to(X.dtype).expand(B, -1, -1)
    else:
        onehot = y[..., None].expand(B, -1, 1)
    d = X.shape[-1]
    theta = (theta0.clone() if theta0 is not None
             else torch.zeros(B, d + 1, num_classes, dtype=X.dtype, device=X.device))
    shape = theta.shape
    P = theta[0].numel()
    S = torch.zeros(B, memory, P, dtype=X.dtype, device=X.device)
    Y = torch.zeros_like(S)
    rho = torch.zeros(B, memory, dtype=X.dtype, device=X.device)  # 0: empty slot
    f, g = objective(theta, X, onehot, lam) if start is None else start
    g = g.reshape(B, P)
    iterations = torch.zeros(B, dtype=torch.int64, device=X.device)
    active = g.abs().amax(dim=1) > tol
    first = True
    gamma = torch.ones(B, dtype=X.dtype, device=X.device)  # initial Hessian scale s'y / y'y per problem
    for it in range(max_iter):
        if not active.any():
            break
        # two-loop recursion over a circular buffer, newest pair first; a problem that skipped a
        # pair has rho = 0 in that slot, which makes the slot a no-op for it
        slots = [(it - 1 - j) % memory for j in range(min(it, memory))]
        q = g.clone()
        alpha = {}
        for j in slots:
            alpha[j] = rho[:, j] * (S[:, j] * q).sum(1)
            q -= alpha[j][:, None] * Y[:, j]
        r = gamma[:, None] * q if inverse_hessian is None else gamma[:, None] * inverse_hessian * q
        for j in reversed(slots):
            beta = rho[:, j] * (Y[:, j] * r).sum(1)
            r += (alpha[j] - beta)[:, None] * S[:, j]
        direction = -r
        slope = (direction * g).sum(1)
        bad = slope >= 0  # not a descent direction (lost curvature): restart from the gradient
        if bad.any():
            direction[bad] = -g[bad]
            slope = torch.where(bad, -(g * g).sum(1), slope)
            rho[bad] = 0
            gamma = torch.where(bad, torch.ones_like(gamma), gamma)
        step = torch.ones(B, dtype=X.dtype, device=X.device)
        if first and inverse_hessian is None:
            step = torch.clamp(1.0 / g.abs().sum(1).clamp_min(1e-300), max=1.0)
            first = False
        pending = active.clone()
        new_theta = theta.clone()
        new_f = f.clone()
        first_g = None
        for attempt in range(40):  # backtracking: halve the step of the problems without sufficient decrease
            trial = theta + (step[:, None] * direction).reshape(shape) * pending[:, None, None]
            # the full step is usually accepted: its gradient is computed with it, not in another pass
            trial_f, trial_g = objective(trial, X, onehot, lam, grad=attempt == 0)
            if attempt == 0:
                first_g = trial_g
            ok = pending & (trial_f <= f + 1e-4 * step * slope)
            new_theta[ok], new_f[ok] = trial[ok], trial_f[ok]
            pending &= ~ok
            if not pending.any():
                break
            step = torch.where(pending, step * 0.5, step)
        reuse = attempt == 0  # every active problem took the first step (the others did not move)
        # no strict decrease, even with tiny steps: at the optimum to rounding (float64 resolution
        # of f), where the gradient may stay a little above tol; stop there rather than creep
        stalled = active & (pending | (new_f >= f))
        moved = active & ~stalled
        new_g = first_g if reuse else objective(new_theta, X, onehot, lam)[1]
        new_g = new_g.reshape(B, P)
        s = (new_theta - theta).reshape(B, P)
        yv = new_g - g
        sy = (s * yv).sum(1)
        keep = moved & (sy > 1e-12 * (yv * yv).sum(1).sqrt() * (s * s).sum(1).sqrt())
        slot = it % memory
        S[:, slot], Y[:, slot] = s, yv
        rho[:, slot] = torch.where(keep, 1.0 / torch.where(keep, sy, torch.ones_like(sy)), torch.zeros_like(sy))
        curved = yv * yv if inverse_hessian is None else yv * inverse_hessian * yv
        gamma = torch.where(keep, sy / curved.sum(1).clamp_min(1e-300), gamma)
        theta = torch.where(moved[:, None, None], new_theta, theta)
        f = torch.where(moved, new_f, f)
        g = torch.where(moved[:, None], new_g, g)
        iterations += active.long()
        active = active & ~stalled & (g.abs().amax(dim=1) > tol)
    grad_max = g.abs().amax(dim=1)
    info = FitInfo(iterations.cpu().numpy(), (grad_max <= tol).cpu().numpy(), grad_max.cpu().numpy())
    return theta, info, f, g


def predict(theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """(B, m, K) logits of query features X (m, d) or (B, m, d) for every problem."""
    return torch.matmul(X, theta[:, :-1]) + theta[:, -1:]


def fit_path(X: torch.Tensor, y: torch.Tensor, num_classes: int, costs, *, tol: float = 1e-6,
             max_iter: int = 500, precondition: bool = False):
    """Yields (cost, theta, info) for the costs in increasing order, each fit warm-started from the
    previous solution; X, y as in ``fit`` (B problems of n rows: one lam per cost and problem).
    ``precondition``: as in ``fit``, the basis computed once for the whole path."""
    n = X.shape[-2]
    theta = None
    if not precondition:
        for cost in sorted(costs):
            theta, info = fit(X, y, num_classes, lam_of(cost, n), theta0=theta, tol=tol, max_iter=max_iter)
            yield cost, theta, info
        return
    with small_problem_threads(X.device, X.numel() * num_classes):
        basis = PrincipalBasis(X)
    for cost in sorted(costs):
        with small_problem_threads(X.device, X.numel() * num_classes):
            theta, info = basis.fit(y, num_classes, lam_of(cost, n), theta, tol, max_iter, MEMORY)
        yield cost, basis.from_basis(theta), info
