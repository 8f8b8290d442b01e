"""What the engine knows of an architecture (its layers, their pooling, how to build it) and the
catalogue of registered ones. Torch is imported only to build or run a network: checking a suite's
architecture and layer names needs none."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar

from ..registry import ARCHITECTURES

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class LayerPool:
    """Average pooling of one layer, defined at the reference input size.

    ``reference`` maps the layer's spatial size at the reference input (e.g. 112 for ResNet conv1
    at 224 px) to the protocol's (kernel, stride, padding). Feature maps of any other size are
    pooled adaptively to the same output ``grid``, so feature dimensions do not depend on the input
    size. ``grid == 1`` is global average pooling (pool5).
    """

    grid: int
    reference: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        size = x.shape[-1]
        if x.shape[-2] == size and size in self.reference:
            kernel, stride, padding = self.reference[size]
            # count_include_pad=True as in the reference (Caffe2 / VISSL nn.AvgPool2d defaults)
            return F.avg_pool2d(x, kernel, stride, padding)
        return F.adaptive_avg_pool2d(x, self.grid)

    def describe(self, size: int) -> str:
        if size in self.reference:
            kernel, stride, padding = self.reference[size]
            return f"avg(k={kernel},s={stride},p={padding})->{self.grid}x{self.grid}"
        return f"adaptive_avg->{self.grid}x{self.grid}"


class FamilyInfo:
    """What an architecture family records about one of its members (``Architecture.family_info``).

    ``provenance()`` goes into the loaded model's ``info``; ``row_keys`` names the ``info`` entries
    that also go on every result row of the model (lists joined with spaces), so that the engine
    carries a family's columns without knowing them. The base declares none: families without
    one of their own add no columns."""

    row_keys: ClassVar[tuple[str, ...]] = ()

    def provenance(self) -> dict:
        return {}


@dataclass(frozen=True)
class Architecture:
    """What the engine needs to know about an architecture family member."""

    name: str
    build: Callable[[], nn.Module]
    layers: tuple[str, ...]
    pools: dict[str, LayerPool]
    stages: Callable[[nn.Module], list[tuple[str, nn.Module]]]
    head_prefixes: tuple[str, ...]  # state-dict keys that are not part of the frozen trunk
    reference_input_size: int = 224
    default_layers: tuple[str, ...] = ()
    # Families whose forward is not a chain of stages (timm models): (model, x, layers) -> {layer:
    # what its pool reads}; ``stages`` is then empty. ``family_info``: what the family records (a FamilyInfo).
    feature_maps: Callable | None = None
    family_info: FamilyInfo | None = None


def list_models() -> list[str]:
    return ARCHITECTURES.names()


def get_architecture(name: str) -> Architecture:
    return ARCHITECTURES.get(name)()
