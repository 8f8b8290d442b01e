"""A frozen trunk that returns the protocol's pooled per-layer features from one forward pass."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..datasets.imagenet_stats import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError
from .architecture import Architecture, FamilyInfo, LayerPool, get_architecture, list_models  # noqa: F401  (their old home)


def create_model(name: str, seed: int | None = None) -> nn.Module:
    """A freshly initialised network of architecture ``name`` (never downloads weights)."""
    arch = get_architecture(name)
    if seed is None:
        return arch.build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return arch.build()


def trunk_state_dict(arch: Architecture, model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith(arch.head_prefixes)}


def weights_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """Content hash of the trunk weights: the identity of a representation in the feature cache."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes())
    return digest.hexdigest()


class FrozenBackbone(nn.Module):
    """Wraps a network: eval mode, no gradients, ``forward(x, layers)`` -> {layer: pooled (N, D)}.

    Stages run in order and stop after the deepest requested layer, so asking for conv1 only does
    not pay for res5.
    """

    def __init__(self, arch: Architecture, model: nn.Module,
                 input_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None):
        super().__init__()
        self.arch = arch
        self.model = model
        # The (mean, std) the weights expect when not the pipeline's ImageNet ones (e.g. a timm
        # checkpoint's pretrained_cfg): inputs are re-normalised inside, and the stats enter the
        # pooling description, hence the feature-cache key.
        self.input_stats = None
        if input_stats is not None and (tuple(input_stats[0]), tuple(input_stats[1])) != (IMAGENET_MEAN, IMAGENET_STD):
            self.input_stats = (tuple(input_stats[0]), tuple(input_stats[1]))
        self.stages = nn.ModuleList(module for _, module in arch.stages(model))
        self.stage_names = [name for name, _ in arch.stages(model)]
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenBackbone":
        # Frozen means frozen BatchNorm statistics too, whatever a caller asks.
        return super().train(False)

    @property
    def layers(self) -> tuple[str, ...]:
        return self.arch.layers

    def check_layers(self, layers) -> list[str]:
        unknown = [layer for layer in layers if layer not in self.arch.layers]
        if unknown:
            raise ConfigError(
                f"architecture {self.arch.name} has no layer(s) {unknown}; "
                f"its layers are {list(self.arch.layers)}"
            )
        return list(layers)

    def renormalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_stats is None:
            return x
        def column(values):
            return torch.tensor(values, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        rgb = x * column(IMAGENET_STD) + column(IMAGENET_MEAN)
        return (rgb - column(self.input_stats[0])) / column(self.input_stats[1])

    def feature_maps(self, x: torch.Tensor, layers) -> dict[str, torch.Tensor]:
        wanted = set(self.check_layers(layers))
        if self.arch.feature_maps is not None:
            ordered = [layer for layer in self.arch.layers if layer in wanted]
            return self.arch.feature_maps(self.model, self.renormalise(x), ordered)
        out: dict[str, torch.Tensor] = {}
        for name, stage in zip(self.stage_names, self.stages):
            x = stage(x)
            if name in wanted:
                out[name] = x
                if len(out) == len(wanted):
                    break
        return out

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, layers) -> dict[str, torch.Tensor]:
        maps = self.feature_maps(x, layers)
        return {name: self.arch.pools[name].pool(fmap).flatten(1) for name, fmap in maps.items()}

    def describe_pooling(self, layers, input_size: int) -> dict[str, str]:
        """Pooling per layer at this input size, probed with one tiny forward pass."""
        probe = torch.zeros(1, 3, input_size, input_size, device=next(self.model.parameters()).device)
        with torch.inference_mode():
            maps = self.feature_maps(probe, layers)
        described = {name: self.arch.pools[name].describe(fmap.shape[-1]) for name, fmap in maps.items()}
        if self.input_stats is not None:
            stats = f";input_mean={list(self.input_stats[0])};input_std={list(self.input_stats[1])}"
            described = {name: text + stats for name, text in described.items()}
        return described
