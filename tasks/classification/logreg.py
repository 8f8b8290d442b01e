"""`logreg`: multinomial logistic regression on frozen features, full data and few-shot.

Per layer (one unit each). Features are L2-normalised (float64). For every cost C of ``costs`` the
problem is scikit-learn's ``LogisticRegression(C=C)`` (``logreg_solver``: C * sum of the
cross-entropy + 0.5 ||W||^2, intercept not penalised), solved along the whole path in increasing
C with warm starts. C is chosen by top-1 on the validation part only (ties: the smaller C), and
only the chosen model is evaluated on test: no refit, no test-set selection.

Kornblith et al.'s linear protocol (SimCLR's Table 8, appendix B.8.1): ``costs: kornblith`` (the 45
log-spaced regularisation values of the protocol, as scikit-learn C values: see ``KORNBLITH_COSTS``),
``select_by: protocol_metric`` (C chosen on validation by the dataset's metric: mean per-class
accuracy on Aircraft, Pets, Caltech-101, Flowers) and ``refit: true`` (the model refit on train +
validation at the chosen C, then evaluated once on test). ``l2_normalise: false`` fits the raw
features, as Ericsson et al.'s implementation of the protocol does.

Multi-label data (VOC2007 of the transfer protocol): one binary L2 logistic regression per class
(one-vs-rest; present = positive, absent or difficult-only = negative, as the VOC07 SVMs), solved
as 2-class multinomial problems (see ``BINARY_C_FACTOR``), one C for every class chosen on
validation by the VOC2007 11-point mAP (``benchmark.metrics.eleven_point_map``), refit on
train + val with ``refit: true``, scored on test by the 11-point mAP (difficult-only images left
out of that class's ranking).

``few_shot: [n, ...]``: n images per class drawn from the training part (``draws`` seeded draws,
disjoint from validation and test by construction); the draws of one n are solved together as one
batch, C chosen per draw on the full validation part; rows per draw and mean/std/min/max/ci95.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from benchmark.plugin_api import LoadedModel, RunContext, Task
from benchmark.metrics import eleven_point_map, mean_per_class_accuracy
from benchmark.options import Bool, Choice, Float, Int, ListOf, OneOf, declare
from benchmark.row_schema import OUTCOMES, STEP_COLUMN
from benchmark.significance import MAP11, Outcomes, rank_scores

from .common import (COMPUTE_DEVICE, DATA_OPTIONS, DRAWS, MEAN_PER_CLASS, ClassificationTask, draw_rows,
                     few_shot_draw, headline_metric, load_part, mean_per_class_row, transfer_column)

if TYPE_CHECKING:
    import torch

    from benchmark.models import Architecture

NAME = "logreg"
COSTS = [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]
SELECTION = "C by top-1 on val"
# Kornblith et al. 2019 / SimCLR appendix B.8.1: "45 logarithmically spaced values between 1e-6 and
# 1e5" of the L2 regulariser. The range is of the penalty lam on the SUM of the cross-entropies, i.e.
# 1 / C in scikit-learn's terms (C * sum CE + 0.5 ||W||^2 = C * (sum CE + 0.5 lam ||W||^2) with
# lam = 1 / C), NOT of C: Ericsson et al.'s implementation of the protocol
# (github.com/linusericsson/ssl-transfer, linear.py, LinearTester) sweeps
# wd_range = torch.logspace(-6, 5, 45) and fits LogisticRegression(C=1. / wd). So C runs over
# 1e-5 .. 1e6 (docs/tasks/transfer.md). logreg_solver's mean-loss weight is then lam_of(C, n) = wd / n.
KORNBLITH_WEIGHT_DECAYS = [float(v) for v in np.logspace(-6, 5, 45)]
KORNBLITH_COSTS = [1.0 / wd for wd in KORNBLITH_WEIGHT_DECAYS]
COST_LISTS = {"kornblith": KORNBLITH_COSTS}
# Each class of multi-label data is a 2-class MULTINOMIAL problem at C (logits z0, z1, penalty
# 0.5 (||w0||^2 + ||w1||^2)), as Ericsson et al.'s implementation fits it: scikit-learn's
# LogisticRegression(multi_class='multinomial', C) on binary labels fitted the 2-class softmax (and
# kept w1) in the versions of the time (sklearn/linear_model/logistic.py, _logistic_regression_path:
# "if classes.size == 2: multi_w0 = multi_w0[1][np.newaxis, :]"). At the optimum w0 = -w1, so it is
# the binary logistic regression of w = w1 - w0 with penalty 0.25 ||w||^2: scikit-learn's binary
# LogisticRegression(C=2 C) (today's behaviour for binary labels), with decision function z1 - z0.
BINARY_C_FACTOR = 2.0  # the binary LogisticRegression's C equal to the 2-class multinomial problem at C


def _normalise(x: np.ndarray, device) -> torch.Tensor:
    import torch

    t = torch.as_tensor(x, dtype=torch.float64, device=device)
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _topk(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(B,) percentage of rows whose label is among the k highest logits (ties: lower class first)."""
    import torch

    k = min(k, logits.shape[-1])
    ranked = torch.argsort(logits, dim=-1, descending=True, stable=True)[..., :k]
    return 100.0 * (ranked == labels[None, :, None]).any(-1).double().mean(-1)


