"""`moco`: MoCo v2 (He et al., CVPR 2020, "Momentum Contrast for Unsupervised Visual
Representation Learning"; Chen et al. 2020, "Improved Baselines with Momentum Contrastive
Learning").

Query encoder: the trunk + MLP head (Linear, ReLU, Linear to 128). Key encoder: a copy of both,
never trained by gradients; after every optimiser step its parameters become
``m * key + (1 - m) * query`` (m = 0.999). Keys of earlier batches wait in a queue of K
L2-normalised vectors (a buffer with a pointer: the batch's keys overwrite the oldest ones,
wrapping around). Loss: InfoNCE over (1 positive key + K queued negatives) with temperature 0.2.
Views: MoCo v2's augmentation (crop area 20-100 %, colour jitter 0.4/0.4/0.4/0.1 with probability
0.8, grayscale 0.2, Gaussian blur sigma 0.1-2 with probability 0.5, flip).

Shuffling BN: on several GPUs MoCo computes keys on a batch shuffled across GPUs, so a query and
its key never share BatchNorm statistics (otherwise the batch statistics leak which key is the
positive). On one device this implementation emulates ``shuffle_groups`` GPUs: the query
encoder runs on contiguous chunks of the batch (each chunk normalised by its own statistics, like
one GPU's share), the key encoder on chunks of a randomly shuffled batch, unshuffled afterwards.
``shuffle_groups: 1`` turns it off (plain single-device BN).

The momentum update and the enqueue happen in ``after_step`` (after the optimiser step): the
official code does both at the start / end of the next forward, which is the same sequence.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from benchmark.errors import ConfigError
from benchmark.options import Bool, Float, Int, Range, declare
from pretrainers.common import UNIT_INTERVAL

from ..method import PretextMethod
from .simclr import ProjectionHead, contrastive_views


class MoCo(PretextMethod):
    name = "moco"
    options = declare({
        "queue_size": Int(65536, min=1),  # K
        "momentum": Float(0.999, min=0, max=1),  # m of the key encoder
        "temperature": Float(0.2, min=0, min_open=True),
        "dim": Int(128, min=1),
        "hidden_dim": Int(None, min=1),  # default: the trunk's embedding width (2048 for ResNet-50)
        "shuffle_groups": Int(2, min=1),  # virtual GPUs for shuffling BN on one device; 1: off
        "crop_scale": Range(UNIT_INTERVAL, [0.2, 1.0]),
        "blur": Bool(True),
    })
    # MoCo v2: SGD, LR 0.03 at batch 256, momentum 0.9, weight decay 1e-4, cosine schedule
    training = {"lr": 0.03, "momentum": 0.9, "weight_decay": 1e-4}
    trunks = ("torchvision", "timm")  # pooled features only: a timm ViT trains too

    def __init__(self, trunk, arch, image_size, **options):
        super().__init__(trunk, arch, image_size, **options)
        options = self.config  # validated, with the declared defaults
        k, groups = options.queue_size, options.shuffle_groups
        dim = self.embed_dim
        self.head = ProjectionHead(dim, options.hidden_dim or dim, options.dim, batch_norm=False)
        self.key_trunk = copy.deepcopy(self.trunk)
        self.key_head = copy.deepcopy(self.head)
        for p in self.key_parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(k, options.dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.int64))
        self.m, self.temperature, self.groups = float(options.momentum), float(options.temperature), groups
        self.transform = contrastive_views(image_size, options.crop_scale, jitter_strength=0.5,
                                           blur_p=0.5 if options.blur else 0.0)
        self._keys: torch.Tensor | None = None

    def query_parameters(self) -> list[nn.Parameter]:
        return [*self.trunk.parameters(), *self.head.parameters()]

    def key_parameters(self) -> list[nn.Parameter]:
        return [*self.key_trunk.parameters(), *self.key_head.parameters()]

    def parameter_groups(self) -> list[dict]:
        params = [p for p in self.query_parameters() if p.requires_grad]
        return [{"params": [p for p in params if p.ndim > 1]},
                {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]

    def _encode(self, trunk: nn.Module, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised head(pooled trunk(x)), BatchNorm statistics per chunk (one 'GPU')."""
        outs = []
        for chunk in x.chunk(self.groups):
            outs.append(head(self.pooled(trunk, chunk)))
        return F.normalize(torch.cat(outs), dim=1)

    def sample(self, image: Image.Image, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"query": self.augment(self.transform, image, generator),
                "key": self.augment(self.transform, image, generator)}

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x_q, x_k = batch["query"], batch["key"]
        n = x_q.shape[0]
        if n > len(self.queue):
            raise ConfigError(f"moco: queue_size {len(self.queue)} is smaller than the batch size {n}")
        q = self._encode(self.trunk, self.head, x_q)
        with torch.no_grad():
            shuffle = torch.randperm(n, device=x_k.device) if self.groups > 1 else torch.arange(n, device=x_k.device)
            k = self._encode(self.key_trunk, self.key_head, x_k[shuffle])[torch.argsort(shuffle)]
        positive = (q * k).sum(1, keepdim=True)
        negative = q @ self.queue.clone().t()
        logits = torch.cat([positive, negative], dim=1) / self.temperature
        labels = torch.zeros(n, dtype=torch.int64, device=q.device)
        self._keys = k.detach()
        return F.cross_entropy(logits, labels), {"acc": float((logits.argmax(1) == 0).float().mean())}

    @torch.no_grad()
    def momentum_update(self) -> None:
        for p_q, p_k in zip(self.query_parameters(), self.key_parameters()):
            p_k.mul_(self.m).add_(p_q.detach(), alpha=1.0 - self.m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` over the oldest entries (from the pointer on, wrapping around)."""
        size = len(self.queue)
        slots = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[slots] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_(int((self.queue_ptr + len(keys)) % size))

    def after_step(self) -> None:
        self.momentum_update()
        if self._keys is not None:
            self.enqueue(self._keys)
            self._keys = None
