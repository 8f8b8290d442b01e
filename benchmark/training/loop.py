"""The one resumable training loop: a task writes its model, its data and its loss, nothing else.

A ``TrainingLoop`` runs the updates ``[start, iterations)`` of a training and does, the same way
for every task and pretrainer:

- resume: ``resume()`` reads the checkpoint at ``path`` when this format and configuration wrote
  it (``benchmark.training.checkpoint``: anything else is ignored with a line, and training starts
  afresh); ``restore(state)`` loads every part of the training state from it and starts at its
  ``iteration``;
- the update: ``step(batch, iteration)`` returns the loss to minimise and what the task records of
  the iteration. The LR of the update is set first when the loop follows a ``Schedule`` itself,
  or stepped after the update when it drives a torch scheduler (whose state is then checkpointed);
- save cadence: every ``checkpoint_every`` updates, at the end of every epoch when
  ``save_every_epoch``, and at the end, where the checkpoint says ``done``;
- the final check: a loader that ran out before ``iterations`` is a DatasetError, never a model
  silently trained for less;
- the progress display and the CSV log, whose ``sync()`` (the byte length, or a whole rewrite for
  logs kept in the checkpoint) precedes every checkpoint.

A checkpoint is ``{"format", <key>: fingerprint, "done", "iteration", <parts>}``, the parts in the
order the task declares them: a part with ``state_dict`` / ``load_state_dict`` (an optimiser) is
saved and restored through them, a ``Part`` through its functions, and any other callable is a
value computed from the loop when saving (``lambda loop: loop.iteration // per_epoch``) that the
task reads back from the state itself; anything else is saved as it is. ``end()`` may replace
parts' values in the final checkpoint (the test metrics) without moving them.

The sequence of an update is the one every loop ran before sharing this one (LR, forward, zero
grad, backward, optimiser step, scheduler step, ``after_step``, record, hooks, save), so the
numbers, bit for bit, and the RNG draws are unchanged. ``batches`` is read lazily, like a for loop
over it: what it draws when asked for the next batch (a DataLoader's base seed, a sampler that
runs out) happens after the previous update's checkpoint, so a task whose state must include such
a draw makes it happen while the batch is produced (``pretrainers.supervised``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..errors import ConfigError, DatasetError
from .checkpoint import (atomic_torch_save, cpu_state, load_matching_checkpoint, restore_scheduler_state,
                         scheduler_state)
from .csvlog import write_csv
from .progress import progress
from .sampling import loader_batches
from .schedule import Schedule
from .seeding import rng_state, set_rng_state

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    """A piece of the training state a checkpoint holds: ``save()`` gives it, ``load(value)`` puts
    it back (None: the task reads it from the restored state itself)."""

    save: Callable[[], Any]
    load: Callable[[Any], None] | None = None

    @classmethod
    def weights(cls, module: nn.Module) -> "Part":
        """A module's state, detached on the CPU."""
        return cls(lambda: cpu_state(module), module.load_state_dict)

    @classmethod
    def scheduler(cls, scheduler) -> "Part":
        """A torch LR scheduler's state, in types ``torch.load(weights_only=True)`` reads."""
        return cls(lambda: scheduler_state(scheduler), lambda s: scheduler.load_state_dict(restore_scheduler_state(s)))

    @classmethod
    def rng(cls) -> "Part":
        """torch's, numpy's and Python's global RNG states."""
        return cls(rng_state, set_rng_state)


def build_optimizer(parameter_groups, schedule: Schedule, *, optimizer: type[torch.optim.Optimizer] = torch.optim.SGD,
                    nesterov: bool = False) -> torch.optim.Optimizer:
    """The optimiser of a training, its LR, momentum and weight decay from ``schedule``. A group's
    own ``weight_decay`` (none on biases and BatchNorm) overrides the schedule's."""
    options = {"lr": schedule.lr, "momentum": schedule.momentum, "weight_decay": schedule.weight_decay}
    if nesterov:
        options["nesterov"] = True
    return optimizer(parameter_groups, **options)


class RowsCsv:
    """A CSV log kept whole in the checkpoint (``rows``, a list the task appends to), rewritten
    atomically before every checkpoint; it records no byte length (``sync`` returns 0)."""

    def __init__(self, path: Path, columns: Iterable[str], rows: list, format_row: Callable = list):
        self.path, self.columns, self.rows, self.format_row = Path(path), list(columns), rows, format_row

    def sync(self) -> int:
        write_csv(self.path, self.columns, (self.format_row(i, row) for i, row in enumerate(self.rows)))
        return 0

    def close(self) -> None:
        pass


