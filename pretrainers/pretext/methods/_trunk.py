"""Small helpers shared by the classic pretext methods (colorization ... nat).

- ``SizedState``: per-image state (memory banks, targets, cluster assignments, N-way classifiers)
  whose first dimension is the number of training images. The loop builds a method before it
  knows the dataset, so these tensors start with 0 rows and are sized in ``epoch_start`` (from the
  plain loader's dataset); ``load_state_dict`` resizes them to the saved shape first, so a run
  resumed in the middle of an epoch (no ``epoch_start``) restores them exactly. A parameter keeps
  its identity when resized (``.data`` is replaced), so the optimiser built before ``epoch_start``
  still updates it; SGD creates its momentum buffer at the first step, after the resize.
- ImageNet (de)normalisation and a probe that turns "input too small for this trunk" into a
  ConfigError naming the option.
"""

from __future__ import annotations

from typing import ClassVar, Iterable

import torch

from benchmark.datasets.images import IMAGENET_MEAN, IMAGENET_STD
from benchmark.errors import ConfigError


def dataset_size(plain_loader: Iterable) -> int:
    """Number of images behind the loop's plain loader (a DataLoader over the whole dataset)."""
    dataset = getattr(plain_loader, "dataset", None)
    if dataset is not None:
        return len(dataset)
    return 1 + max(int(indices.max()) for _, indices in plain_loader)


def normalize(rgb: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB (..., 3, H, W) -> the ImageNet-normalised input every trunk in the benchmark sees."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    return (rgb - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return x * std + mean


def check_input_size(method, size: int, what: str) -> tuple[int, ...]:
    """Shape of the trunk's last map for a ``size`` x ``size`` input, or a ConfigError saying which
    option to raise (e.g. patches too small for AlexNet's strided convolutions)."""
    was_training = method.trunk.training
    method.trunk.eval()
    try:
        device = next(method.trunk.parameters()).device
        with torch.no_grad():
            shape = tuple(method.trunk_features(torch.zeros(1, 3, size, size, device=device)).shape[1:])
    except RuntimeError as exc:
        raise ConfigError(f"{method.name}: {what} = {size} px is too small for {method.arch.name} "
                          f"({str(exc).splitlines()[0]}); use a larger value") from None
    finally:
        method.trunk.train(was_training)
    return shape


class SizedState:
    """Mixin for a PretextMethod: the direct buffers/parameters named in ``sized`` have one row per
    training image (dim 0), sized lazily; see the module docstring."""

    sized: ClassVar[tuple[str, ...]] = ()

    @property
    def num_images(self) -> int:
        return int(getattr(self, self.sized[0]).shape[0])

    def _resize(self, name: str, rows_shape: tuple[int, ...]) -> bool:
        """Give ``name`` the shape ``rows_shape`` (uninitialised values); True when it changed."""
        current = getattr(self, name)
        if tuple(current.shape) == tuple(rows_shape):
            return False
        fresh = torch.empty(rows_shape, dtype=current.dtype, device=current.device)
        if name in self._parameters:
            self._parameters[name].data = fresh
        else:
            self._buffers[name] = fresh
        return True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.sized:
            saved = state_dict.get(prefix + name)
            if saved is not None:
                self._resize(name, tuple(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
