"""The interface every pretext method implements, and the registry of the methods
(``PRETEXT_METHODS``, filled through the entry point group ``ssl_bench.pretext_methods``, one
module per method in ``methods/``).

A method owns the trunk (a torchvision-layout network from ``benchmark.models.create_model``) and
whatever heads, memory banks or momentum encoders its paper needs. The shared training loop
(``train_pretext``) calls, in this order:

    method.epoch_start(epoch, plain_loader, device)   # once per epoch (DeepCluster clusters here)
    for each batch: loss, metrics = method(batch)     # batch: collated outputs of method.sample
                    loss.backward(); optimizer.step()
                    method.after_step()                # MoCo's momentum update / queue, NAT, ...

``sample`` runs in DataLoader workers: it turns ONE decoded RGB image (and its dataset index)
into the tensors of that example, using only the given ``torch.Generator`` for randomness so that
a run is reproducible. It must not touch the module's parameters or buffers: they may be on the
GPU, which forked workers cannot use (keep CPU copies of what it needs, e.g. a permutation
table). Only ``method.trunk``'s weights end up in the saved checkpoint (in the torchvision key
layout the benchmark's strict checkpoint loader reads); everything else is the method's training
state.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ClassVar, Iterable, Mapping

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from benchmark.errors import ConfigError
from benchmark.models import Architecture
from benchmark.options import validate

from .options import PRETEXT_METHODS


class PretextMethod(nn.Module):
    name: ClassVar[str]
    # method hyper-parameters (benchmark.options.declare: key -> type, range and default), checked
    # when the config is loaded (a suite model's method_options, or `ssl-bench pretrain --opt`)
    options: ClassVar[Mapping] = {}
    # the paper's optimiser settings, overriding the loop's defaults where the user gave none:
    # keys of pretrainers.pretext.trainer.TRAIN_DEFAULTS (lr, momentum, weight_decay, warmup_epochs)
    training: ClassVar[dict] = {}
    # the trunks a method trains: "torchvision" (ResNet/AlexNet, run stage by stage) and "timm"
    # (timm/<model> architectures, ViTs included, through forward_features / forward_head): a method
    # that reads spatial maps or stages (jigsaw tiles, colorization decoders...) keeps the first only
    trunks: ClassVar[tuple[str, ...]] = ("torchvision",)

    @classmethod
    def check_arch(cls, arch: Architecture, where: str) -> None:
        """A ConfigError, before anything is trained, when the method cannot train this trunk."""
        if arch.feature_maps is not None and "timm" not in cls.trunks:
            able = [n for n in PRETEXT_METHODS.names() if "timm" in getattr(PRETEXT_METHODS.get(n), "trunks", ())]
            raise ConfigError(f"{where}: pretext method '{cls.name}' needs a convolutional trunk (a torchvision-layout "
                              f"resnet*/alexnet, trained stage by stage on its spatial maps); {arch.name} is a timm "
                              f"architecture. Use arch resnet18/resnet50, or a method that trains timm trunks "
                              f"(ViTs included): {', '.join(able)}")

    def __init__(self, trunk: nn.Module, arch: Architecture, image_size: int, **options):
        type(self).check_arch(arch, "pretext")
        super().__init__()
        self.trunk = trunk
        self.arch = arch
        self.image_size = image_size
        where = f"pretext method '{getattr(self, 'name', type(self).__name__)}'"
        self.config = validate(options, type(self).options, where)

    def sample(self, image: Image.Image, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The training example(s) made from one image; returned tensors are collated by key."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Pretext loss of a batch and metrics to log (e.g. {"acc": 0.41})."""
        raise NotImplementedError

    def epoch_start(self, epoch: int, plain_loader: Iterable, device: torch.device) -> None:
        """Called before each epoch; ``plain_loader`` yields (images, indices) batches of the whole
        dataset with a deterministic resize + centre crop to ``image_size`` (no augmentation).

        A run resumed in the middle of an epoch does NOT call it again (the weights have moved
        since): whatever it computes that later batches need must live in the module's state
        (registered buffers, or ``get_extra_state``/``set_extra_state``), which the loop's
        checkpoints save and restore with ``state_dict``."""

    def after_step(self) -> None:
        """Called after each optimizer step."""

    def epoch_indices(self, seed: int, epoch: int, n: int) -> torch.Tensor | None:
        """The images of epoch ``epoch`` in order (n of them, repeats allowed), called after
        ``epoch_start`` and again on resume; a deterministic function of (seed, epoch) and the
        module's state. None (the default): every image once, in the loop's seeded order."""
        return None

    # --- helpers for methods ---------------------------------------------------------------------

    def trunk_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's last feature map (ResNet: layer4 output; AlexNet: conv5 output), computed
        through the architecture's stages, so gradients flow into exactly the weights that are
        saved under their torchvision key names; the trunk's classifier (``fc`` / ``classifier``)
        is never used and stays untrained (the benchmark ignores it). A timm trunk: its
        ``forward_features`` (a ViT's tokens, a ConvNet's last map)."""
        if self.arch.feature_maps is not None:
            return self.trunk.forward_features(x)
        for name, stage in self.arch.stages(self.trunk):
            if name == "pool5":  # ResNet's global pooling: embed() pools
                break
            x = stage(x)
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled trunk feature, (N, embed_dim): ResNet pool5 (512 for
        ResNet-18, 2048 for ResNet-50), AlexNet the 256 conv5 channels. The input a method's
        heads should sit on. A timm trunk: its own pooled pre-logits feature (a ViT's normed CLS
        token, a ConvNet's global average), as the model's classifier would see it."""
        return self.pooled(self.trunk, x)

    def pooled(self, trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``embed`` through ``trunk``, a network of this method's architecture (e.g. a momentum copy)."""
        if self.arch.feature_maps is not None:
            return trunk.forward_head(trunk.forward_features(x), pre_logits=True)
        for name, stage in self.arch.stages(trunk):
            if name == "pool5":  # ResNet's global pooling, done here
                break
            x = stage(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    @property
    def embed_dim(self) -> int:
        """Width of ``embed``'s output, probed once with one image (eval mode: BatchNorm
        statistics are not touched)."""
        if not hasattr(self, "_embed_dim"):
            was_training = self.trunk.training
            self.trunk.eval()
            size = max(self.image_size, 64 if "alexnet" not in self.arch.name else 127)
            with torch.no_grad():
                device = next(self.trunk.parameters()).device
                self._embed_dim = self.embed(torch.zeros(1, 3, size, size, device=device)).shape[1]
            self.trunk.train(was_training)
        return self._embed_dim

    @staticmethod
    @contextlib.contextmanager
    def seeded(generator: torch.Generator):
        """Inside the block, torch's global CPU RNG is seeded from ``generator`` (one draw) and
        restored afterwards: torchvision's random transforms draw from the global RNG, so this
        makes them a function of the example's generator without disturbing anyone else."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield

    def augment(self, transform: Callable, image, generator: torch.Generator):
        """``transform(image)`` with torchvision's randomness drawn via ``seeded(generator)``."""
        with self.seeded(generator):
            return transform(image)

    def parameter_groups(self) -> list[dict]:
        """Parameters to optimise; by default everything that requires grad (weight decay on
        tensors with more than one dimension only)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": [p for p in params if p.ndim > 1]},
                {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
