"""tasks.classification.logreg_solver against scikit-learn's LogisticRegression at the same C
(lbfgs run to a tight tolerance as the oracle): coefficients, intercepts and probabilities within 1e-4."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from tasks.classification.logreg_solver import fit, fit_path, lam_of, predict

pytestmark = pytest.mark.usefixtures("single_thread")


def problem(seed, n=90, d=12, k=4):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    X = centres[y] + 1.5 * rng.normal(size=(n, d))
    return X, y


def oracle(X, y, C):
    model = LogisticRegression(C=C, tol=1e-12, max_iter=20000).fit(X, y)
    return model


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_matches_sklearn_at_the_same_C(C):
    X, y = problem(0)
    theta, info = fit(torch.tensor(X), torch.tensor(y), 4, lam_of(C, len(y)), tol=1e-9, max_iter=3000)
    assert (info.grad_max < 1e-7).all()  # where the line search reaches float64 resolution of f
    ref = oracle(X, y, C)
    np.testing.assert_allclose(theta[0, :-1].numpy(), ref.coef_.T, atol=1e-4)
    np.testing.assert_allclose(theta[0, -1].numpy(), ref.intercept_, atol=1e-4)
    probs = torch.softmax(predict(theta, torch.tensor(X))[0], -1).numpy()
    np.testing.assert_allclose(probs, ref.predict_proba(X), atol=1e-4)


def test_batched_problems_and_warm_started_path_equal_separate_fits():
    Xs, ys = zip(*[problem(s, n=60) for s in (1, 2, 3)])
    X, y = torch.tensor(np.stack(Xs)), torch.tensor(np.stack(ys))
    costs = [0.1, 10.0, 1.0]  # visited in increasing order
    seen = []
    for C, theta, info in fit_path(X, y, 4, costs, tol=1e-9, max_iter=3000):
        seen.append(C)
        assert (info.grad_max < 1e-7).all()
        for b in range(3):
            ref = oracle(Xs[b], ys[b], C)
            np.testing.assert_allclose(theta[b, :-1].numpy(), ref.coef_.T, atol=1e-4)
            np.testing.assert_allclose(theta[b, -1].numpy(), ref.intercept_, atol=1e-4)
    assert seen == [0.1, 1.0, 10.0]


def test_lam_mapping_by_hand():
    # sklearn: C * sum(loss) + 0.5 ||w||^2  ==  C n * (mean loss + ||w||^2 / (2 C n))
    assert lam_of(2.0, 50) == pytest.approx(1 / 100)


def badly_conditioned_problem(seed, n, d, k=4):
    """Raw non-negative features whose scales run over four decades, like a CNN's: the spectrum
    that the principal-basis preconditioner is for."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    X = np.maximum(centres[y] + 1.5 * rng.normal(size=(n, d)), 0) * np.logspace(0, -4, d)
    return X, y


@pytest.mark.parametrize("n", [80, 20])  # more rows than dimensions (covariance), fewer (Gram matrix)
def test_preconditioned_path_reaches_sklearns_optimum_on_badly_conditioned_features(n):
    X, y = badly_conditioned_problem(4, n, 30)
    costs = [1e-2, 1.0, 1e2]
    for C, theta, info in fit_path(torch.tensor(X), torch.tensor(y), 4, costs, tol=1e-10, max_iter=5000,
                                   precondition=True):
        ref = LogisticRegression(C=C, tol=1e-14, max_iter=100000).fit(X, y)
        scale = max(1.0, np.abs(ref.coef_).max(), np.abs(ref.intercept_).max())
        np.testing.assert_allclose(theta[0, :-1].numpy(), ref.coef_.T, atol=1e-4 * scale)
        np.testing.assert_allclose(theta[0, -1].numpy(), ref.intercept_, atol=1e-4 * scale)
        probs = torch.softmax(predict(theta, torch.tensor(X))[0], -1).numpy()
        np.testing.assert_allclose(probs, ref.predict_proba(X), atol=1e-5)


def test_preconditioned_batched_fit_from_a_warm_start_equals_sklearn():
    Xs, ys = zip(*[badly_conditioned_problem(s, 40, 60) for s in (5, 6)])  # fewer rows than dimensions
    X, y = torch.tensor(np.stack(Xs)), torch.tensor(np.stack(ys))
    start, _ = fit(X, y, 4, lam_of(0.1, 40), tol=1e-6)
    theta, info = fit(X, y, 4, lam_of(10.0, 40), theta0=start, tol=1e-10, max_iter=5000, precondition=True)
    for b in range(2):
        ref = LogisticRegression(C=10.0, tol=1e-14, max_iter=100000).fit(Xs[b], ys[b])
        probs = torch.softmax(predict(theta[b:b + 1], X[b])[0], -1).numpy()
        np.testing.assert_allclose(probs, ref.predict_proba(Xs[b]), atol=1e-5)