class LogReg(ClassificationTask, Task):
    name = NAME
    multi_label = True  # VOC2007: one binary classifier per class (run_multi_label)
    trains = False  # convex problems solved to a tolerance: fixed features give fixed answers
    options = declare({
        **DATA_OPTIONS,
        # numbers, or a named list: kornblith (the transfer protocol's 45 values, see KORNBLITH_COSTS)
        "costs": OneOf(Choice(*COST_LISTS), ListOf(Float(min=0, min_open=True), min_length=1, unique=True),
                       default=COSTS),
        # C chosen on val by top-1, or by the dataset's protocol metric (mean per-class accuracy on
        # Aircraft, Pets, Caltech-101, Flowers; top-1 elsewhere)
        "select_by": Choice("top1", "protocol_metric", default="top1", omit_at_default=True),
        # full data: refit on train + val at the chosen C before the one test evaluation (Kornblith et al.)
        "refit": Bool(False, omit_at_default=True),
        "l2_normalise": Bool(True, omit_at_default=True),  # features to unit length before the fits
        "full_data": Bool(True),
        "few_shot": ListOf(Int(min=1), [1, 2, 5, 10], unique=True),
        "draws": DRAWS,
        "tol": Float(1e-6, min=0, min_open=True),  # on the largest gradient entry of the mean-loss objective
        "max_iter": Int(1000, min=1),
        "logreg_device": COMPUTE_DEVICE,
    })

    def units(self, arch: Architecture) -> list[str]:
        return self.layers(arch)

    def cost_list_text(self) -> str:
        """The rows' ``cost_list``: the values, or a named list's name and range (45 values read badly)."""
        name, values = self.cost_list()
        if name == "custom":
            return ",".join(f"{v:g}" for v in sorted(values))
        return f"{name}: {len(values)} log-spaced C, {min(values):g} .. {max(values):g}"

    def cost_list(self) -> tuple[str, list[float]]:
        """(name of the cost list: 'kornblith' or 'custom', its C values)."""
        costs = self.config.costs
        if isinstance(costs, str):
            return costs, list(COST_LISTS[costs])
        return "custom", [float(v) for v in costs]

    def preconditioned(self) -> bool:
        """The principal-basis solve (logreg_solver.PrincipalBasis) for the named lists, whose paths
        run into weak regularisation where plain L-BFGS crawls; the custom lists keep the plain
        solve, whose stored results it reproduces bit for bit."""
        return self.cost_list()[0] != "custom"

    def solve(self, X, y, num_classes, X_val, y_val, score=None):
        """Along the cost path: (costs, val top-1 (B, costs), thetas per cost, fits not converged,
        val ``score`` (B, costs) when a scoring function of the val logits is given)."""
        import torch

        from .logreg_solver import fit_path, predict

        costs, val, scored, thetas, not_converged = [], [], [], [], 0
        for cost, theta, info in fit_path(X, y, num_classes, self.cost_list()[1], tol=self.config.tol,
                                          max_iter=self.config.max_iter, precondition=self.preconditioned()):
            costs.append(cost)
            logits = predict(theta, X_val)
            val.append(_topk(logits, y_val, 1))
            if score is not None:
                scored.append(score(logits))
            thetas.append(theta)
            not_converged += int((~info.converged).sum())
        return costs, torch.stack(val, 1), thetas, not_converged, (torch.stack(scored, 1) if scored else None)

    def run(self, ctx: RunContext, model: LoadedModel, unit: str) -> list[dict]:
        import torch

        from benchmark.provenance import resolve_device

        from .logreg_solver import predict

        layer, c = unit, self.config
        data = self.data(ctx)
        features = self.split_features(ctx, model, data)
        device = resolve_device(c.logreg_device)

        def prepare(x):
            return _normalise(x, device) if c.l2_normalise else torch.as_tensor(x, dtype=torch.float64, device=device)

        if data.protocol.get("multi_label"):
            return self.run_multi_label(data, features, model, layer, prepare, device)
        X_train = prepare(load_part(features, data.train, layer))
        X_val = prepare(load_part(features, data.val, layer))
        y_train = torch.as_tensor(data.train.labels, device=device)
        y_val = torch.as_tensor(data.val.labels, device=device)
        K = data.num_classes
        list_name = self.cost_list()[0]
        headline = headline_metric(data)
        select = headline if c.select_by == "protocol_metric" else "top1"
        selection = SELECTION if select == "top1" else f"C by {select} on val"
        extra = {}
        if list_name != "custom":
            extra["cost_preset"] = list_name
        if select != "top1":
            extra["select_by"] = select
        if not c.l2_normalise:
            extra["l2_normalise"] = False
        common = {**self.common_row(model, data, layer), "feature_dim": int(X_train.shape[1]),
                  "cost_list": self.cost_list_text(), "cost_selection": selection,
                  "selection": f"C on val ({data.val.description}); test evaluated once, on the chosen C",
                  "solver": "torch-lbfgs", "logreg_device": str(device), **extra}
        rows = []
        # top-1 and top-5 count images: one is this many points (the check's allowance on exact rows)
        test_step, val_step = 100.0 / len(data.test), 100.0 / len(data.val)

        def test_scores(theta):
            X_test = prepare(load_part(features, data.test, layer))  # read only after selection
            y_test = torch.as_tensor(data.test.labels, device=device)
            logits = predict(theta, X_test)
            # per image: the significance test's input
            correct = (logits.argmax(dim=-1) == y_test).double().cpu().numpy()
            return _topk(logits, y_test, 1), _topk(logits, y_test, 5), correct

        if c.full_data:
            score = None
            if select == MEAN_PER_CLASS:
                y_val_np = data.val.labels

                def score(logits):  # (B,) mean per-class accuracy of each problem on val, percent
                    return torch.as_tensor([mean_per_class_accuracy(y_val_np, p) * 100.0
                                            for p in logits.argmax(-1).cpu().numpy()], dtype=torch.float64)

            costs, val, thetas, not_converged, val_score = self.solve(X_train, y_train, K, X_val, y_val, score)
            chosen_on = val if val_score is None else val_score.to(val.device)
            best = int(torch.argmax(chosen_on[0]))  # first maximum: the smallest C among ties
            theta = thetas[best]
            base = {**common, "cost": costs[best], "val_top1": float(val[0, best]), "not_converged": not_converged,
                    "fits": len(costs), STEP_COLUMN: test_step}
            if val_score is not None:
                base[f"val_{select}"] = float(val_score[0, best])
            if c.refit:
                theta, base = self.refit(X_train, y_train, X_val, y_val, K, costs[best], theta, base, data)
            top1, top5, correct = test_scores(theta)
            stem = f"{NAME} {layer}"
            rows += [{**base, "metric": "top1", "value": float(top1[0]),
                      "transfer_column": transfer_column(data, stem, "top1"),
                      OUTCOMES: Outcomes("top1", correct.reshape(-1))},
                     {**base, "metric": "top5", "value": float(top5[0])}]
            if headline == MEAN_PER_CLASS:
                rows.append(mean_per_class_row(base, correct, data.test.labels,
                                               transfer_column(data, stem, MEAN_PER_CLASS)))
            rows += [{**common, "metric": "val_top1", "evaluation": f"C={cost:g}", "cost": cost,
                      "value": float(val[0, i]), STEP_COLUMN: val_step} for i, cost in enumerate(costs)]
            if val_score is not None:
                rows += [{**common, "metric": f"val_{select}", "evaluation": f"C={cost:g}", "cost": cost,
                          "value": float(val_score[0, i])} for i, cost in enumerate(costs)]
        for shots in c.few_shot:
            draws = [few_shot_draw(data.train.labels, shots, ctx.seed, d) for d in range(c.draws)]
            if draws[0] is None:
                rows.append({**common, "k": shots, "metric": "skipped", "value": float("nan"),
                             "note": f"a class of {data.train.description} has fewer than {shots} images"})
                continue
            index = torch.as_tensor(np.stack(draws), device=device)
            costs, val, thetas, not_converged, _ = self.solve(X_train[index], y_train[index], K, X_val, y_val)
            best = torch.argmax(val, dim=1)  # per draw
            chosen = torch.stack([thetas[int(b)][d] for d, b in enumerate(best)])
            top1, top5, _ = test_scores(chosen)
            # few-shot: C by top-1 on val per draw, never refit, whatever select_by and refit say
            few = {k: v for k, v in common.items() if k != "select_by"}
            base = {**few, "cost_selection": SELECTION, "fits": len(costs) * len(draws), "not_converged": not_converged,
                    STEP_COLUMN: test_step,
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

    def refit(self, X_train, y_train, X_val, y_val, K, cost, theta, base, data):
        """Kornblith et al.: the model refit on train + val at the chosen C (scikit-learn's C on the
        n_train + n_val images: the same C, a mean-loss weight lam_of(C, n_train + n_val)), warm
        started from the train-only solution. Returns (theta, the rows' base with the refit recorded)."""
        import torch

        from .logreg_solver import fit, lam_of

        c = self.config
        X = torch.cat([X_train, X_val])
        y = torch.cat([y_train, y_val])
        theta, info = fit(X, y, K, lam_of(cost, len(y)), theta0=theta, tol=c.tol, max_iter=c.max_iter,
                          precondition=self.preconditioned())
        return theta, {**base, "refit": "train+val", "n_refit": int(len(y)),
                       "not_converged": base["not_converged"] + int((~info.converged).sum()),
                       "fits": base["fits"] + 1,
                       "selection": f"C on val ({data.val.description}); refit on train + val at the chosen C; "
                                    f"test evaluated once, after the refit"}

    def run_multi_label(self, data, features, model, layer, prepare, device) -> list[dict]:
        """One binary logistic regression per class, batched (the classes as problems on shared
        features); one C for all classes, chosen on val by 11-point mAP; optionally refit on train + val."""
        import torch

        from .logreg_solver import fit, fit_path, lam_of, predict

        c = self.config
        skipped = [{**self.common_row(model, data, layer), "k": shots, "metric": "skipped", "value": float("nan"),
                    "note": "few-shot draws are per class of single-label data; not defined on multi-label"}
                   for shots in c.few_shot]
        if not c.full_data:
            return skipped
        X_train = prepare(load_part(features, data.train, layer))
        X_val = prepare(load_part(features, data.val, layer))
        # (classes, n) binary targets: present -> 1; absent and difficult-only -> 0
        targets = [torch.as_tensor((part.labels == 1).T.astype(np.int64), device=device)
                   for part in (data.train, data.val)]
        list_name, cost_values = self.cost_list()

        def decision(theta, X):  # (n, classes): the binary decision function z1 - z0 per class
            logits = predict(theta, X)
            return (logits[..., 1] - logits[..., 0]).T.cpu().numpy()

        costs, val_map, thetas, not_converged = [], [], [], 0
        for cost, theta, info in fit_path(X_train, targets[0], 2, cost_values, tol=c.tol, max_iter=c.max_iter,
                                          precondition=self.preconditioned()):
            costs.append(cost)
            val_map.append(100.0 * eleven_point_map(data.val.labels, decision(theta, X_val)))
            thetas.append(theta)
            not_converged += int((~info.converged).sum())
        best = int(np.nanargmax(val_map))  # first maximum: the smallest C among ties
        extra = {"cost_preset": list_name} if list_name != "custom" else {}
        if not c.l2_normalise:
            extra["l2_normalise"] = False
        common = {**self.common_row(model, data, layer), "feature_dim": int(X_train.shape[1]),
                  "cost_list": self.cost_list_text(),
                  "cost_selection": f"one C for all classes by {MAP11} on val", "solver": "torch-lbfgs",
                  "classifier": "one-vs-rest binary logistic regression", "logreg_device": str(device), **extra}
        base = {**common, "cost": costs[best], f"val_{MAP11}": val_map[best], "fits": len(costs) * len(targets[0]),
                "not_converged": not_converged,
                "selection": f"C on val ({data.val.description}); test evaluated once, on the chosen C"}
        theta = thetas[best]
        if c.refit:
            X = torch.cat([X_train, X_val])
            y = torch.cat(targets, dim=1)
            theta, info = fit(X, y, 2, lam_of(costs[best], y.shape[1]), theta0=theta, tol=c.tol,
                              max_iter=c.max_iter, precondition=self.preconditioned())
            base = {**base, "refit": "train+val", "n_refit": int(y.shape[1]), "fits": base["fits"] + len(y),
                    "not_converged": not_converged + int((~info.converged).sum()),
                    "selection": f"C on val ({data.val.description}); refit on train + val at the chosen C; "
                                 f"test evaluated once, after the refit"}
        scores = decision(theta, prepare(load_part(features, data.test, layer)))  # read only after selection
        # per-image outcomes for the significance marks: each class's scores as percentile ranks (same mAP)
        outcomes = Outcomes(MAP11, rank_scores(scores), np.asarray(data.test.labels))
        rows = [{**base, "metric": MAP11, "value": 100.0 * eleven_point_map(data.test.labels, scores),
                 "transfer_column": f"{NAME} {layer} protocol metric", OUTCOMES: outcomes}]
        for k, name in enumerate(data.class_names):
            ap = eleven_point_map(data.test.labels[:, [k]], scores[:, [k]])
            rows.append({**base, "metric": "ap11", "class": name, "value": 100.0 * ap})
        rows += [{**common, "metric": f"val_{MAP11}", "evaluation": f"C={cost:g}", "cost": cost, "value": v}
                 for cost, v in zip(costs, val_map)]
        return rows + skipped
