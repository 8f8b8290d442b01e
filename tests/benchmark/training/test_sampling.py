"""Data order: epochs are permutations, a run resumed at any iteration reads the batches of an
uninterrupted run, ranks split each global batch, a worker's DatasetError keeps its message."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from benchmark.errors import ConfigError, DatasetError
from benchmark.training import ResumableBatches, epoch_order, loader_batches, stream_items


def test_epoch_order_is_a_seeded_permutation() -> None:
    order = epoch_order(3, 2, 50)
    assert sorted(order.tolist()) == list(range(50))
    assert torch.equal(order, epoch_order(3, 2, 50))
    assert not torch.equal(order, epoch_order(3, 3, 50))
    assert not torch.equal(order, epoch_order(4, 2, 50))
    assert not torch.equal(order, epoch_order(3, 2, 50, tag=0xD0))


def test_every_epoch_reads_each_item_at_most_once_and_drops_the_last_batch() -> None:
    batches = list(ResumableBatches(10, 3, 9, seed=1))  # 3 iterations per epoch, 1 item dropped
    for epoch in range(3):
        keys = [key for batch in batches[3 * epoch:3 * epoch + 3] for key in batch]
        assert all(e == epoch for _, e in keys)
        assert len({i for i, _ in keys}) == 9
        assert [i for i, _ in keys] == epoch_order(1, epoch, 10)[:9].tolist()


@pytest.mark.parametrize("cut", [1, 4, 5, 11])
def test_resumed_sampling_equals_an_uninterrupted_run(cut) -> None:
    whole = list(ResumableBatches(17, 4, 13, seed=7))
    first = list(ResumableBatches(17, 4, 13, 0, 7))[:cut]
    # the resumed sampler knows the interrupted epoch's order from the checkpoint
    epoch = cut // (17 // 4)
    resumed = list(ResumableBatches(17, 4, 13, cut, 7, known_orders={epoch: epoch_order(7, epoch, 17)}))
    assert first + resumed == whole
    assert list(ResumableBatches(17, 4, 13, cut, 7)) == whole[cut:]


def test_ranks_take_contiguous_slices_of_the_global_batch() -> None:
    whole = list(ResumableBatches(16, 4, 8, seed=2))
    ranks = [list(ResumableBatches(16, 4, 8, seed=2, rank=r, world_size=2)) for r in range(2)]
    for it, batch in enumerate(whole):
        assert ranks[0][it] + ranks[1][it] == batch


def test_custom_keys_and_too_large_a_batch() -> None:
    sampler = ResumableBatches(8, 4, 3, seed=0, keys=lambda it, epoch, idx: [(i, 100 + it) for i in idx])
    assert [{s for _, s in batch} for batch in sampler] == [{100}, {101}, {102}]
    with pytest.raises(ConfigError, match="batch_size 9 is larger than the 8 training images"):
        ResumableBatches(8, 9, 3)


def test_stream_items_concatenates_the_epoch_orders() -> None:
    expected = torch.cat([epoch_order(5, e, 6, tag=9) for e in range(3)]).tolist()
    assert stream_items(5, 6, 4, 10, tag=9) == expected[4:14]


class Broken(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        if i == 2:
            raise DatasetError("image /data/broken.jpg cannot be decoded; replace it")
        return torch.zeros(1)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_worker_error_keeps_the_message_that_names_the_file(workers) -> None:
    loader = DataLoader(Broken(), batch_size=1, num_workers=workers)
    with pytest.raises(DatasetError) as info:
        list(loader_batches(loader))
    assert str(info.value) == "image /data/broken.jpg cannot be decoded; replace it"
