"""The interface every pretext method implements, and the registry they live in.

A method owns the trunk (a torchvision-layout network from ``benchmark.models.create_model``) and
whatever heads, memory banks or momentum encoders its paper needs. The shared training loop
(``train_pretext``) calls, in this order:

    method.epoch_start(epoch, plain_loader, device)   # once per epoch (DeepCluster clusters here)
    for each batch: loss, metrics = method(batch)     # batch: collated outputs of method.sample
                    loss.backward(); optimizer.step()
                    method.after_step()                # MoCo's momentum update / queue, NAT, ...

``sample`` runs in DataLoader workers: it turns ONE decoded RGB image (and its dataset index)
into the tensors of that example, using only the given ``torch.Generator`` for randomness so that
a run is reproducible. Only ``method.trunk``'s weights end up in the saved checkpoint (in the
torchvision key layout the benchmark's strict checkpoint loader reads); everything else is the
method's training state.
"""

from __future__ import annotations

from typing import ClassVar, Iterable

import torch
from PIL import Image
from torch import nn

from benchmark.models import Architecture
from benchmark.registry import Registry

# one module per method under pretrainers/; a module is listed once it exists
_MODERN_AND_RECENT = ()
_CLASSIC = ()
PRETEXT_METHODS: Registry = Registry(
    "pretext_methods", builtin_modules=tuple(f"pretrainers.{m}" for m in _MODERN_AND_RECENT + _CLASSIC))


class PretextMethod(nn.Module):
    name: ClassVar[str]
    # method hyper-parameters (key -> default), validated like every other option block
    options: ClassVar[dict] = {}

    def __init__(self, trunk: nn.Module, arch: Architecture, image_size: int, **options):
        super().__init__()
        self.trunk = trunk
        self.arch = arch
        self.image_size = image_size
        self.config = options

    def sample(self, image: Image.Image, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The training example(s) made from one image; returned tensors are collated by key."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Pretext loss of a batch and metrics to log (e.g. {"acc": 0.41})."""
        raise NotImplementedError

    def epoch_start(self, epoch: int, plain_loader: Iterable, device: torch.device) -> None:
        """Called before each epoch; ``plain_loader`` yields (images, indices) batches of the whole
        dataset with a deterministic resize + centre crop to ``image_size`` (no augmentation)."""

    def after_step(self) -> None:
        """Called after each optimizer step."""

    def parameter_groups(self) -> list[dict]:
        """Parameters to optimise; by default everything that requires grad (weight decay on
        tensors with more than one dimension only)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": [p for p in params if p.ndim > 1]},
                {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