class TrainingLoop:
    """See the module. ``scheduler``: a torch scheduler stepped after each update; ``schedule``
    without one: ``Schedule.set_lr`` before each update. ``writes`` False: the loop saves nothing
    (the processes of a distributed run but the first; they still sync the log)."""

    def __init__(self, path: Path, *, iterations: int, desc: str, optimizer: torch.optim.Optimizer,
                 parts: dict[str, Any], fingerprint: str, fmt: int = 1, key: str = "fingerprint",
                 schedule: Schedule | None = None, scheduler=None, checkpoint_every: int | None = None,
                 epoch_length: int | None = None, save_every_epoch: bool = False, log=None, tag: str = "train",
                 writes: bool = True, verbose: bool = True, map_location="cpu",
                 mismatch: str = "was made with another configuration"):
        self.path, self.iterations, self.desc, self.optimizer = Path(path), iterations, desc, optimizer
        self.parts, self.fingerprint, self.fmt, self.key = parts, fingerprint, fmt, key
        self.schedule, self.scheduler = schedule, scheduler
        self.checkpoint_every, self.epoch_length = checkpoint_every, epoch_length
        self.save_every_epoch = save_every_epoch
        self.log, self.tag, self.writes, self.verbose = log, tag, writes, verbose
        self.map_location, self.mismatch = map_location, mismatch
        self.start = self.iteration = 0
        self.done = False
        self.log_bytes = 0

    # --- checkpoints ----------------------------------------------------------------------------

    def resume(self) -> dict | None:
        """The checkpoint to resume from (not yet loaded), or None."""
        return load_matching_checkpoint(self.path, self.fmt, self.fingerprint, self.tag, key=self.key,
                                        map_location=self.map_location, verbose=self.verbose, mismatch=self.mismatch)

    def restore(self, state: dict) -> None:
        """Load the parts from ``state`` and start at its iteration."""
        for name, part in self.parts.items():
            if hasattr(part, "load_state_dict"):
                part.load_state_dict(state[name])
            elif isinstance(part, Part) and part.load is not None:
                part.load(state[name])
        self.start = self.iteration = state["iteration"]
        if self.verbose:
            logger.info(f"[{self.tag}] resuming {self.path} at iteration {self.start}/{self.iterations}")

    def _value(self, part):
        if hasattr(part, "state_dict"):
            return part.state_dict()
        if isinstance(part, Part):
            return part.save()
        return part(self) if callable(part) else part

    def save(self, done: bool = False, final: dict | None = None) -> None:
        """A checkpoint at the current iteration (``final``: values replacing parts')."""
        self.done = done
        self.log_bytes = self.log.sync() if self.log is not None else 0
        if not self.writes:
            return
        state = {"format": self.fmt, self.key: self.fingerprint, "done": done, "iteration": self.iteration,
                 **{name: self._value(part) for name, part in self.parts.items()}}
        state.update(final or {})
        atomic_torch_save(state, self.path)

    # --- the loop -------------------------------------------------------------------------------

    def run(self, batches: Iterable, step: Callable[[Any, int], tuple[torch.Tensor, Any]], *,
            record: Callable[[int, float, torch.Tensor, Any], dict | None] | None = None,
            after_step: Callable[[], None] | None = None, epoch_end: Callable[[int], None] | None = None,
            end: Callable[[], dict | None] | None = None,
            diverged: Callable[[float, int, float], str] | None = None,
            on_iteration: Callable[[int], None] | None = None) -> None:
        """Train on ``batches`` (those of iterations ``[start, iterations)``).

        ``record(iteration, lr, loss, recorded)`` keeps what the task logs and returns the progress
        postfix (or None); ``epoch_end(iteration)`` runs after the last update of each epoch, ``end()``
        after the last update, returning values for the final checkpoint; ``diverged(loss, iteration,
        lr)``: the message of a non-finite loss, checked before the update (no check without it);
        ``on_iteration(done)`` runs last in each iteration (tests simulate crashes with it)."""
        bar = progress(self.iterations, self.desc, initial=self.start, enabled=self.writes)
        try:
            for batch in loader_batches(batches):
                iteration = self.iteration
                if self.scheduler is None and self.schedule is not None:
                    lr = self.schedule.set_lr(self.optimizer, iteration)
                else:
                    lr = self.optimizer.param_groups[0]["lr"]
                loss, recorded = step(batch, iteration)
                if diverged is not None and not math.isfinite(value := float(loss.detach())):
                    raise ConfigError(diverged(value, iteration, lr))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                if after_step is not None:
                    after_step()
                postfix = record(iteration, lr, loss, recorded) if record is not None else None
                self.iteration += 1
                bar.update(1)
                if postfix:
                    bar.set_postfix(**postfix)
                self._after(epoch_end, end)
                if on_iteration is not None:
                    on_iteration(self.iteration)
            if self.iteration == self.start == self.iterations:  # defensive: a checkpoint at the end is marked done
                self.save(True, end() if end is not None else None)
        finally:
            bar.close()
            if self.log is not None:
                self.log.close()
        if self.iteration != self.iterations:  # an empty loader: the data is smaller than one batch
            raise DatasetError(f"{self.desc}: training stopped at iteration {self.iteration} of {self.iterations}")

    def _after(self, epoch_end, end) -> None:
        iteration = self.iteration
        epoch_ends = self.epoch_length is not None and iteration % self.epoch_length == 0
        if epoch_ends and epoch_end is not None:
            epoch_end(iteration)
        if iteration == self.iterations:
            self.save(True, end() if end is not None else None)
        elif (epoch_ends and self.save_every_epoch) or \
                (self.checkpoint_every is not None and iteration % self.checkpoint_every == 0):
            self.save()
