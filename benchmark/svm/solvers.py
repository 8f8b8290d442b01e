"""One interface over the two SVM solvers, so that a task names a solver and never branches on it.

``make_solver(name, ...)`` gives a ``Solver``:

- ``LiblinearSolver``: the reference's loop (``benchmark.svm.liblinear``), one class and cost at a
  time, classes in parallel (joblib), optionally in the exact span coordinates when n < d;
- ``TorchSolver``: the batched engine (``benchmark.svm.batched`` on ``benchmark.svm.newton``),
  every class x fold x cost of a layer in one batch, same problem and stopping test.

Each solver runs the per-class sweeps of the protocols: the VOC07 per-layer CV sweep
(``voc07``), the per-class CV cost choice on all training rows (``cv_costs``) and the two low-shot
sweeps (``lowshot_voc07``, ``lowshot_places``). Both return the same arrays, so rows built from them
differ only in the ``solver`` column (``name``).
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch
from joblib import Parallel, delayed

from .._heap import kept_heap
from ..errors import ConfigError
from ..metrics import voc_ap
from ..provenance import resolve_device
from .batched import cv_costs_torch, lowshot_sweep_torch, shared_layout, voc07_svm_torch
from .liblinear import cv_cost, lowshot_places_class, lowshot_voc07_class, span_coordinates, voc07_svm
from .protocol import SOLVERS, ClassResult, FitLog


def check_solver(solver: str, task: str) -> str:
    if solver not in SOLVERS:
        raise ConfigError(f"{task}: unknown solver '{solver}'; use 'torch' (batched, the default) or "
                          f"'liblinear' (the reference's LinearSVC loop)")
    return solver


class Solver:
    """The per-class SVM sweeps of the protocols. Features are L2-normalised by the caller except
    in ``voc07`` (which normalises and checks them, as ``benchmark.svm.liblinear.voc07_svm``)."""

    name: str  # the ``solver`` column of the rows it produces

    def shared_coordinates(self, X_train: np.ndarray, X_eval: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates in which every subset of X_train's rows is solved (an exact change of basis
        or none): computed once for all samples of a layer."""
        return X_train, X_eval

    def voc07(self, train_features, train_labels, test_features, test_labels, costs, folds: int) -> list[ClassResult]:
        """The VOC07 per-layer protocol: per class, CV AP over costs, refit at the best, test AP."""
        raise NotImplementedError

    def cv_costs(self, X_train: np.ndarray, Y: np.ndarray, costs, folds: int) -> dict[int, float | None]:
        """Per class (Y: (n, C) +-1), the cost with the best mean CV AP on all rows, or None for a
        class with fewer positives or negatives than folds."""
        raise NotImplementedError

    def lowshot_voc07(self, X_train: np.ndarray, X_test: np.ndarray, test_labels: np.ndarray,
                      samples: Sequence[np.ndarray], costs: list, folds: int,
                      fallback_cost: Callable[[int], float | None]):
        """Every VOC07 low-shot sample (the reference's (n, C) 1 / 0 / -1 matrices), every class and
        cost: (test AP (samples, costs, C), chosen cost index (samples, C), cost sources
        (samples x C), FitLog per class). A class whose sample has fewer positives than folds takes
        ``fallback_cost(c)`` (index -1 when that is None)."""
        raise NotImplementedError

    def lowshot_places(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, val_labels: np.ndarray,
                       num_classes: int, costs: list, folds: int, log: FitLog):
        """All classes x costs on one Places205 sample (class labels y): (val scores (classes,
        n_val, costs), AP (classes, costs), CV-chosen cost index per class (-1: none)); the fits
        are added to ``log``."""
        raise NotImplementedError


