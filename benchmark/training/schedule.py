"""The one learning-rate schedule type of the training loops.

A ``Schedule`` is an LR curve over ``iterations`` updates plus the optimiser settings a protocol
fixes with it (batch size, weight decay, momentum). Tasks and pretrainers keep their reference
schedules as data (presets) and resolve them into a ``Schedule``; the curve is computed here:

- decay ``step``: ``lr * gamma ** (number of milestones <= it)``;
- decay ``cosine``: half a cosine from ``lr`` to 0 over the iterations after the warm-up;
- decay ``poly``: ``lr * (1 - it / iterations) ** power``;
- decay ``onecycle``: torch's OneCycleLR (cosine up from ``lr / 25`` over ``pct_start`` of the
  run, then down to ``lr / 25e4``; momentum cycles inversely between 0.85 and 0.95);
- warm-up ``affine`` (Detectron): over ``warmup_iterations`` the decayed LR is multiplied by a
  factor rising linearly from ``warmup_factor`` to 1; ``ramp`` (SimCLR, MoCo v2): the LR is
  ``lr * (it + 1) / warmup_iterations``, and the decay starts after the warm-up.

``lr`` is ``base_lr * batch_size / reference_batch`` when the protocol scales its LR with the
batch (``reference_batch`` set), else ``base_lr``. ``iteration`` is always the 0-based index of
the update the LR is used for. The expressions are evaluated in the same order as the loops did
before they shared this type, so the LRs, and the trained weights, are bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

DECAYS = ("step", "cosine", "poly", "onecycle")
WARMUPS = ("affine", "ramp")


@dataclass(frozen=True)
class Schedule:
    name: str
    iterations: int
    base_lr: float
    batch_size: int
    reference_batch: int | None = None  # LR scaled by batch_size / reference_batch; None: base_lr as is
    decay: str = "step"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    power: float = 0.9
    pct_start: float = 0.3  # onecycle: the fraction of the run spent rising
    warmup_iterations: int = 0
    warmup: str = "affine"
    warmup_factor: float = 1.0 / 3.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    iterations_per_epoch: int | None = None
    # the fields describe() reports: a task's identity of its schedule, part of its checkpoints'
    # fingerprints (and so of its output directories): kept as each task recorded it
    recorded: tuple[str, ...] = ()

    def __post_init__(self):
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        if self.warmup not in WARMUPS:
            raise ValueError(f"warmup must be one of {', '.join(WARMUPS)}, got {self.warmup!r}")

    @property
    def lr(self) -> float:
        if self.reference_batch is None:
            return self.base_lr
        return self.base_lr * self.batch_size / self.reference_batch

    @property
    def epochs(self) -> float:
        return self.iterations / self.iterations_per_epoch

    def _decay(self, iteration: int) -> float:
        if self.decay == "step":
            return self.gamma ** sum(m <= iteration for m in self.milestones)
        if self.decay == "poly":
            return (1.0 - iteration / self.iterations) ** self.power
        if self.decay == "cosine":
            start = self.warmup_iterations if self.warmup == "ramp" else 0
            progress = (iteration - start) / max(1, self.iterations - start)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return self._onecycle(iteration) / self.lr

    def _onecycle(self, iteration: int) -> float:
        """torch.optim.lr_scheduler.OneCycleLR's LR (two phases, cosine annealing, div_factor 25,
        final_div_factor 1e4)."""
        initial = self.lr / 25.0
        minimum = initial / 1e4
        peak_at = float(self.pct_start * self.iterations) - 1
        if iteration <= peak_at:
            start, end, pct = initial, self.lr, iteration / peak_at
        else:
            start, end, pct = self.lr, minimum, (iteration - peak_at) / (self.iterations - 1 - peak_at)
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    def factor(self, iteration: int) -> float:
        """``lr_at(iteration) / lr``: what a ``LambdaLR`` multiplies the optimiser's LR by."""
        if self.warmup == "ramp" and iteration < self.warmup_iterations:
            return (iteration + 1) / self.warmup_iterations
        factor = self._decay(iteration)
        if self.warmup == "affine" and iteration < self.warmup_iterations:
            alpha = iteration / self.warmup_iterations
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor

    def lr_at(self, iteration: int) -> float:
        """LR of the update made at 0-based ``iteration``."""
        if self.decay == "onecycle":
            return self._onecycle(iteration)
        if self.warmup == "ramp" and iteration < self.warmup_iterations:
            return self.lr * ((iteration + 1) / self.warmup_iterations)
        lr = self.lr * self._decay(iteration)
        if self.warmup == "affine" and iteration < self.warmup_iterations:
            alpha = iteration / self.warmup_iterations
            lr *= self.warmup_factor * (1 - alpha) + alpha
        return lr

    def set_lr(self, optimizer: torch.optim.Optimizer, iteration: int) -> float:
        """Set every parameter group's LR for the update at ``iteration`` (times the group's
        ``lr_mult``, e.g. Detectron's doubled bias LR); returns the schedule's LR."""
        lr = self.lr_at(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"] if "lr_mult" in group else lr
        return lr

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """A torch scheduler following this schedule when stepped once per iteration (for loops
        that keep the scheduler's state in their checkpoints). The optimiser's LR must be ``lr``.
        Step decay without warm-up is torch's MultiStepLR and onecycle torch's OneCycleLR (which
        also cycles the momentum), as the loops have always used; any other, LambdaLR(factor)."""
        if self.decay == "step" and self.warmup_iterations == 0:
            return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(self.milestones), gamma=self.gamma)
        if self.decay == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr, total_steps=self.iterations,
                                                       pct_start=self.pct_start)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda iteration: self.factor(iteration))

    def describe(self) -> dict:
        """The recorded fields (all of them when none are named), milestones as a list, and ``lr``
        when recorded."""
        names = self.recorded or tuple(f.name for f in fields(self) if f.name != "recorded") + ("lr",)
        out = {}
        for name in names:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out
