"""The one schedule type: each decay and warm-up against its closed form, the torch schedulers it
builds against its own LRs, and the records tasks keep in their fingerprints."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.training import Schedule


def _optimizer(lr: float, **groups) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def _stepped(schedule: Schedule, optimizer) -> list[float]:
    """The LR each update uses when the scheduler is stepped once per iteration."""
    scheduler = schedule.scheduler(optimizer)
    lrs = []
    for _ in range(schedule.iterations):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_step_decay_closed_form_and_multisteplr() -> None:
    schedule = Schedule("s", 10, 0.01, 512, reference_batch=256, milestones=(3, 7), gamma=0.1)
    assert schedule.lr == 0.02
    expected = [0.02] * 3 + [0.002] * 4 + [0.0002] * 3
    assert [schedule.lr_at(i) for i in range(10)] == pytest.approx(expected, rel=1e-12)
    optimizer = _optimizer(schedule.lr)
    assert isinstance(schedule.scheduler(optimizer), torch.optim.lr_scheduler.MultiStepLR)
    assert _stepped(schedule, _optimizer(schedule.lr)) == pytest.approx(expected, rel=1e-12)


def test_affine_warmup_detectron() -> None:
    # Detectron: factor rising linearly from 1/3 at iteration 0 to 1 at the end of the warm-up,
    # applied to the step-decayed LR
    schedule = Schedule("d", 20, 0.002, 2, reference_batch=4, milestones=(3,), warmup_iterations=4)
    lr = 0.001
    assert schedule.lr_at(0) == pytest.approx(lr / 3)
    assert schedule.lr_at(2) == pytest.approx(lr * (1 / 3 * 0.5 + 0.5))
    assert schedule.lr_at(3) == pytest.approx(0.1 * lr * (1 / 3 * 0.25 + 0.75))  # decayed and still warming up
    assert schedule.lr_at(4) == pytest.approx(0.1 * lr)
    assert [schedule.lr_at(i) for i in range(20)] == pytest.approx(_stepped(schedule, _optimizer(lr)), rel=1e-12)


def test_ramp_warmup_then_cosine() -> None:
    total, warmup, lr = 12, 3, 0.3
    schedule = Schedule("c", total, lr, 8, decay="cosine", warmup_iterations=warmup, warmup="ramp")
    expected = [lr * (i + 1) / warmup for i in range(warmup)] + \
               [lr * 0.5 * (1 + math.cos(math.pi * (i - warmup) / (total - warmup))) for i in range(warmup, total)]
    assert [schedule.lr_at(i) for i in range(total)] == pytest.approx(expected, rel=1e-12)
    # LambdaLR multiplies the optimiser's LR by factor(): the same floats, bit for bit
    assert _stepped(schedule, _optimizer(lr)) == [schedule.lr_at(i) for i in range(total)]


def test_poly() -> None:
    schedule = Schedule("p", 10, 0.02, 16, decay="poly", power=0.9)
    assert [schedule.lr_at(i) for i in range(10)] == pytest.approx([0.02 * (1 - i / 10) ** 0.9 for i in range(10)])
    assert schedule.lr_at(0) == 0.02


def test_onecycle_follows_torch_and_cycles_momentum() -> None:
    schedule = Schedule("o", 40, 0.1, 16, decay="onecycle", pct_start=0.15)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9, nesterov=True)
    scheduler = schedule.scheduler(optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    momenta = []
    for i in range(40):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(schedule.lr_at(i), rel=1e-9, abs=1e-15), i
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    assert schedule.lr_at(0) == pytest.approx(0.1 / 25)
    assert max(schedule.lr_at(i) for i in range(40)) == pytest.approx(0.1, rel=1e-3)
    assert schedule.lr_at(39) == pytest.approx(0.1 / 25 / 1e4)
    assert min(momenta) == pytest.approx(0.85, abs=1e-3) and max(momenta) == pytest.approx(0.95)


def test_set_lr_honours_group_multipliers() -> None:
    schedule = Schedule("d", 10, 0.004, 4, reference_batch=4, milestones=(5,))
    optimizer = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_mult": 1.0},
                                 {"params": [torch.nn.Parameter(torch.zeros(1))], "lr_mult": 2.0},
                                 {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=1.0)
    assert schedule.set_lr(optimizer, 6) == pytest.approx(0.0004)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0004, 0.0008, 0.0004])


def test_describe_reports_the_recorded_fields_only() -> None:
    schedule = Schedule("custom", 12, 0.5, 8, reference_batch=256, milestones=(4,), weight_decay=1e-4,
                        iterations_per_epoch=4, recorded=("name", "iterations", "milestones", "lr"))
    assert schedule.describe() == {"name": "custom", "iterations": 12, "milestones": [4], "lr": 0.5 * 8 / 256}
    assert schedule.epochs == 3
    full = Schedule("x", 5, 0.1, 2).describe()
    assert full["decay"] == "step" and full["lr"] == 0.1 and "recorded" not in full


def test_unknown_decay_or_warmup_is_an_error() -> None:
    with pytest.raises(ValueError, match="decay"):
        Schedule("x", 5, 0.1, 2, decay="linear")
    with pytest.raises(ValueError, match="warmup"):
        Schedule("x", 5, 0.1, 2, warmup="exp")
