"""LARS (You, Gitman & Ginsburg 2017) as SimCLR uses it for large batches.

Per parameter tensor w with gradient g, weight decay wd, learning rate lr, momentum m:

    d = g + wd * w
    local_lr = lr * eta * |w| / |d|   for weight matrices/kernels (ndim > 1) when both norms > 0,
               lr                     otherwise (biases and BatchNorm parameters are not adapted)
    v = m * v + local_lr * d
    w = w - v

which is SimCLR's LARSOptimizer (the learning rate inside the momentum buffer, as TensorFlow's
momentum optimiser; eta = 0.001). Weight decay per parameter group, so the loop's groups keep it
off biases and BatchNorm parameters, as SimCLR does.
"""

from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001):
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(f"LARS: invalid lr {lr}, momentum {momentum}, weight_decay {weight_decay} or "
                             f"trust_coefficient {trust_coefficient}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "trust_coefficient": trust_coefficient})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                local_lr = group["lr"]
                if p.ndim > 1:
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0),
                                        group["trust_coefficient"] * w_norm / d_norm.clamp_min(1e-30),
                                        torch.ones_like(w_norm))
                    local_lr = trust * group["lr"]
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(d * local_lr)
                p.sub_(buffer)
        return loss
