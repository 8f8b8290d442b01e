"""Time the WHOLE low-shot protocol of one model: the batched engine against the liblinear loop.

    python perf/lowshot_protocol.py voc07                  # k = 1..96, 5 samples, 2 layers: measured
    python perf/lowshot_protocol.py places205              # measured parts and an estimate

VOC07 (what ``lowshot_voc07`` runs per layer, through the same solver call): features of real size
(5,011 trainval / 4,952 test rows, d = 9,216, 20 classes), every k of {1, 2, 4, ..., 96}, 5
samples per k, 26 costs, test AP at every cost (the test-selected row) and 3-fold CV on every
sample (the validation row), for res4 and res5 (two independent feature sets). Every part is
measured. Costs for k < 3 come from the full-data CV sweep, which the suite's ``voc07_svm`` task
already ran: timed here once per layer and printed apart. The samples of a k are solved side by
side, one per usable core, the samples left over split into class groups (``--sample-workers
1``: one after the other); the suite passes a layer's samples of every k in one call.

The reference (liblinear one class and cost at a time, in the span coordinates, as
``solver: liblinear`` runs it) is timed on --reference-classes classes of one sample per k and
scaled to 20 classes x 5 samples x layers; its classes and samples are independent fits of the
same size, so the scaling is linear. The largest test-AP difference between the two at any cost
is printed for the timed classes, where liblinear converged. ``--repeat N``: N rounds per k of the
engine's samples right before the reference's classes, each round's ratio printed with their
median (this machine's speed drifts by 20-30 % over minutes, for both solvers alike).

Places205 (205 classes, k images each, one-vs-rest, 20,500 val rows): one sample per k is timed
on all classes for k <= --full-up-to; above it on --engine-classes classes and scaled linearly
in classes (every CG step's product is linear in the problems solved), except the sample's
kernels, built once for all classes and timed apart. liblinear is timed on
one class and --reference-costs costs and scaled to 26 costs x (1 + 3 folds x 2/3 of the rows);
with --reference-costs 26 the class's whole work (its 26 fits and its 3-fold CV) is measured and
only scaled to 205 classes (one-vs-rest problems on the same rows: the same work per class).
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


from benchmark.cpus import usable_cpus  # noqa: E402
from benchmark.datasets.synth_features import voc_like_features  # noqa: E402
from benchmark.metrics import voc_ap  # noqa: E402
from benchmark.svm import liblinear  # noqa: E402
from benchmark.svm.batched import cv_costs_torch, lowshot_sweep_torch, shared_layout  # noqa: E402
from benchmark.svm.protocol import REFERENCE_COSTS, FitLog, l2_normalize, to_binary  # noqa: E402
from benchmark.svm.solvers import TorchSolver  # noqa: E402
from tasks.lowshot import protocol as lowshot  # noqa: E402

K_VALUES = (1, 2, 4, 8, 16, 32, 64, 96)
FOLDS = 3


def clock(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def voc07(args) -> int:
    costs = list(REFERENCE_COSTS)
    ks = [k for k in args.k if k in K_VALUES] or list(args.k)
    solver = TorchSolver(torch.device(args.device), workers=args.sample_workers)
    engine_total = fallback_total = 0.0
    per_k_engine = {k: 0.0 for k in ks}
    reference_per_layer = None
    worst_ap = 0.0
    reference_not_converged = 0
    repeated = {}  # k -> (median engine time per sample, median ratio) over --repeat rounds
    for layer in range(args.layers):
        Xtr, Ltr, Xte, Lte = voc_like_features(5011, 4952, args.dim, classes=20, seed=layer)
        Ltr = np.where(Ltr == -1, 0, Ltr)
        X, X_test = l2_normalize(Xtr), l2_normalize(Xte)
        _, t_layout = clock(lambda: solver.layer_layout(X, X_test))
        engine_total += t_layout
        Y_full = np.stack([to_binary(Ltr[:, c]) for c in range(20)], axis=1)
        fallback, t_fallback = clock(lambda: cv_costs_torch(X, Y_full, costs, FOLDS, solver.device))
        fallback_total += t_fallback
        print(f"layer {layer + 1}: kernels {t_layout:.1f} s (once per layer); full-data CV costs for k < {FOLDS} "
              f"{t_fallback:.1f} s (reused from voc07_svm in a suite)", flush=True)
        samples = {k: [lowshot.sample_voc07(Ltr, k, lowshot.sample_rng(0, k, s)) for s in range(1, args.samples + 1)]
                   for k in ks}
        engine_aps = {}
        for k in ks:
            (aps, chosen, sources, logs), t = clock(lambda: solver.lowshot_voc07(X, X_test, Lte, samples[k], costs,
                                                                                 FOLDS, fallback.get))
            engine_total += t
            per_k_engine[k] += t
            engine_aps[k] = aps
            not_converged = sum(log.not_converged for log in logs)
            print(f"  k={k:3d}: {len(samples[k])} samples in {t:6.1f} s ({t / len(samples[k]):5.1f} s per sample), "
                  f"{sum(log.fits for log in logs)} fits, {not_converged} not converged", flush=True)
        if layer > 0 or args.reference_classes == 0:
            continue
        # the reference loop on a few classes of the first sample of every k, as solver 'liblinear' runs it
        (Z, Z_test), t_span = clock(lambda: liblinear.span_coordinates(X, X_test))
        reference_per_layer = {"span": t_span}
        for k in ks:
            engine_rounds, reference_rounds = [], []  # per sample, one entry per round
            for round_ in range(args.repeat):
                if args.repeat > 1:  # the engine again right before the reference: both see the same machine
                    _, t = clock(lambda: solver.lowshot_voc07(X, X_test, Lte, samples[k], costs, FOLDS, fallback.get))
                    engine_rounds.append(t / len(samples[k]))
                t_k = 0.0
                for c in range(args.reference_classes):
                    log = FitLog()
                    (ref_aps, _, _, log), t = clock(lambda: liblinear.lowshot_voc07_class(
                        c, Z, Z_test, Lte[:, c], [samples[k][0][:, c]], costs, FOLDS, fallback.get, 0))
                    t_k += t
                    if round_ == 0:
                        reference_not_converged += log.not_converged
                        if log.not_converged == 0:
                            gap = float(np.nanmax(np.abs(ref_aps[0] - engine_aps[k][0, :, c]))) * 100
                            worst_ap = max(worst_ap, gap)
                reference_rounds.append(t_k / args.reference_classes * 20)  # all classes of a sample
            reference_per_layer[k] = float(np.median(reference_rounds)) * args.samples
            print(f"  reference k={k:3d}: {reference_per_layer[k] / (20 * args.samples):6.1f} s per class and sample "
                  f"(timed on {args.reference_classes}) -> {reference_per_layer[k]:7.0f} s for 20 classes x "
                  f"{args.samples} samples", flush=True)
            if args.repeat > 1:
                ratios = [r / e for r, e in zip(reference_rounds, engine_rounds)]
                repeated[k] = (float(np.median(engine_rounds)), float(np.median(ratios)))
                print(f"  k={k:3d}, {args.repeat} rounds of engine then liblinear, per sample: engine "
                      f"{' / '.join(f'{e:.1f}' for e in engine_rounds)} s, "
                      f"liblinear {' / '.join(f'{r:.1f}' for r in reference_rounds)}"
                      f" s, ratios {' / '.join(f'x{q:.1f}' for q in ratios)} (median x{repeated[k][1]:.1f})",
                      flush=True)
    layers = args.layers
    print()
    print(f"VOC07 whole low-shot protocol, {layers} layer(s), k = {ks}, {args.samples} samples, {len(costs)} costs, "
          f"both cost selections; {torch.get_num_threads()} threads, {usable_cpus()[0]} usable cores:")
    print(f"  engine, measured: {engine_total:.0f} s ({engine_total / 60:.1f} min); plus {fallback_total:.0f} s for "
          f"the full-data CV costs of k < {FOLDS} when voc07_svm has not run")
    if reference_per_layer:
        reference_total = layers * (reference_per_layer["span"] + sum(reference_per_layer[k] for k in ks))
        print(f"  liblinear loop, scaled from measured classes: {reference_total:.0f} s "
              f"({reference_total / 3600:.1f} h) -> engine x{reference_total / engine_total:.1f}")
        for k in ks:
            engine_k = per_k_engine[k] / (layers * args.samples)
            reference_k = reference_per_layer[k] / args.samples
            print(f"  k={k:3d} per sample and layer: engine {engine_k:6.1f} s, liblinear {reference_k:7.1f} s, "
                  f"x{reference_k / engine_k:5.1f}")
            if k in repeated:
                print(f"  k={k:3d} median over {args.repeat} rounds: engine {repeated[k][0]:6.1f} s per sample, "
                      f"x{repeated[k][1]:5.1f}")
        print(f"  max |test AP difference| at any cost, timed classes where liblinear converged: {worst_ap:.4f} points"
              f" ({reference_not_converged} liblinear fits not converged)")
    return 0


def places_features(k: int, classes: int, n_val: int, dim: int, seed: int = 0):
    """k images per class (the sample itself: its rows are all the training rows) and n_val rows."""
    rng = np.random.default_rng(seed)
    Xtr, _, Xva, _ = voc_like_features(classes * k, n_val, dim, classes=4, seed=seed)
    labels = np.repeat(np.arange(classes), k)
    return l2_normalize(Xtr), labels, l2_normalize(Xva), rng.integers(0, classes, n_val)


def places205(args) -> int:
    costs = list(REFERENCE_COSTS)
    solver = TorchSolver(torch.device(args.device))
    estimate = 0.0
    print(f"Places205 low-shot, one sample per k, 205 classes one-vs-rest, {args.n_val} val rows, d = {args.dim}, "
          f"{len(costs)} costs + {FOLDS}-fold CV; {torch.get_num_threads()} threads")
    per_sample = {}
    for k in args.k:
        classes = 205 if k <= args.full_up_to else args.engine_classes
        X, y, X_val, val_labels = places_features(k, 205, args.n_val, args.dim)
        # one-vs-rest on every row of the sample; a class subset keeps all rows (all negatives)
        Y = np.where(y[:, None] == np.arange(classes)[None, :], 1, -1)
        # the sample's kernels (and cross kernel with the val rows) are built once for all classes:
        # timed apart and not scaled; the solves and the val scores are per class
        layout, t_layout = clock(lambda: shared_layout(X, X_val, solver.device, kernel_form=args.kernel_form))
        sweep, t = clock(lambda: lowshot_sweep_torch(X, Y, X_val, costs, FOLDS, device=solver.device, layout=layout))
        layout = None  # the sample's kernels are freed before the next sample's are built
        scaled = t_layout + t * 205 / classes
        per_sample[k] = scaled
        estimate += scaled * args.samples
        how = ("measured" if classes == 205 else f"measured on {classes} classes, scaled x{205 / classes:.1f}") + \
            f"; kernels {t_layout:.0f} s of it"
        print(f"  k={k:3d}: {len(X)} rows, {scaled:7.0f} s per sample ({how}); "
              f"{sum(log.not_converged for log in sweep.logs)} not converged", flush=True)
        if k in args.reference_k:
            c = 0
            y_c = np.where(y == c, 1, -1)
            timed = [costs[i] for i in np.linspace(0, len(costs) - 1, args.reference_costs).round().astype(int)]
            log = FitLog()
            scores, t_ref = clock(lambda: liblinear.decision_values_all_costs(X, y_c, X_val, timed, 0, log))
            if len(set(timed)) == len(costs):
                # the class's whole work, as ``liblinear.lowshot_places_class`` does it: 26 fits on the
                # sample, then the 3-fold CV (78 fits on 2/3 of it), measured
                _, t_cv = clock(lambda: liblinear.cv_cost(X, y_c, costs, FOLDS, 0, log))
                per_class, how = t_ref + t_cv, f"26 costs {t_ref:.1f} s + CV {t_cv:.1f} s, measured"
            else:
                # 26 fits on the sample plus 3 folds x 26 fits on 2/3 of it (liblinear's time is about linear
                # in the rows; measured on one class at k = 96: CV 220.8 s against 212.4 s so scaled)
                per_class = t_ref / len(timed) * len(costs) * (1 + FOLDS * 2 / 3)
                how = f"{len(timed)} costs in {t_ref:.1f} s, scaled to 26 costs and CV"
            reference = per_class * 205
            ap_diff = max(abs(voc_ap(val_labels == c, scores[:, j])
                              - voc_ap(val_labels == c, sweep.scores[:, c, costs.index(cost)])) * 100
                          for j, cost in enumerate(timed))
            print(f"  reference k={k:3d}: one class ({how}) -> {reference:.0f} s per sample (205 classes); "
                  f"engine x{reference / scaled:.1f}; max |AP diff| {ap_diff:.4f} points "
                  f"({log.not_converged} of {log.fits} liblinear fits not converged)", flush=True)
    print(f"  whole protocol ({args.samples} samples per k, one layer), from the per-sample times above: "
          f"{estimate:.0f} s ({estimate / 3600:.1f} h); x{args.layers} layers: {estimate * args.layers / 3600:.1f} h")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["voc07", "places205"])
    parser.add_argument("--k", type=lambda s: [int(v) for v in s.split(",")], default=list(K_VALUES))
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dim", type=int, default=9216)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sample-workers", type=int, default=None,
                        help="VOC07: samples solved at once (default: one per usable core; 1: one after the other)")
    parser.add_argument("--reference-classes", type=int, default=1,
                        help="VOC07: classes the liblinear loop is timed on")
    parser.add_argument("--repeat", type=int, default=1,
                        help="VOC07: rounds of the engine then liblinear per k on the first layer, printed per round "
                             "with their median ratio (this machine's speed drifts by 20-30 %% over minutes)")
    parser.add_argument("--n-val", type=int, default=20500, help="Places205 val rows")
    parser.add_argument("--full-up-to", type=int, default=16, help="Places205: largest k timed on all 205 classes")
    parser.add_argument("--engine-classes", type=int, default=20, help="Places205: classes timed above --full-up-to")
    parser.add_argument("--reference-k", type=lambda s: [int(v) for v in s.split(",")], default=[16, 96])
    parser.add_argument("--reference-costs", type=int, default=3, help="Places205: costs liblinear is timed on")
    parser.add_argument("--kernel-form", default="auto", choices=["auto", "dense", "factored"],
                        help="Places205: the engine's kernel form (auto: batched.choose_kernel_form)")
    args = parser.parse_args()
    return voc07(args) if args.dataset == "voc07" else places205(args)


if __name__ == "__main__":
    raise SystemExit(main())
