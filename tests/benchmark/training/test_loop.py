"""The one training loop: a crash and resume ends with the uninterrupted weights and log, the
save cadence, the CSV rows, the final check, and the numbers of a plain loop written out by hand."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

import benchmark.training.loop as loop_module
from benchmark.errors import ConfigError, DatasetError
from benchmark.training import CsvLog, ResumableBatches, Schedule
from benchmark.training.loop import Part, TrainingLoop, build_optimizer

N, BATCH, SEED = 24, 4, 7
EPOCH = N // BATCH  # 6 updates per epoch


class Crash(Exception):
    pass


def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=generator)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(N, 1, generator=generator)


def model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.2), nn.Linear(4, 1))


def schedule(iterations: int, torch_scheduler: bool) -> Schedule:
    if torch_scheduler:  # MultiStepLR
        return Schedule("step", iterations, 0.05, BATCH, milestones=(5, 9), weight_decay=1e-3)
    return Schedule("poly", iterations, 0.05, BATCH, decay="poly", warmup_iterations=3, weight_decay=1e-3)


def train(tmp_path, iterations=14, torch_scheduler=False, crash_at=None, checkpoint_every=4, saves=None,
          monkeypatch=None):
    """A tiny regression trained by the loop in ``tmp_path``; returns (model, loop)."""
    x, y = data()
    net = model()
    plan = schedule(iterations, torch_scheduler)
    optimizer = build_optimizer(net.parameters(), plan, nesterov=True)
    scheduler = plan.scheduler(optimizer) if torch_scheduler else None
    losses: list[float] = []
    parts = {"model": Part.weights(net), "optimizer": optimizer, "rng": Part.rng(), "losses": lambda loop: losses,
             "log_bytes": lambda loop: loop.log_bytes}
    if scheduler is not None:
        parts["scheduler"] = Part.scheduler(scheduler)
    loop = TrainingLoop(tmp_path / "checkpoint.pt", iterations=iterations, desc="tiny", optimizer=optimizer,
                        parts=parts, fingerprint=f"tiny {iterations} {torch_scheduler}", schedule=plan,
                        scheduler=scheduler, checkpoint_every=checkpoint_every, epoch_length=EPOCH,
                        save_every_epoch=True, tag="tiny")
    torch.manual_seed(SEED)  # dropout's draws: part of the checkpointed RNG state
    state = loop.resume()
    if state is not None:
        if state["done"]:
            return net, loop
        loop.restore(state)
        losses.extend(state["losses"])
    loop.log = log = CsvLog(tmp_path / "log.csv", ["iteration", "lr", "loss"],
                            state["log_bytes"] if state is not None else None)
    batches = ResumableBatches(N, BATCH, iterations, loop.start, SEED)

    def step(keys, iteration):
        index = torch.tensor([i for i, _ in keys])
        return nn.functional.mse_loss(net(x[index]), y[index]), None

    def record(iteration, lr, loss, _):
        losses.append(float(loss.detach()))
        log.row([iteration, f"{lr:.6g}", f"{losses[-1]:.6f}"])

    def on_iteration(done):
        if done == crash_at:
            raise Crash

    if saves is not None:
        def spy(state, path):
            saves.append((state["iteration"], state["done"]))
            real(state, path)

        real = loop_module.atomic_torch_save
        monkeypatch.setattr(loop_module, "atomic_torch_save", spy)
    net.train()
    loop.run(batches, step, record=record, on_iteration=on_iteration)
    return net, loop


def by_hand(iterations=14, torch_scheduler=False):
    """The same training written out: LR, forward, backward, SGD step, scheduler step."""
    x, y = data()
    net = model()
    plan = schedule(iterations, torch_scheduler)
    optimizer = torch.optim.SGD(net.parameters(), lr=plan.lr, momentum=plan.momentum,
                                weight_decay=plan.weight_decay, nesterov=True)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [5, 9], 0.1) if torch_scheduler else None
    torch.manual_seed(SEED)
    net.train()
    for iteration, keys in enumerate(ResumableBatches(N, BATCH, iterations, 0, SEED)):
        if scheduler is None:
            for group in optimizer.param_groups:
                group["lr"] = plan.lr_at(iteration)
        index = torch.tensor([i for i, _ in keys])
        loss = nn.functional.mse_loss(net(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return net


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("torch_scheduler", [False, True])
def test_the_loop_computes_what_a_plain_loop_computes(tmp_path, torch_scheduler) -> None:
    net, loop = train(tmp_path, torch_scheduler=torch_scheduler)
    assert same_weights(net, by_hand(torch_scheduler=torch_scheduler))
    assert loop.iteration == 14 and torch.load(tmp_path / "checkpoint.pt", weights_only=True)["done"]


@pytest.mark.parametrize("torch_scheduler", [False, True])
@pytest.mark.parametrize("crash_at", [3, 5, 6, 9, 13])
def test_crash_and_resume_equals_uninterrupted(tmp_path, torch_scheduler, crash_at) -> None:
    whole, _ = train(tmp_path / "whole", torch_scheduler=torch_scheduler)
    with pytest.raises(Crash):
        train(tmp_path / "cut", torch_scheduler=torch_scheduler, crash_at=crash_at)
    resumed, loop = train(tmp_path / "cut", torch_scheduler=torch_scheduler)
    # the last checkpoint before the crash: every 4 updates and at each epoch's end (6)
    assert loop.start == max(i for i in (0, 4, 6, 8, 12) if i <= crash_at)
    assert same_weights(resumed, whole)
    assert (tmp_path / "cut" / "log.csv").read_bytes() == (tmp_path / "whole" / "log.csv").read_bytes()
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["losses"] == \
        torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["losses"]


def test_save_cadence(tmp_path, monkeypatch) -> None:
    saves = []
    train(tmp_path, iterations=14, checkpoint_every=4, saves=saves, monkeypatch=monkeypatch)
    assert saves == [(4, False), (6, False), (8, False), (12, False), (14, True)]


def test_a_finished_run_is_not_trained_again(tmp_path, monkeypatch) -> None:
    first, _ = train(tmp_path)
    saves = []
    again, loop = train(tmp_path, saves=saves, monkeypatch=monkeypatch)
    assert saves == [] and loop.iteration == 0


def test_csv_log_has_one_row_per_update(tmp_path) -> None:
    train(tmp_path)
    rows = list(csv.reader((tmp_path / "log.csv").open()))
    assert rows[0] == ["iteration", "lr", "loss"]
    plan = schedule(14, False)
    assert [row[0] for row in rows[1:]] == [str(i) for i in range(14)]
    assert [row[1] for row in rows[1:]] == [f"{plan.lr_at(i):.6g}" for i in range(14)]


def test_another_configuration_starts_afresh(tmp_path, capsys) -> None:
    train(tmp_path, iterations=6)
    capsys.readouterr()
    net, loop = train(tmp_path, iterations=8)
    assert "was made with another configuration; starting afresh" in capsys.readouterr().out
    assert loop.start == 0 and torch.load(tmp_path / "checkpoint.pt", weights_only=True)["iteration"] == 8
    assert same_weights(net, by_hand(iterations=8))


def test_a_loader_that_runs_out_early_is_an_error(tmp_path) -> None:
    net = nn.Linear(1, 1)
    optimizer = build_optimizer(net.parameters(), Schedule("x", 3, 0.1, 1))
    loop = TrainingLoop(tmp_path / "c.pt", iterations=3, desc="short", optimizer=optimizer, parts={},
                        fingerprint="f")
    with pytest.raises(DatasetError, match="short: training stopped at iteration 1 of 3"):
        loop.run([torch.ones(1, 1)], lambda batch, iteration: (net(batch).sum(), None))


def test_a_non_finite_loss_stops_before_the_update(tmp_path) -> None:
    net = nn.Linear(1, 1)
    before = net.weight.detach().clone()
    optimizer = build_optimizer(net.parameters(), Schedule("x", 3, 0.1, 1))
    loop = TrainingLoop(tmp_path / "c.pt", iterations=3, desc="nan", optimizer=optimizer, parts={},
                        fingerprint="f")
    with pytest.raises(ConfigError, match="loss nan at 0, lr 0.1"):
        loop.run([torch.full((1, 1), float("nan"))], lambda batch, iteration: (net(batch).sum(), None),
                 diverged=lambda value, iteration, lr: f"loss {value} at {iteration}, lr {lr}")
    assert torch.equal(net.weight.detach(), before)
