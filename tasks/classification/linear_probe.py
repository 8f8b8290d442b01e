"""`linear_probe`: a grid of linear heads (learning rate x layer x pooling) trained together in ONE
pass over cached frozen features; the best head chosen on validation, then evaluated once on test.

This is the cached-feature variant: every epoch sees the same features of the un-augmented images
(the SVM transform: resize, no crop, no flip), so the heads train fast on stored features and can
share each mini-batch. dinov2's linear evaluation also trains its grid of heads (learning rates x
last-n blocks x with/without average-pooled patch tokens) together, but from a forward pass of the
frozen trunk on AUGMENTED images (random resized crop + flip) at every step, for 12,500
iterations; its numbers are usually a little higher on large datasets (augmentation regularises)
and its cost is that of the trunk's forward passes. ``linear_places205`` is ssl-bench's
image-based head training (Goyal et al.'s protocol).

Heads: Linear on the layer's cached features (``pooling: flat``, the protocol's pooling grid
flattened) or on their average over the grid cells (``mean``: C dims), weights N(0, 0.01), bias 0.
SGD momentum 0.9, no weight decay, cosine learning rate to 0 over ``epochs``, batch ``batch_size``
(every head sees the same batches: order from (seed, epoch)). Each head's learning rate is
``lr x batch_size / 256``, as dinov2 scales its grid. A head whose loss becomes non-finite is
marked diverged and scores 0.

Selection: top-1 on the validation part after the last epoch, over all heads (ties: the first in
grid order: layer, pooling, learning rate); the chosen head is then evaluated on test, once. Per
layer, the best head of that layer (chosen the same way) is evaluated too. Curves of every head
(train loss and validation top-1 per epoch) go to ``RUN/linear_probe/<task>/<model>/curves.csv``
and the final heads to ``heads.pt`` beside it.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import pandas as pd

from benchmark.plugin_api import LoadedModel, RunContext, Task
from benchmark.options import Choice, Float, Int, ListOf, declare
from benchmark.paths import inside
from benchmark.paths import atomic_write

from .common import (DATA_OPTIONS, MEAN_PER_CLASS, ClassificationTask, headline_metric, load_part,
                     mean_per_class_row, transfer_column)

if TYPE_CHECKING:
    import torch

    from benchmark.models import Architecture

NAME = "linear_probe"
# dinov2's grid (eval/linear.py): 13 learning rates, scaled by batch / 256
LEARNING_RATES = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1]
POOLINGS = ("flat", "mean")
SELECTION = "head (lr x layer x pooling) by top-1 on val after the last epoch"


def pooled(features: torch.Tensor, grid: int, pooling: str) -> torch.Tensor:
    """The head input: cached features (n, C * grid * grid, channel-major as the trunk flattens
    them) as they are, or averaged over the grid cells."""
    if pooling == "flat" or grid == 1:
        return features
    return features.reshape(len(features), -1, grid * grid).mean(-1)


class HeadGrid:
    """H linear heads per input (layer, pooling) with their own learning rates, as batched tensors."""

    def __init__(self, dim: int, num_classes: int, lrs: list[float], generator: torch.Generator):
        import torch

        self.lrs = torch.tensor(lrs, dtype=torch.float32)
        self.weight = torch.randn(len(lrs), dim, num_classes, generator=generator) * 0.01
        self.bias = torch.zeros(len(lrs), 1, num_classes)
        self.momentum = [torch.zeros_like(self.weight), torch.zeros_like(self.bias)]
        self.diverged = torch.zeros(len(lrs), dtype=torch.bool)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.matmul(x, self.weight) + self.bias  # (H, b, K)

    def step(self, x: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
        """One SGD step of every head on the batch; returns each head's mean loss."""
        import torch

        logits = self.logits(x)
        logp = torch.log_softmax(logits, -1)
        loss = -logp.gather(-1, y.expand(len(self.lrs), -1).unsqueeze(-1)).squeeze(-1).mean(-1)
        self.diverged |= ~torch.isfinite(loss)
        # d mean-CE / d logits = (softmax - onehot) / b, per head: no autograd graph needed
        residual = logp.exp()
        residual[:, torch.arange(len(y)), y] -= 1
        residual /= len(y)
        grads = [torch.matmul(x.T, residual), residual.sum(1, keepdim=True)]
        lr = (self.lrs * scale).masked_fill(self.diverged, 0)[:, None, None]
        for param, buf, grad in zip((self.weight, self.bias), self.momentum, grads):
            buf.mul_(0.9).add_(torch.nan_to_num(grad))
            param.sub_(lr * buf)
        return loss