class LiblinearSolver(Solver):
    """The reference's LinearSVC loop; ``span``: solve in the exact span coordinates of the
    training rows when there are fewer rows than dimensions (``liblinear.span_coordinates``)."""

    def __init__(self, n_jobs: int = 1, seed: int = 0, span: bool = True):
        self.n_jobs, self.seed, self.span = n_jobs, seed, span
        self.name = "liblinear" + ("+span" if span else "")

    def shared_coordinates(self, X_train, X_eval):
        # every sample is a subset of the training rows: one exact change of basis serves all of them
        if self.span and len(X_train) < X_train.shape[1]:
            return span_coordinates(X_train, X_eval)
        return X_train, X_eval

    def voc07(self, train_features, train_labels, test_features, test_labels, costs, folds):
        return voc07_svm(train_features, train_labels, test_features, test_labels, costs=costs, folds=folds,
                         n_jobs=self.n_jobs, seed=self.seed, span_trick=self.span)

    def cv_costs(self, X_train, Y, costs, folds):
        log = FitLog()
        return {c: cv_cost(X_train, Y[:, c], costs, folds, self.seed, log) for c in range(Y.shape[1])}

    def lowshot_voc07(self, X_train, X_test, test_labels, samples, costs, folds, fallback_cost):
        results = Parallel(n_jobs=self.n_jobs)(
            delayed(lowshot_voc07_class)(c, X_train, X_test, test_labels[:, c], [m[:, c] for m in samples],
                                         costs, folds, fallback_cost, self.seed, self.span)
            for c in range(test_labels.shape[1])
        )
        logs = [r[3] for r in results]
        aps = np.stack([r[0] for r in results], axis=-1)  # (samples, costs, classes)
        chosen = np.stack([r[1] for r in results], axis=-1)  # (samples, classes)
        sources = [[r[2][i] for r in results] for i in range(len(samples))]  # samples x classes
        return aps, chosen, sources, logs

    def lowshot_places(self, X, y, X_val, val_labels, num_classes, costs, folds, log):
        Z, Z_val = span_coordinates(X, X_val) if self.span and len(X) < X.shape[1] else (X, X_val)
        results = Parallel(n_jobs=self.n_jobs)(
            delayed(lowshot_places_class)(c, Z, y, Z_val, val_labels, costs, folds, self.seed)
            for c in range(num_classes))
        scores = np.stack([r[0] for r in results])  # (classes, n_val, costs)
        for r in results:
            log.merge(r[3])
        aps = np.stack([r[1] for r in results])
        cv = np.array([-1 if r[2] is None else r[2] for r in results])
        return scores, aps, cv


