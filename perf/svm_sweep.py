"""Time one layer's VOC07 SVM sweep: the reference loop vs the batched torch engine.

    python perf/svm_sweep.py            # VOC07 size: n = 5011 / 4952, d = 9216, 20 classes
    python perf/svm_sweep.py --quick    # 3 classes of smaller features: under a minute
    python perf/svm_sweep.py --reference-classes 2   # time the reference on 2 classes and
                                               # scale to all (its classes are independent fits)
    python perf/svm_sweep.py --quick --compete 1     # the engine idle, then beside 1 busy process:
                                               # the slowdown against the share of cores it lost

On the same features, in one process: (1) the reference serial loop (LinearSVC per class per cost
per fold + refit), (2) the reference with one worker per class (joblib, all cores), (3) the engine
(benchmark.svm.newton), on CPU and on CUDA when available. Prints wall times, ratios, mAPs, the
largest per-class AP difference, chosen-cost agreement and the engine's peak memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchmark  # noqa: E402,F401  (first: it sets OMP_WAIT_POLICY before torch loads OpenMP)
import numpy as np  # noqa: E402
import torch


from benchmark.datasets.synth_features import voc_like_features  # noqa: E402
from benchmark.svm.batched import voc07_svm_torch  # noqa: E402
from benchmark.svm.liblinear import voc07_svm  # noqa: E402
from benchmark.svm.protocol import REFERENCE_COSTS  # noqa: E402


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def summary(name, results, seconds, classes_timed=None, classes_total=None):
    aps = np.array([r.test_ap for r in results])
    scale = "" if classes_timed is None or classes_timed == classes_total else \
        f" (timed on {classes_timed} classes, scaled to {classes_total})"
    print(f"{name:34s} {seconds:9.1f} s{scale}   mAP {100 * np.nanmean(aps):.3f}")


def compare(reference, engine):
    test = max(abs(a.test_ap - b.test_ap) for a, b in zip(reference, engine)) * 100
    cv = max(np.nanmax(np.abs(np.array(a.cv_ap) - np.array(b.cv_ap))) for a, b in zip(reference, engine)) * 100
    same = sum(a.best_cost == b.best_cost for a, b in zip(reference, engine))
    close = sum(a.best_cost == b.best_cost or abs(a.best_cv_ap - b.cv_ap[list(b.costs).index(a.best_cost)]) * 100 <= 0.1
                for a, b in zip(reference, engine))
    return test, cv, same, close


def five_layers(args) -> int:
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    for device in devices:
        total = 0.0
        for layer, dim in enumerate((9216, 9216, 8192, 9216, 8192)):
            Xtr, Ltr, Xte, Lte = voc_like_features(dim=dim, seed=args.seed + layer)
            if device == "cuda":
                torch.cuda.synchronize()
            results, seconds = timed(voc07_svm_torch, Xtr, Ltr, Xte, Lte, REFERENCE_COSTS, device=torch.device(device))
            total += seconds
            summary(f"engine ({device}) layer {layer + 1}, d={dim}", results, seconds)
        print(f"engine ({device}): five-layer VOC07 protocol {total:.1f} s")
    return 0


def compete(args) -> int:
    """The engine alone, then beside ``args.compete`` CPU-bound processes (busy loops, as other
    jobs on a shared node): its slowdown, against the slowdown its lost share of cores explains."""
    import subprocess

    from benchmark.cpus import configure_threads, usable_cpus

    configure_threads(print)
    cores, source = usable_cpus()
    data = voc_like_features(1500, 1500, 2048, classes=3, seed=args.seed) if args.quick else \
        voc_like_features(seed=args.seed)
    Xtr, Ltr, Xte, Lte = data
    print(f"{cores} usable cores ({source}), {torch.get_num_threads()} torch threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    _, idle = timed(voc07_svm_torch, Xtr, Ltr, Xte, Lte, REFERENCE_COSTS, device=torch.device("cpu"))
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.compete)]
    try:
        time.sleep(1.0)  # let them reach the run queue
        _, loaded = timed(voc07_svm_torch, Xtr, Ltr, Xte, Lte, REFERENCE_COSTS, device=torch.device("cpu"))
    finally:
        for process in busy:
            process.kill()
            process.wait()
    fair = (args.compete + cores) / cores  # a fair scheduler gives us cores / (cores + competitors)
    print(f"engine idle {idle:.1f} s, beside {args.compete} busy process(es) {loaded:.1f} s: slowdown "
          f"x{loaded / idle:.2f}, against x{fair:.2f} explained by the lost share of cores "
          f"(ratio {loaded / idle / fair:.2f}; 1.0 = degrades only as much as the cores it lost)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 classes, n = 1500 / 1500, d = 2048")
    parser.add_argument("--reference-classes", type=int, help="time the reference on this many classes only")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--devices", nargs="+", default=None, help="engine devices (default: cpu, and cuda if present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--five-layers", action="store_true",
                        help="time the engine alone on the whole protocol: five VOC07-size layers "
                             "(d = 9216, 9216, 8192, 9216, 8192 as ResNet-50's conv1..res5)")
    parser.add_argument("--compete", type=int, default=0, metavar="N",
                        help="time the engine idle, then beside N CPU-bound processes, and print the slowdown")
    args = parser.parse_args()
    if args.compete:
        return compete(args)
    if args.five_layers:
        return five_layers(args)
    if args.quick:
        data = voc_like_features(1500, 1500, 2048, classes=3, seed=args.seed)
    else:
        data = voc_like_features(seed=args.seed)
    Xtr, Ltr, Xte, Lte = data
    classes = Ltr.shape[1]
    costs = REFERENCE_COSTS
    print(f"features: train {Xtr.shape}, test {Xte.shape}, {classes} classes, {len(costs)} costs, 3 folds; "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cpus")
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    engine = {}
    for device in devices:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        results, seconds = timed(voc07_svm_torch, Xtr, Ltr, Xte, Lte, costs, device=torch.device(device))
        engine[device] = (results, seconds)
        summary(f"engine ({device})", results, seconds)
        not_converged = sum(r.log.not_converged for r in results)
        fits = sum(r.log.fits for r in results)
        print(f"{'':34s} {not_converged} of {fits} fits not converged; max Newton iterations "
              f"{max(r.log.max_iter_seen for r in results)}")
        if device == "cuda":
            print(f"{'':34s} peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{'':34s} peak RSS of this process so far {peak_gib:.2f} GiB")
    if args.skip_reference:
        return 0
    timed_classes = min(args.reference_classes or classes, classes)
    subset = (Ltr[:, :timed_classes], Lte[:, :timed_classes])
    serial, t_serial = timed(voc07_svm, Xtr, subset[0], Xte, subset[1], costs, n_jobs=1, span_trick=False)
    t_serial *= classes / timed_classes
    summary("reference, serial (liblinear)", serial, t_serial, timed_classes, classes)
    parallel, t_parallel = timed(voc07_svm, Xtr, subset[0], Xte, subset[1], costs, n_jobs=-1, span_trick=False)
    t_parallel *= classes / timed_classes
    summary(f"reference, {os.cpu_count()} workers (liblinear)", parallel, t_parallel, timed_classes, classes)
    for device, (results, seconds) in engine.items():
        test, cv, same, close = compare(serial, results[:timed_classes])
        print(f"engine ({device}): x{t_serial / seconds:.1f} vs serial, x{t_parallel / seconds:.1f} vs workers; "
              f"max |test AP diff| {test:.4f} pts, max |CV AP diff| {cv:.4f} pts over all costs; chosen cost "
              f"equal for {same}/{timed_classes} classes, equal or within 0.1 CV-AP pts for {close}/{timed_classes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