def _topk(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    import torch

    k = min(k, logits.shape[-1])
    ranked = torch.argsort(logits, dim=-1, descending=True, stable=True)[..., :k]
    return 100.0 * (ranked == labels[None, :, None]).any(-1).double().mean(-1)


class LinearProbe(ClassificationTask, Task):
    name = NAME
    trains = True
    options = declare({
        **DATA_OPTIONS,
        "learning_rates": ListOf(Float(min=0, min_open=True), LEARNING_RATES, min_length=1, unique=True),
        "poolings": ListOf(Choice(*POOLINGS), ["flat", "mean"], min_length=1, unique=True),
        "epochs": Int(10, min=1),
        "batch_size": Int(256, min=1),
    })

    def units(self, arch: Architecture) -> list[str]:
        return ["grid"]

    @staticmethod
    def train(ctx, epochs, n, batch, scale, total, inputs, grids, y_train, y_val, lrs, curves) -> None:
        """Every head sees the same batches in the same order: one pass over the features per epoch."""
        import torch

        from benchmark.training import Schedule, epoch_order

        steps_per_epoch = math.ceil(n / batch)
        # each head's LR is its grid value x scale x this cosine factor (1 at the first step, 0 at the end)
        cosine = Schedule("linear_probe", iterations=total, base_lr=1.0, batch_size=batch, decay="cosine")
        step = 0
        for epoch in range(epochs):
            order = epoch_order(ctx.seed, epoch, n)
            losses = {key: torch.zeros(len(lrs)) for key in grids}
            for start in range(0, n, batch):
                index = order[start:start + batch]
                for key, heads in grids.items():
                    losses[key] += heads.step(inputs[key][0][index], y_train[index], scale * cosine.factor(step))
                step += 1
            for key, heads in grids.items():
                val_top1 = _topk(heads.logits(inputs[key][1]), y_val, 1).masked_fill(heads.diverged, 0.0)
                for h, lr in enumerate(lrs):
                    curves.append({"epoch": epoch + 1, "layer": key[0], "pooling": key[1], "lr": lr,
                                   "train_loss": float(losses[key][h] / steps_per_epoch),
                                   "val_top1": float(val_top1[h]), "diverged": bool(heads.diverged[h])})

    def output_dir(self, ctx: RunContext, model: LoadedModel):
        return inside(ctx.run_dir, NAME, self.instance_name or NAME, model.name)

    def run(self, ctx: RunContext, model: LoadedModel, unit: str) -> list[dict]:
        import torch

        from benchmark.training import atomic_torch_save, derived_seed

        from .logreg_solver import small_problem_threads

        c = self.config
        data = self.data(ctx)
        features = self.split_features(ctx, model, data)
        layers = self.layers(model.arch)
        lrs = sorted(c.learning_rates)
        y_train = torch.as_tensor(data.train.labels)
        y_val = torch.as_tensor(data.val.labels)
        generator = torch.Generator().manual_seed(derived_seed(ctx.seed, 0x11EA))
        inputs, grids = {}, {}  # (layer, pooling) -> (train, val) tensors / HeadGrid
        for layer in layers:
            grid = model.arch.pools[layer].grid
            train = torch.from_numpy(load_part(features, data.train, layer))
            val = torch.from_numpy(load_part(features, data.val, layer))
            for pooling in c.poolings:
                if pooling == "mean" and grid == 1:
                    continue  # the same input as flat
                inputs[layer, pooling] = (pooled(train, grid, pooling), pooled(val, grid, pooling))
                grids[layer, pooling] = HeadGrid(inputs[layer, pooling][0].shape[1], data.num_classes, lrs, generator)
        n, batch = len(y_train), min(c.batch_size, len(y_train))
        total = math.ceil(n / batch) * c.epochs
        scale = batch / 256
        curves = []
        work = sum(batch * x[0].shape[1] * data.num_classes * len(lrs) for x in inputs.values())
        with small_problem_threads(torch.device("cpu"), work):
            self.train(ctx, c.epochs, n, batch, scale, total, inputs, grids, y_train, y_val, lrs, curves)
        out = self.output_dir(ctx, model)
        curves = pd.DataFrame(curves)
        buffer = io.StringIO()
        curves.to_csv(buffer, index=False)
        atomic_write(out / "curves.csv", buffer.getvalue())
        atomic_torch_save({f"{layer}/{pooling}": {"weight": h.weight, "bias": h.bias, "lrs": h.lrs}
                           for (layer, pooling), h in grids.items()}, out / "heads.pt")

        final = curves[curves.epoch == c.epochs].reset_index(drop=True)  # grid order: layer, pooling, lr

        def evaluate(row) -> tuple[float, float, torch.Tensor]:
            heads = grids[row.layer, row.pooling]
            h = lrs.index(row.lr)
            test = torch.from_numpy(load_part(features, data.test, row.layer))  # read only for the chosen head
            x = pooled(test, model.arch.pools[row.layer].grid, row.pooling)
            logits = heads.logits(x)[h:h + 1]
            y_test = torch.as_tensor(data.test.labels)
            correct = (logits[0].argmax(-1) == y_test).double().numpy()  # per image (ties: the lower class)
            return float(_topk(logits, y_test, 1)[0]), float(_topk(logits, y_test, 5)[0]), correct

        common = {**data.provenance(), "image_size": c.image_size or model.arch.reference_input_size,
                  "epochs": c.epochs, "batch_size": batch, "heads": len(final), "cost_selection": "val",
                  "selection": SELECTION, "variant": "cached features, no augmentation",
                  "curves": str(out / "curves.csv")}
        rows = []
        for scope, candidates in [("all", final)] + [(layer, final[final.layer == layer]) for layer in layers]:
            best = candidates.loc[candidates["val_top1"].idxmax()]  # first maximum in grid order
            top1, top5, correct = evaluate(best)
            base = {**common, "layer": scope, "selected_layer": best.layer, "selected_pooling": best.pooling,
                    "selected_lr": best.lr, "val_top1": best.val_top1,
                    "selection": SELECTION if scope == "all" else SELECTION.replace("lr x layer x pooling",
                                                                                      f"lr x pooling of {scope}")}
            rows += [{**base, "metric": "top1", "value": top1,
                      "transfer_column": transfer_column(data, f"{NAME} best head", "top1") if scope == "all" else ""},
                     {**base, "metric": "top5", "value": top5}]
            if headline_metric(data) == MEAN_PER_CLASS:  # the transfer protocol's metric of this dataset
                rows.append(mean_per_class_row(base, correct, data.test.labels,
                                               transfer_column(data, f"{NAME} best head", MEAN_PER_CLASS)
                                               if scope == "all" else ""))
        for r in final.itertuples():
            rows.append({**common, "layer": r.layer, "metric": "val_top1", "evaluation": f"lr={r.lr:g} {r.pooling}",
                         "lr": r.lr, "pooling": r.pooling, "diverged": r.diverged, "value": r.val_top1})
        return rows