def _each_in_threads(work: Callable[[int], object], sizes: Sequence[float], workers: int, scope) -> list:
    """[work(i) for i in range(len(sizes))], largest ``sizes`` first on ``workers`` threads that
    each take the next item when they are free, each inside its own ``scope()`` and with torch's
    intra-op threads shared out between them (one worker: in order on all threads). The first
    exception stops the others from starting new items and is raised."""
    results: list = [None] * len(sizes)
    if workers <= 1:
        with scope():
            for i in range(len(sizes)):
                results[i] = work(i)
        return results
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    pending, taking, stop = iter(order), threading.Lock(), threading.Event()

    def worker():
        with scope():
            while not stop.is_set():
                with taking:
                    i = next(pending, None)
                if i is None:
                    return
                try:
                    results[i] = work(i)
                except BaseException:
                    stop.set()
                    raise

    threads = torch.get_num_threads()
    # a new thread takes torch's count as last set, at its first parallel operation
    torch.set_num_threads(max(1, threads // workers))
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="ssl-bench-sample") as pool:
            running = [pool.submit(worker) for _ in range(workers)]
            try:
                for future in running:
                    future.result()
            except BaseException:
                stop.set()
                raise
    finally:
        torch.set_num_threads(threads)
    return results


def _balanced_parts(weights: Sequence[float], parts: int) -> list[list[int]]:
    """The indices of ``weights`` in at most ``parts`` groups of about equal total weight (largest
    first, each to the lightest group so far), each group in index order."""
    groups: list[list[int]] = [[] for _ in range(parts)]
    load = [0.0] * parts
    for i in sorted(range(len(weights)), key=lambda i: -weights[i]):
        lightest = min(range(parts), key=load.__getitem__)
        groups[lightest].append(i)
        load[lightest] += weights[i]
    return [sorted(group) for group in groups if group]


class TorchSolver(Solver):
    """The batched engine on ``device``: all classes of a layer (or of a sample) solved together.

    VOC07 low-shot samples are solved several at once on a CPU (``sample_workers``: one per
    core, each single-threaded). A sample's solve alternates memory-bound block products with
    Python and small operations that one thread runs alone; two samples side by side on two
    cores overlap them. The samples left over when their count is no multiple of the workers are
    split into class groups, side by side too. Five VOC07 k = 96 samples on 2 cores: 11.4 s per
    sample, against 12.7 s with the fifth sample alone on both threads and 16.3 s one after the
    other. A single-threaded class's answers do not depend on the threads next to it nor on the
    classes solved with it (test)."""

    def __init__(self, device: torch.device, mixed: bool = True, workers: int | None = None):
        self.device, self.mixed, self.workers = device, mixed, workers
        self.name = f"torch-newton({device.type},{'mixed' if mixed else 'float64'})"
        self._layout = None  # (X_train, X_eval, layout) of the last low-shot call

    def _kept_heap(self):
        return kept_heap() if self.device.type == "cpu" else contextlib.nullcontext()

    def layer_layout(self, X_train: np.ndarray, X_eval: np.ndarray):
        """The layer's kernels (``batched.shared_layout``), kept while the same arrays come back:
        a caller that solves its k values in several calls computes them once."""
        if self._layout is None or self._layout[0] is not X_train or self._layout[1] is not X_eval:
            self._layout = (X_train, X_eval, shared_layout(X_train, X_eval, self.device, mixed=self.mixed))
        return self._layout[2]

    def voc07(self, train_features, train_labels, test_features, test_labels, costs, folds):
        return voc07_svm_torch(train_features, train_labels, test_features, test_labels, costs=costs, folds=folds,
                               device=self.device, mixed=self.mixed)

    def cv_costs(self, X_train, Y, costs, folds):
        return cv_costs_torch(X_train, Y, costs, folds, self.device, mixed=self.mixed)

    def sample_workers(self, count: int, bytes_each: int, budget: int) -> int:
        """How many of ``count`` pieces of low-shot work (samples, or class groups of one) to
        solve at once: on the CPU one per intra-op thread torch may use (``benchmark.cpus``: the
        usable cores; ``workers`` when given), as many as the memory budget holds at
        ``bytes_each``; one on a GPU."""
        if self.device.type != "cpu" or count < 2:
            return 1
        wanted = self.workers or torch.get_num_threads()
        return max(1, min(count, wanted, budget // max(1, bytes_each)))

    def lowshot_voc07(self, X_train, X_test, test_labels, samples, costs, folds, fallback_cost):
        num_classes = test_labels.shape[1]
        keep = test_labels != -1  # difficult-only rows are removed per class

        def one_part(i: int, classes: list[int]):
            """Sample i's test APs (costs, classes), chosen cost indices, cost sources and logs of ``classes``."""
            labels = samples[i][:, classes]
            Y = np.where(labels == 1, 1, np.where(labels == 0, -1, 0))
            sweep = lowshot_sweep_torch(X_train, Y, X_test, costs, folds, device=self.device, layout=layout)
            aps = np.full((len(costs), len(classes)), np.nan)
            chosen = np.zeros(len(classes), dtype=int)
            sources = []
            for j, c in enumerate(classes):
                y_test = test_labels[keep[:, c], c] == 1
                aps[:, j] = [voc_ap(y_test, sweep.scores[keep[:, c], j, m]) for m in range(len(costs))]
                if not np.isnan(sweep.cv_ap[j]).all():
                    cost, source = costs[int(np.argmax(sweep.cv_ap[j]))], f"{folds}-fold-cv-on-sample"
                else:
                    cost, source = fallback_cost(c), "full-data-cv"
                chosen[j] = -1 if cost is None else costs.index(cost)
                sources.append(source if cost is not None else "none(too-few-positives)")
            return aps, chosen, sources, sweep.logs

        with self._kept_heap():  # one scope over the samples: their temporaries reuse the same memory
            # every sample of every k is a subset of the same trainval rows: their kernels are
            # gathered from one layer-wide kernel (and test cross kernel) computed here once
            layout = self.layer_layout(X_train, X_test)
            class_work = [(s >= 0).sum(axis=0).astype(float) ** 2 for s in samples]  # a class block's entries
            # a sample's class blocks (float64 and float32), about as much again in CG temporaries
            # and compacted blocks
            bytes_each = int(3 * 12 * num_classes * max((w.max() for w in class_work), default=0))
            workers = self.sample_workers(len(samples) * num_classes, bytes_each, layout.budget - layout.kernel_bytes)
            # Whole samples side by side; the samples left over when their count is no multiple of
            # the workers (the smallest) are split into class groups, one per worker, rather than
            # run alone beside idle cores: a class's problems do not depend on the other classes.
            order = sorted(range(len(samples)), key=lambda i: -class_work[i].sum())
            split = set(order[len(order) - len(order) % workers:]) if workers > 1 else set()
            units = [(i, list(range(num_classes))) for i in order if i not in split]
            units += [(i, part) for i in sorted(split) for part in _balanced_parts(class_work[i], workers)]
            # each worker's class blocks in the same memory
            results = _each_in_threads(lambda u: one_part(*units[u]),
                                       [float(class_work[i][part].sum()) for i, part in units], workers,
                                       layout.block_workspace)
        aps = np.full((len(samples), len(costs), num_classes), np.nan)
        chosen = np.zeros((len(samples), num_classes), dtype=int)
        sources = [[""] * num_classes for _ in samples]
        logs = [FitLog() for _ in range(num_classes)]
        for (i, part), (part_aps, part_chosen, part_sources, part_logs) in zip(units, results):
            aps[i][:, part], chosen[i, part] = part_aps, part_chosen
            for j, c in enumerate(part):
                sources[i][c] = part_sources[j]
                logs[c].merge(part_logs[j])
        return aps, chosen, sources, logs

    def lowshot_places(self, X, y, X_val, val_labels, num_classes, costs, folds, log):
        Y = np.where(y[:, None] == np.arange(num_classes)[None, :], 1, -1)
        sweep = lowshot_sweep_torch(X, Y, X_val, costs, folds, device=self.device, mixed=self.mixed)
        scores = np.moveaxis(sweep.scores, 1, 0)  # (classes, n_val, costs)
        aps = np.array([[voc_ap(val_labels == c, scores[c, :, j]) for j in range(len(costs))]
                        for c in range(num_classes)])
        cv = np.array([-1 if np.isnan(a).all() else int(np.argmax(a)) for a in sweep.cv_ap])
        for class_log in sweep.logs:
            log.merge(class_log)
        return scores, aps, cv


def make_solver(name: str, device="auto", n_jobs: int = 1, seed: int = 0, span: bool = True,
                task: str = "svm", mixed: bool = True) -> Solver:
    """The solver a task's options name: 'torch' on ``device`` ('auto': cuda when available) or
    'liblinear' with ``n_jobs`` classes in parallel, seeded with ``seed``. ``task`` names the
    caller in the error for an unknown solver."""
    if check_solver(name, task) == "torch":
        return TorchSolver(device if isinstance(device, torch.device) else resolve_device(device), mixed)
    return LiblinearSolver(n_jobs=n_jobs, seed=seed, span=span)
