"""`logreg`: multinomial logistic regression on frozen features, full data and few-shot.

Per layer (one unit each). Features are L2-normalised (float64). For every cost C of ``costs`` the
problem is scikit-learn's ``LogisticRegression(C=C)`` (``logreg_solver``: C * sum of the
cross-entropy + 0.5 ||W||^2, intercept not penalised), solved along the whole path in increasing
C with warm starts. C is chosen by top-1 on the validation part only (ties: the smaller C), and
only the chosen model is evaluated on test: no refit, no test-set selection.

``few_shot: [n, ...]``: n images per class drawn from the training part (``draws`` seeded draws,
disjoint from validation and test by construction); the draws of one n are solved together as one
batch, C chosen per draw on the full validation part; rows per draw and mean/std/min/max/ci95.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmark.engine import LoadedModel, RunContext, Task
from benchmark.models import Architecture
from benchmark.options import Bool, Float, Int, ListOf, declare
from benchmark.provenance import resolve_device
from benchmark.row_schema import OUTCOMES, STEP_COLUMN
from benchmark.significance import Outcomes

from .common import (COMPUTE_DEVICE, DATA_OPTIONS, DRAWS, ClassificationTask, draw_rows,
                     few_shot_draw, load_part)
from .logreg_solver import fit_path, predict

NAME = "logreg"
COSTS = [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]
SELECTION = "C by top-1 on val"


def _normalise(x: np.ndarray, device) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64, device=device)
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _topk(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(B,) percentage of rows whose label is among the k highest logits (ties: lower class first)."""
    k = min(k, logits.shape[-1])
    ranked = torch.argsort(logits, dim=-1, descending=True, stable=True)[..., :k]
    return 100.0 * (ranked == labels[None, :, None]).any(-1).double().mean(-1)


class LogReg(ClassificationTask, Task):
    name = NAME
    trains = False  # convex problems solved to a tolerance: fixed features give fixed answers
    options = declare({
        **DATA_OPTIONS,
        "costs": ListOf(Float(min=0, min_open=True), COSTS, min_length=1, unique=True),
        "full_data": Bool(True),
        "few_shot": ListOf(Int(min=1), [1, 2, 5, 10], unique=True),
        "draws": DRAWS,
        "tol": Float(1e-6, min=0, min_open=True),  # on the largest gradient entry of the mean-loss objective
        "max_iter": Int(1000, min=1),
        "logreg_device": COMPUTE_DEVICE,
    })

    def units(self, arch: Architecture) -> list[str]:
        return self.layers(arch)

    def solve(self, X, y, num_classes, X_val, y_val):
        """Along the cost path: (costs, val top-1 (B, costs), thetas per cost, fits not converged)."""
        costs, val, thetas, not_converged = [], [], [], 0
        for cost, theta, info in fit_path(X, y, num_classes, self.config.costs, tol=self.config.tol,
                                          max_iter=self.config.max_iter):
            costs.append(cost)
            val.append(_topk(predict(theta, X_val), y_val, 1))
            thetas.append(theta)
            not_converged += int((~info.converged).sum())
        return costs, torch.stack(val, 1), thetas, not_converged

    def run(self, ctx: RunContext, model: LoadedModel, unit: str) -> list[dict]:
        layer, c = unit, self.config
        data = self.data(ctx)
        features = self.split_features(ctx, model, data)
        device = resolve_device(c.logreg_device)
        X_train = _normalise(load_part(features, data.train, layer), device)
        X_val = _normalise(load_part(features, data.val, layer), device)
        y_train = torch.as_tensor(data.train.labels, device=device)
        y_val = torch.as_tensor(data.val.labels, device=device)
        K = data.num_classes
        common = {**self.common_row(model, data, layer), "feature_dim": int(X_train.shape[1]),
                  "cost_list": ",".join(f"{v:g}" for v in sorted(c.costs)), "cost_selection": SELECTION,
                  "selection": f"C on val ({data.val.description}); test evaluated once, on the chosen C",
                  "solver": "torch-lbfgs", "logreg_device": str(device)}
        rows = []
        # top-1 and top-5 count images: one is this many points (the check's allowance on exact rows)
        test_step, val_step = 100.0 / len(data.test), 100.0 / len(data.val)

        def test_scores(theta):
            X_test = _normalise(load_part(features, data.test, layer), device)  # read only after selection
            y_test = torch.as_tensor(data.test.labels, device=device)
            logits = predict(theta, X_test)
            # per image: the significance test's input
            correct = (logits.argmax(dim=-1) == y_test).double().cpu().numpy()
            return _topk(logits, y_test, 1), _topk(logits, y_test, 5), correct

        if c.full_data:
            costs, val, thetas, not_converged = self.solve(X_train, y_train, K, X_val, y_val)
            best = int(torch.argmax(val[0]))  # first maximum: the smallest C among ties
            top1, top5, correct = test_scores(thetas[best])
            base = {**common, "cost": costs[best], "val_top1": float(val[0, best]), "not_converged": not_converged,
                    "fits": len(costs), STEP_COLUMN: test_step}
            rows += [{**base, "metric": "top1", "value": float(top1[0]), "transfer_column": f"{NAME} {layer} top1",
                      OUTCOMES: Outcomes("top1", correct.reshape(-1))},
                     {**base, "metric": "top5", "value": float(top5[0])}]
            rows += [{**common, "metric": "val_top1", "evaluation": f"C={cost:g}", "cost": cost,
                      "value": float(val[0, i]), STEP_COLUMN: val_step} for i, cost in enumerate(costs)]
        for shots in c.few_shot:
            draws = [few_shot_draw(data.train.labels, shots, ctx.seed, d) for d in range(c.draws)]
            if draws[0] is None:
                rows.append({**common, "k": shots, "metric": "skipped", "value": float("nan"),
                             "note": f"a class of {data.train.description} has fewer than {shots} images"})
                continue
            index = torch.as_tensor(np.stack(draws), device=device)
            costs, val, thetas, not_converged = self.solve(X_train[index], y_train[index], K, X_val, y_val)
            best = torch.argmax(val, dim=1)  # per draw
            chosen = torch.stack([thetas[int(b)][d] for d, b in enumerate(best)])
            top1, top5, _ = test_scores(chosen)
            base = {**common, "fits": len(costs) * len(draws), "not_converged": not_converged, STEP_COLUMN: test_step,
                    "training_images": f"{shots} per class from {data.train.description}, seed {ctx.seed}"}
            for metric, values in (("top1", top1), ("top5", top5)):
                part = draw_rows(base, shots, metric, values.tolist())
                for d, row in enumerate(part[:len(draws)]):
                    row["cost"], row["val_top1"] = costs[int(best[d])], float(val[d, best[d]])
                for row in part:
                    if row["metric"] == "top1_mean":
                        row["transfer_column"] = f"{NAME} {layer} {shots}-shot top1"
                rows += part
        return rows
