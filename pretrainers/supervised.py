"""`supervised`: train the architecture with labels on a labelled dataset, save a checkpoint.

On the generated VOC07 data this is the "good representation" baseline of the mini suite. The
checkpoint is keyed by the training config, so a rerun loads it instead of training again.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING

from benchmark.config import config_hash
from benchmark.datasets.voc import load_voc
from benchmark.diskspace import parameter_bytes
from benchmark.plugin_api import LoadedModel, Pretrainer, RunContext
from benchmark.errors import ConfigError
from benchmark.options import Choice, Float, Int, Name, declare, identity_options
from benchmark.paths import inside

from benchmark.sweeps import nested_subset

from .common import ARCH, CROP_SCALE, DATA_FRACTION, DATA_SEED, IMAGE_SIZE, SEED, freeze, subset_meta

if TYPE_CHECKING:
    from torch import nn

    from benchmark.models import Architecture


# torch's OneCycleLR (momentum cycling between 0.85 and 0.95 included), 15 % of the run rising
SCHEDULE = {"decay": "onecycle", "pct_start": 0.15}


def replace_head(model: nn.Module, num_classes: int) -> None:
    from torch import nn

    if hasattr(model, "fc"):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    elif hasattr(model, "reset_classifier"):  # timm/<model> architectures (ViT's head, ConvNeXt's head.fc)
        model.reset_classifier(num_classes)
    elif hasattr(model, "classifier"):
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
    else:
        raise ConfigError(f"supervised pretrainer: cannot find the classifier of {type(model).__name__}")


class Supervised(Pretrainer):
    name = "supervised"
    options = declare({
        "arch": ARCH, "dataset": Choice("voc07"), "split": Name("trainval"), "epochs": Int(30, min=1),
        "image_size": IMAGE_SIZE, "crop_scale": CROP_SCALE, "batch_size": Int(64, min=1),
        "lr": Float(0.1, min=0, min_open=True), "momentum": Float(0.9, min=0, max=1),
        "weight_decay": Float(1e-4, min=0),
        "seed": SEED, "data_fraction": DATA_FRACTION, "data_seed": DATA_SEED,
    })

    def checkpoint_bytes(self, arch: Architecture) -> int:
        return parameter_bytes(arch.name)  # the trained weights; the training state is transient

    def build(self, ctx: RunContext, model_name: str) -> LoadedModel:
        from benchmark.checkpoint import load_trunk_weights
        from benchmark.models import create_model
        from benchmark.models.backbone import get_architecture

        cfg = self.config
        path = inside(ctx.run_dir, "checkpoints", f"{model_name}-{self.config_hash()}.pth")
        if not path.exists():
            self.train(ctx, model_name, path)
        model = create_model(cfg.arch, seed=cfg.seed)
        info = load_trunk_weights(model, get_architecture(cfg.arch), path)
        meta = json.loads(path.with_suffix(".json").read_text())
        return freeze(model_name, cfg.arch, model, {"pretrainer": "supervised", **info, **meta})

    def config_hash(self) -> str:
        return config_hash(identity_options(self.config, type(self).options))

    def train(self, ctx: RunContext, model_name: str, path) -> None:
        import torch
        from torch import nn
        from torch.utils.data import DataLoader

        from benchmark.datasets.images import ImageFileDataset, train_transform
        from benchmark.models import create_model
        from benchmark.training import (Part, Schedule, TrainingLoop, atomic_torch_save, atomic_write, build_optimizer,
                                        seed_everything, seed_worker)

        cfg = self.config
        data = load_voc(ctx.data_root, cfg.split)
        total_images = len(data.image_ids)
        if cfg.data_fraction < 1:
            keep = nested_subset(list(data.image_ids), cfg.data_fraction, cfg.data_seed)
            data = replace(data, image_ids=[data.image_ids[i] for i in keep],
                           image_paths=[data.image_paths[i] for i in keep], labels=data.labels[keep],
                           objects=[data.objects[i] for i in keep])
        generator = seed_everything(cfg.seed)
        model = create_model(cfg.arch, seed=cfg.seed)
        replace_head(model, data.labels.shape[1])
        targets = torch.as_tensor(data.labels == 1, dtype=torch.float32)
        loader = DataLoader(
            ImageFileDataset(data.image_paths, train_transform(cfg.image_size, cfg.crop_scale), targets),
            batch_size=cfg.batch_size, shuffle=True, drop_last=len(targets) > cfg.batch_size,
            num_workers=ctx.num_workers, worker_init_fn=seed_worker, generator=generator,
        )
        decay = [p for n, p in model.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # BN and biases
        per_epoch = len(loader)
        schedule = Schedule("onecycle", cfg.epochs * per_epoch, cfg.lr, cfg.batch_size,
                            weight_decay=cfg.weight_decay, momentum=cfg.momentum, **SCHEDULE)
        optimizer = build_optimizer([{"params": decay, "weight_decay": cfg.weight_decay},
                                     {"params": no_decay, "weight_decay": 0}], schedule, nesterov=True)
        scheduler = schedule.scheduler(optimizer)
        model.to(ctx.device).train()
        loss_fn = nn.BCEWithLogitsLoss()
        history = []
        epoch_sums = [0.0, 0]  # the epoch's summed loss and image count
        # resumable at epoch boundaries (the loader's shuffle cannot start mid-epoch): a preempted or
        # killed job continues where it stopped and ends with the weights an uninterrupted run would have
        loop = TrainingLoop(path.with_name(path.stem + ".partial.pth"), iterations=schedule.iterations,
                            desc=f"train {model_name}", optimizer=optimizer, scheduler=scheduler,
                            fingerprint=self.config_hash(), tag="supervised", map_location=ctx.device,
                            epoch_length=per_epoch, save_every_epoch=True,
                            parts={"model": Part.weights(model), "optimizer": optimizer,
                                   "scheduler": Part.scheduler(scheduler),
                                   "generator": Part(generator.get_state, generator.set_state),
                                   "torch_rng": Part(torch.get_rng_state, torch.set_rng_state),
                                   "epoch": lambda loop: loop.iteration // per_epoch,
                                   "history": lambda loop: history})
        state = loop.resume()
        if state is not None:
            loop.restore(state)
            history = state["history"]

        def batches():
            # the sampler draws from ``generator`` once more as it runs out: it must run out before the
            # epoch's last update, so that the epoch's checkpoint holds the generator past that draw
            for _ in range(loop.start // per_epoch, cfg.epochs):
                epoch = iter(loader)
                for _ in range(per_epoch - 1):
                    yield next(epoch)
                last = next(epoch)
                for _ in epoch:
                    raise AssertionError("the loader yielded more batches than its length")
                yield last

        def step(batch, iteration):
            images, labels = batch[0].to(ctx.device), batch[1].to(ctx.device)
            return loss_fn(model(images), labels), len(images)

        def record(iteration, lr, loss, n):
            epoch_sums[0] += loss.item() * n
            epoch_sums[1] += n
            return {"epoch": iteration // per_epoch, "loss": f"{loss.item():.3f}"}

        def epoch_end(iteration):
            history.append(round(epoch_sums[0] / epoch_sums[1], 4))
            epoch_sums[:] = [0.0, 0]

        loop.run(batches(), step, record=record, epoch_end=epoch_end)
        meta = {"trained_on": f"{cfg.dataset}/{cfg.split}", "train_images": len(targets),
                "epochs": cfg.epochs, "final_train_loss": history[-1], "loss_history": history,
                "train_config_hash": self.config_hash(),
                **subset_meta(cfg.data_fraction, cfg.data_seed, len(targets), total_images)}
        # metadata first: the checkpoint's existence is what marks training as done
        atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=1))
        atomic_torch_save({"state_dict": model.cpu().state_dict(), "meta": meta}, path)
        loop.path.unlink(missing_ok=True)
