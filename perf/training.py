"""Training throughput (images/s) of the `linear` and `finetune` engines against a bare training loop.

For each task, in one run, interleaved, the same model, batch, image size and images:

- engine: the task's training code path as a run calls it: ``train_linear_heads`` (frozen trunk,
  one BatchNorm + Linear head per layer, the goyal recipe's heads and Nesterov SGD) or ``finetune``
  (the whole network + a Linear classifier, Nesterov SGD, cosine LR), reading JPEG files through
  the engine's own DataLoader (seeded per-image augmentation, resumable batch order), with its CSV
  log flushes, and its checkpoints amortised as in a real run: one save of the engine's own
  checkpoint is timed after the run and charged at the task's default interval (every 1,000
  iterations for `linear`, 500 for `finetune`) on top of the timed window;
- bare: a plain PyTorch loop over the same model and optimiser step, fed by a plain DataLoader of
  the same files with the same decode + random-resized-crop + flip (random batches, same workers).

The bare side decodes and augments like the engine because that decode is part of the task's real
training step (the engine has no pre-decoded path): the question is whether the engine adds
anything on top of "load a batch, forward, backward, step". ``--predecoded`` adds a third side, the
bare step on tensors decoded before timing, to show the loader's share.

Both sides time iterations ``[warmup, iterations - 1)`` (each side's first ``warmup`` iterations
and the engine's final checkpoint and evaluation are left out); ``iterations`` is sized from a
calibration so each side runs about ``--seconds``. The ratio per task is engine / bare images/s,
over the repeats together (each repeat alternates which side runs first).

    python perf/training.py --arch resnet18 --size 64 --batch-size 32 --seconds 30 --repeats 2 --threads 1

On a machine shared with other jobs use ``--threads 1``: with more, OpenMP threads wait on busy
cores and an iteration varies several-fold within a side.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from benchmark.datasets.classification import load_classification
from benchmark.datasets.images import ImageFileDataset, train_transform
from benchmark.datasets.synth_classification import synth_classification
from benchmark.models import FrozenBackbone, create_model
from benchmark.models.backbone import get_architecture
from benchmark.training import Schedule, atomic_torch_save
from tasks.finetune.train import FinetuneNet, FinetuneSetup, bn_momentum, finetune, parameter_groups
from tasks.linear.heads import LinearSetup, MultiHead, eval_transform, resolve_schedule, train_linear_heads

LINEAR_CHECKPOINT_EVERY = 1000  # the tasks' default checkpoint intervals
FINETUNE_CHECKPOINT_EVERY = 500


class Clock:
    """Timestamps of the iterations' ends: the window [warmup, iterations - 1) in seconds, plus
    ``charged`` seconds (the engine's amortised checkpoints)."""

    def __init__(self, warmup: int, iterations: int):
        self.warmup, self.iterations = warmup, iterations
        self.start = self.stop = None
        self.charged = 0.0

    def __call__(self, done: int) -> None:
        if done == self.warmup:
            self.start = time.perf_counter()
        elif done == self.iterations - 1:
            self.stop = time.perf_counter()

    @property
    def timed_iterations(self) -> int:
        return self.iterations - 1 - self.warmup

    @property
    def seconds(self) -> float:
        return self.stop - self.start + self.charged

    def charge_checkpoints(self, out_dir: Path, interval: int) -> float:
        """Charge the window one save of the run's final checkpoint per ``interval`` iterations;
        returns the seconds of one save."""
        state = torch.load(out_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
        start = time.perf_counter()
        atomic_torch_save(state, out_dir / "probe.pt")
        save_seconds = time.perf_counter() - start
        self.charged = self.timed_iterations / interval * save_seconds
        return save_seconds


def random_batches(n: int, batch_size: int, iterations: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    epochs = math.ceil(iterations * batch_size / (n - n % batch_size))
    batches = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).tolist()
        batches += [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    return batches[:iterations]


def bare_loop(model, parameters_or_groups, forward_loss, train_set, args, iterations: int, train_mode: bool,
              predecoded: list | None = None) -> Clock:
    """A plain loop: next batch, forward, loss, zero grad, backward, Nesterov SGD step."""
    optimizer = torch.optim.SGD(parameters_or_groups, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    model.train(train_mode)
    clock = Clock(args.warmup, iterations)
    if predecoded is not None:
        batches = (predecoded[i % len(predecoded)] for i in range(iterations))
    else:
        batches = DataLoader(train_set, batch_sampler=random_batches(len(train_set), args.batch_size, iterations, 1),
                             num_workers=args.num_workers, prefetch_factor=4 if args.num_workers else None)
    for done, (images, targets) in enumerate(batches, start=1):
        loss = forward_loss(images, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clock(done)
    return clock


def linear_sides(backbone: FrozenBackbone, layers, num_classes: int, train_set, test_set, args):
    def model():
        return MultiHead.build(backbone, layers, num_classes, args.size, seed=0)

    def bare(iterations: int, predecoded=None) -> Clock:
        heads = model()

        def forward_loss(images, targets):
            with torch.no_grad():
                maps = backbone.feature_maps(images, layers)
            logits = heads(maps)
            return sum(F.cross_entropy(logits[layer], targets) for layer in layers)

        return bare_loop(heads, heads.parameters(), forward_loss, train_set, args, iterations, True, predecoded)

    def engine(iterations: int, out_dir: Path) -> Clock:
        schedule = resolve_schedule("custom", backbone.arch.name, len(train_set), iterations=iterations,
                                    milestones=[], batch_size=args.batch_size)
        schedule = dataclasses.replace(schedule, name="goyal")
        setup = LinearSetup(layers=layers, num_classes=num_classes, image_size=args.size, schedule=schedule,
                            eval_every=iterations + 1, num_workers=args.num_workers, world_size=1,
                            checkpoint_every=LINEAR_CHECKPOINT_EVERY, desc="perf linear")
        clock = Clock(args.warmup, iterations)
        train_linear_heads(backbone, train_set, test_set, setup, out_dir, torch.device("cpu"), on_iteration=clock)
        clock.charge_checkpoints(out_dir, LINEAR_CHECKPOINT_EVERY)
        return clock

    return bare, engine


def finetune_sides(backbone: FrozenBackbone, num_classes: int, train_set, test_set, args):
    layer = backbone.arch.layers[-1]

    def bare(iterations: int, predecoded=None) -> Clock:
        net = FinetuneNet(backbone, layer, num_classes, args.size, seed=0)
        for module in net.trunk.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = bn_momentum(len(train_set) // args.batch_size)

        def forward_loss(images, targets):
            return F.cross_entropy(net(images), targets)

        return bare_loop(net, parameter_groups(net, 1e-4, None), forward_loss, train_set, args, iterations, True,
                         predecoded)

    def engine(iterations: int, out_dir: Path) -> Clock:
        schedule = Schedule(name="finetune-cosine", iterations=iterations, base_lr=0.01, batch_size=args.batch_size,
                            decay="cosine", weight_decay=1e-4, momentum=0.9,
                            iterations_per_epoch=len(train_set) // args.batch_size)
        setup = FinetuneSetup(layer=layer, num_classes=num_classes, image_size=args.size, schedule=schedule,
                              num_workers=args.num_workers, eval_batch_size=args.batch_size, desc="perf finetune",
                              checkpoint_every=FINETUNE_CHECKPOINT_EVERY)
        clock = Clock(args.warmup, iterations)
        finetune(backbone, train_set, test_set, setup, out_dir, torch.device("cpu"), on_iteration=clock)
        clock.charge_checkpoints(out_dir, FINETUNE_CHECKPOINT_EVERY)
        return clock

    return bare, engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds of each side per repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations at the start of each side")
    parser.add_argument("--tasks", default="linear,finetune")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=40, help="training images per class")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of both sides")
    parser.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: torch's default)")
    parser.add_argument("--predecoded", action="store_true", help="also time the bare step on decoded tensors")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="perf-training-") as tmp:
        root = synth_classification(Path(tmp) / "data", num_classes=args.classes,
                                    per_split={"train": args.per_class, "test": max(1, args.per_class // 4)})
        data = load_classification(root.parent, root.name, val_fraction=0.0)
        paths = [data.train.split.image_paths[i] for i in data.train.indices]
        labels = torch.as_tensor(data.train.labels, dtype=torch.int64)
        train_set = ImageFileDataset(paths, train_transform(args.size), labels)
        test_set = ImageFileDataset([data.test.split.image_paths[i] for i in data.test.indices],
                                    eval_transform(args.size), torch.as_tensor(data.test.labels, dtype=torch.int64))
        arch = get_architecture(args.arch)
        backbone = FrozenBackbone(arch, create_model(args.arch, seed=0))
        sides = {"linear": linear_sides(backbone, list(arch.layers), data.num_classes, train_set, test_set, args),
                 "finetune": finetune_sides(backbone, data.num_classes, train_set, test_set, args)}
        tasks = args.tasks.split(",")
        predecoded = None
        if args.predecoded:
            loader = DataLoader(train_set, batch_size=args.batch_size, drop_last=True)
            predecoded = [batch for batch in loader]

        print(f"{args.arch} at {args.size} px, batch {args.batch_size}, {len(train_set)} training JPEGs "
              f"({args.classes} classes), {args.num_workers} loader workers, {torch.get_num_threads()} threads, "
              f"~{args.seconds:g} s per side per repeat, {args.repeats} repeats")
        iterations = {}
        for task in tasks:
            calibration = sides[task][0](args.warmup + 6)
            per_iteration = calibration.seconds / calibration.timed_iterations
            iterations[task] = max(args.warmup + 4, round(args.seconds / per_iteration) + args.warmup + 1)
            print(f"  {task}: calibration {1000 * per_iteration:.0f} ms/iteration -> {iterations[task]} iterations "
                  f"per side")

        totals = {task: {"engine": [0, 0.0], "bare": [0, 0.0], "predecoded": [0, 0.0]} for task in tasks}
        ratios = {task: [] for task in tasks}
        charged = {}
        for repeat in range(args.repeats):
            for task in tasks:
                bare, engine = sides[task]
                order = ["bare", "engine"] if repeat % 2 == 0 else ["engine", "bare"]
                if predecoded is not None:
                    order.append("predecoded")
                rates = {}
                for side in order:
                    if side == "engine":
                        with tempfile.TemporaryDirectory(dir=tmp) as out_dir:
                            clock = engine(iterations[task], Path(out_dir))
                    else:
                        clock = bare(iterations[task], predecoded if side == "predecoded" else None)
                    totals[task][side][0] += clock.timed_iterations * args.batch_size
                    totals[task][side][1] += clock.seconds
                    rates[side] = clock.timed_iterations * args.batch_size / clock.seconds
                    if clock.charged:
                        charged[task] = clock.charged / clock.seconds
                ratios[task].append(rates["engine"] / rates["bare"])
                print(f"  repeat {repeat + 1} {task}: " + ", ".join(f"{side} {rates[side]:.1f} images/s"
                                                                   for side in order)
                      + f"; engine / bare {ratios[task][-1]:.3f}")

        print("result:")
        for task in tasks:
            rate = {side: images / seconds for side, (images, seconds) in totals[task].items() if seconds}
            extra = (f", bare on decoded tensors {rate['predecoded']:.1f} images/s"
                     if "predecoded" in rate else "")
            print(f"  {task:8s} checkpoints amortised: {100 * charged[task]:.2f} % of the engine's time")
            print(f"  {task:8s} engine {rate['engine']:.1f} images/s, bare {rate['bare']:.1f} images/s{extra}: "
                  f"ratio {rate['engine'] / rate['bare']:.3f} (per repeat "
                  f"{', '.join(f'{r:.3f}' for r in ratios[task])}; median {statistics.median(ratios[task]):.3f}; "
                  f"target >= 0.9)")


if __name__ == "__main__":
    main()
