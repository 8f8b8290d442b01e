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
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch


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
        tol: float = 1e-6, max_iter: int = 500, memory: int = 10) -> tuple[torch.Tensor, FitInfo]:
    """Solve B problems. X: (B, n, d) or (n, d) shared; y: (B, n) or (n,) int64; lam: (B,) or a
    float. Returns theta (B, d + 1, K) and per-problem convergence information."""
    with small_problem_threads(X.device, X.numel() * num_classes):
        return _fit(X, y, num_classes, lam, theta0, tol, max_iter, memory)


def _fit(X, y, num_classes, lam, theta0, tol, max_iter, memory):
    if X.dim() == 2:
        X = X.unsqueeze(0)
    if y.dim() == 1:
        y = y.unsqueeze(0)
    B = max(X.shape[0], y.shape[0], torch.as_tensor(lam).numel())
    lam = torch.as_tensor(lam, dtype=X.dtype, device=X.device).reshape(-1).expand(B).contiguous()
    onehot = torch.nn.functional.one_hot(y, num_classes).to(X.dtype).expand(B, -1, -1)
    d = X.shape[-1]
    theta = (theta0.clone() if theta0 is not None
             else torch.zeros(B, d + 1, num_classes, dtype=X.dtype, device=X.device))
    shape = theta.shape
    P = theta[0].numel()
    S = torch.zeros(B, memory, P, dtype=X.dtype, device=X.device)
    Y = torch.zeros_like(S)
    rho = torch.zeros(B, memory, dtype=X.dtype, device=X.device)  # 0: empty slot
    f, g = _objective(theta, X, onehot, lam)
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
        r = gamma[:, None] * q
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
        if first:
            step = torch.clamp(1.0 / g.abs().sum(1).clamp_min(1e-300), max=1.0)
            first = False
        pending = active.clone()
        new_theta = theta.clone()
        new_f = f.clone()
        first_g = None
        for attempt in range(40):  # backtracking: halve the step of the problems without sufficient decrease
            trial = theta + (step[:, None] * direction).reshape(shape) * pending[:, None, None]
            # the full step is usually accepted: its gradient is computed with it, not in another pass
            trial_f, trial_g = _objective(trial, X, onehot, lam, grad=attempt == 0)
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
        new_g = first_g if reuse else _objective(new_theta, X, onehot, lam)[1]
        new_g = new_g.reshape(B, P)
        s = (new_theta - theta).reshape(B, P)
        yv = new_g - g
        sy = (s * yv).sum(1)
        keep = moved & (sy > 1e-12 * (yv * yv).sum(1).sqrt() * (s * s).sum(1).sqrt())
        slot = it % memory
        S[:, slot], Y[:, slot] = s, yv
        rho[:, slot] = torch.where(keep, 1.0 / torch.where(keep, sy, torch.ones_like(sy)), torch.zeros_like(sy))
        gamma = torch.where(keep, sy / (yv * yv).sum(1).clamp_min(1e-300), gamma)
        theta = torch.where(moved[:, None, None], new_theta, theta)
        f = torch.where(moved, new_f, f)
        g = torch.where(moved[:, None], new_g, g)
        iterations += active.long()
        active = active & ~stalled & (g.abs().amax(dim=1) > tol)
    grad_max = g.abs().amax(dim=1)
    return theta, FitInfo(iterations.cpu().numpy(), (grad_max <= tol).cpu().numpy(), grad_max.cpu().numpy())


def predict(theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """(B, m, K) logits of query features X (m, d) or (B, m, d) for every problem."""
    return torch.matmul(X, theta[:, :-1]) + theta[:, -1:]


def fit_path(X: torch.Tensor, y: torch.Tensor, num_classes: int, costs, *, tol: float = 1e-6,
             max_iter: int = 500):
    """Yields (cost, theta, info) for the costs in increasing order, each fit warm-started from the
    previous solution; X, y as in ``fit`` (B problems of n rows: one lam per cost and problem)."""
    n = X.shape[-2]
    theta = None
    for cost in sorted(costs):
        theta, info = fit(X, y, num_classes, lam_of(cost, n), theta0=theta, tol=tol, max_iter=max_iter)
        yield cost, theta, info
