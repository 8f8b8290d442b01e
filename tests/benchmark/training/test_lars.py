"""LARS against a hand computation of SimCLR's update rule."""

from __future__ import annotations

import pytest
import torch

from pretrainers.pretext.lars import LARS
from pretrainers.pretext.trainer import build_optimizer, resolve_training
from pretrainers.pretext.method import PRETEXT_METHODS
from benchmark.errors import ConfigError


def test_two_steps_match_the_update_rule_by_hand() -> None:
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # |w| = 5
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [weight]}, {"params": [bias], "weight_decay": 0.0}], lr=0.5, momentum=0.9,
               weight_decay=0.1)
    weight.grad = torch.tensor([[0.2, -0.1]])
    bias.grad = torch.tensor([2.0])
    opt.step()
    # weight: d = g + 0.1 w = (0.5, 0.3); |d| = sqrt(0.34); local lr = 0.5 * 0.001 * 5 / |d|
    d = torch.tensor([[0.5, 0.3]])
    local = 0.5 * 0.001 * 5 / 0.34 ** 0.5
    v1 = local * d
    assert torch.allclose(weight.detach(), torch.tensor([[3.0, 4.0]]) - v1, atol=1e-7)
    # bias: not adapted, no weight decay: v = 0.5 * 2
    assert torch.allclose(bias.detach(), torch.tensor([0.0]))
    # second step: momentum carries the learning rate inside the buffer (TensorFlow's form)
    w1 = weight.detach().clone()
    weight.grad = torch.tensor([[0.0, 0.0]])
    bias.grad = torch.tensor([0.0])
    opt.step()
    d2 = 0.1 * w1
    local2 = 0.5 * 0.001 * float(torch.linalg.vector_norm(w1)) / float(torch.linalg.vector_norm(d2))
    assert torch.allclose(weight.detach(), w1 - (0.9 * v1 + local2 * d2), atol=1e-7)
    assert torch.allclose(bias.detach(), torch.tensor([0.0 - 0.9 * 1.0]))


def test_zero_weights_fall_back_to_the_plain_rate() -> None:
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    opt = LARS([weight], lr=0.1, momentum=0.0)
    weight.grad = torch.ones(2, 2)
    opt.step()
    assert torch.allclose(weight.detach(), torch.full((2, 2), -0.1))


def test_loop_choice_of_optimizer() -> None:
    simclr = PRETEXT_METHODS.get("simclr")
    assert "optimizer" not in resolve_training(simclr)  # sgd: the run ids of SGD runs are unchanged
    training = resolve_training(simclr, optimizer="lars")
    assert training["optimizer"] == "lars" and training["weight_decay"] == pytest.approx(1e-6)
    params = [torch.nn.Parameter(torch.ones(2, 2))]
    assert isinstance(build_optimizer(params, training), LARS)
    assert isinstance(build_optimizer(params, resolve_training(simclr)), torch.optim.SGD)
    with pytest.raises(ConfigError, match=r"training\.optimizer: 'adam' is not allowed; expected one of 'sgd', 'lars'"):
        resolve_training(simclr, optimizer="adam")
