"""Time one low-shot sample's SVMs: liblinear one class and cost at a time vs the batched engine.

    python perf/lowshot_sweep.py --dataset voc07 --k 96          # VOC07 size, one sample
    python perf/lowshot_sweep.py --dataset places205 --k 16 --classes 205 --reference-classes 2

One (k, sample) of the low-shot protocol on random features of VOC07 size (n = 5011 trainval,
4952 test, d = 9216): every class x 26 costs trained on the sample and scored on the evaluation
rows, plus 3-fold CV on the sample at every cost (k >= 3). VOC07: k positives and 19k negatives
per class (each class its own rows); Places205: k images per class, one-vs-rest over all classes
(shared rows). The reference path (liblinear in the span of the sample, as the tasks run it) is
timed on --reference-classes classes and scaled, its classes being independent fits. Prints wall
times, the ratio and the largest AP difference at any cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchmark  # noqa: E402,F401  (first: it sets OMP_WAIT_POLICY before torch loads OpenMP)
import numpy as np  # noqa: E402
import torch


from benchmark.datasets.synth_features import voc_like_features  # noqa: E402
from benchmark.metrics import voc_ap  # noqa: E402
from benchmark.svm.batched import lowshot_sweep_torch  # noqa: E402
from benchmark.svm import liblinear  # noqa: E402
from benchmark.svm.liblinear import span_coordinates  # noqa: E402
from benchmark.svm.protocol import REFERENCE_COSTS, FitLog, l2_normalize  # noqa: E402
from tasks.lowshot import protocol as lowshot  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["voc07", "places205"], default="voc07")
    parser.add_argument("--k", type=int, default=96)
    parser.add_argument("--classes", type=int, default=None, help="default: 20 (voc07), 205 (places205)")
    parser.add_argument("--n-eval", type=int, default=4952)
    parser.add_argument("--dim", type=int, default=9216)
    parser.add_argument("--reference-classes", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    classes = args.classes or (20 if args.dataset == "voc07" else 205)
    costs = list(REFERENCE_COSTS)
    if args.dataset == "voc07":
        Xtr, Ltr, Xte, Lte = voc_like_features(5011, args.n_eval, args.dim, classes=classes, seed=0)
        Ltr = np.where(Ltr == -1, 0, Ltr)
        sample = lowshot.sample_voc07(Ltr, args.k, lowshot.sample_rng(0, args.k, 1))
        Y = np.where(sample == 1, 1, np.where(sample == 0, -1, 0))
        X, X_eval = l2_normalize(Xtr), l2_normalize(Xte)
        eval_positive = [Lte[:, c] == 1 for c in range(classes)]
        eval_keep = [Lte[:, c] != -1 for c in range(classes)]
    else:
        rng = np.random.default_rng(0)
        per_class = args.k * 3
        Xtr, _, Xte, _ = voc_like_features(classes * per_class, args.n_eval, args.dim, classes=4, seed=0)
        labels = np.repeat(np.arange(classes), per_class)
        idx = lowshot.sample_places(labels, classes, args.k, lowshot.sample_rng(0, args.k, 1))
        X, X_eval = l2_normalize(Xtr[idx]), l2_normalize(Xte)
        Y = np.where(labels[idx][:, None] == np.arange(classes)[None, :], 1, -1)
        eval_labels = rng.integers(0, classes, args.n_eval)
        eval_positive = [eval_labels == c for c in range(classes)]
        eval_keep = [np.ones(args.n_eval, dtype=bool)] * classes
    print(f"{args.dataset} k={args.k}: {classes} classes, {int((Y != 0).any(1).sum())} sampled rows, "
          f"d={args.dim}, {len(X_eval)} evaluation rows, {len(costs)} costs; {torch.get_num_threads()} threads")

    start = time.perf_counter()
    sweep = lowshot_sweep_torch(X, Y, X_eval, costs, device=torch.device(args.device))
    t_engine = time.perf_counter() - start
    fits = sum(log.fits for log in sweep.logs)
    print(f"engine ({args.device}): {t_engine:.1f} s, {fits} fits, "
          f"{sum(log.not_converged for log in sweep.logs)} not converged")

    timed = min(args.reference_classes, classes)
    start = time.perf_counter()
    worst = 0.0
    for c in range(timed):
        rows = np.flatnonzero(Y[:, c] != 0)
        Z, Z_eval = span_coordinates(X[rows], X_eval[eval_keep[c]])
        log = FitLog()
        scores = liblinear.decision_values_all_costs(Z, Y[rows, c], Z_eval, costs, 0, log)
        liblinear.cv_cost(Z, Y[rows, c], costs, 3, 0, log)
        for j in range(len(costs)):
            ours = voc_ap(eval_positive[c][eval_keep[c]], sweep.scores[eval_keep[c], c, j])
            theirs = voc_ap(eval_positive[c][eval_keep[c]], scores[:, j])
            worst = max(worst, abs(ours - theirs) * 100)
    t_reference = (time.perf_counter() - start) * classes / timed
    print(f"reference (liblinear+span, serial): {t_reference:.1f} s (timed on {timed} classes, scaled to {classes})")
    print(f"engine: x{t_reference / t_engine:.1f} vs the serial reference; max |AP diff| at any cost "
          f"{worst:.4f} pts over the {timed} timed classes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
