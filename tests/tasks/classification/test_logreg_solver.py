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
