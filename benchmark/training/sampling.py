"""Data order of a training as a function of (seed, epoch): resumable at any iteration, the same
whatever the number of DataLoader workers or processes.

Iteration ``it`` of a run with ``ipe`` iterations per epoch reads batch ``it % ipe`` of epoch
``it // ipe`` (the last incomplete batch of an epoch is dropped), so a run restarted at iteration
``start`` reads exactly the batches an uninterrupted run reads from ``start`` on.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from ..errors import ConfigError, DatasetError
from .seeding import derived_seed

ORDER_TAG = 0x0D3E  # keeps the order's seeds apart from the augmentation's


def epoch_order(seed: int, epoch: int, n: int, tag: int = ORDER_TAG) -> torch.Tensor:
    """The shuffled order of epoch ``epoch``: a deterministic function of (seed, tag, epoch).
    A loop whose orders must differ from another's (with the same seed) gives its own ``tag``."""
    generator = torch.Generator().manual_seed(derived_seed(seed, tag, epoch))
    return torch.randperm(n, generator=generator)


def stream_items(seed: int, n: int, first: int, count: int, tag: int = ORDER_TAG) -> list[int]:
    """Items at positions ``[first, first + count)`` of the endless stream made of each epoch's
    order one after the other (nothing dropped: a batch may span two epochs)."""
    items, order, order_epoch = [], None, -1
    for position in range(first, first + count):
        epoch, offset = divmod(position, n)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(seed, epoch, n, tag), epoch
        items.append(int(order[offset]))
    return items


def _plain_keys(iteration: int, epoch: int, indices: list[int]) -> list:
    return [(i, epoch) for i in indices]


class ResumableBatches(Sampler):
    """Batch sampler for iterations ``[start, iterations)`` of ``batch_size`` items out of ``n``:
    iteration ``it`` is batch ``it % ipe`` of epoch ``it // ipe`` in ``epoch_order(seed, epoch)``.
    With ``world_size`` > 1, this rank takes its contiguous slice of each global batch.

    ``keys(iteration, epoch, indices)`` turns a batch's dataset indices into the dataset's keys
    (default ``(index, epoch)``, for datasets that seed an item's augmentation from both).
    ``known_orders`` ({epoch: order}, from a checkpoint) are used instead of recomputing."""

    def __init__(self, n: int, batch_size: int, iterations: int, start: int = 0, seed: int = 0, *,
                 iterations_per_epoch: int | None = None, rank: int = 0, world_size: int = 1,
                 known_orders: dict[int, torch.Tensor] | None = None,
                 keys: Callable[[int, int, list[int]], list] | None = None, tag: int = ORDER_TAG):
        self.n, self.batch_size, self.iterations, self.start, self.seed = n, batch_size, iterations, start, seed
        self.ipe = iterations_per_epoch if iterations_per_epoch is not None else n // batch_size
        if self.ipe < 1:
            raise ConfigError(f"batch_size {batch_size} is larger than the {n} training images")
        self.rank, self.world_size, self.tag = rank, world_size, tag
        self.keys = keys or _plain_keys
        self.orders = dict(known_orders or {})

    def order(self, epoch: int) -> torch.Tensor:
        if epoch not in self.orders:
            # keep two epochs: the loader's prefetching may run one epoch ahead of a checkpoint
            self.orders = {e: o for e, o in self.orders.items() if e == epoch - 1}
            self.orders[epoch] = epoch_order(self.seed, epoch, self.n, self.tag)
        return self.orders[epoch]

    def __len__(self) -> int:
        return self.iterations - self.start

    def __iter__(self) -> Iterator[list]:
        batch, local = self.batch_size, self.batch_size // self.world_size
        for iteration in range(self.start, self.iterations):
            epoch, position = divmod(iteration, self.ipe)
            chunk = self.order(epoch)[position * batch:(position + 1) * batch]
            mine = chunk[self.rank * local:(self.rank + 1) * local]
            yield self.keys(iteration, epoch, [int(i) for i in mine])


def loader_batches(loader: DataLoader | Iterable) -> Iterator:
    """Iterate ``loader``; a ``DatasetError`` raised in a worker process is raised again with its
    own message (the one that names the file), not the worker's wrapped traceback."""
    try:
        yield from loader
    except DatasetError as exc:
        raise DatasetError.from_worker(exc) from None
