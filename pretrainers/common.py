"""What the built-in pretrainers share: options declared once and the frozen model they produce."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmark.datasets.imagenet_stats import IMAGENET_MEAN, IMAGENET_STD
from benchmark.plugin_api import LoadedModel
from benchmark.models.architecture import get_architecture
from benchmark.options import Float, Int, Range, Registered
from benchmark.registry import ARCHITECTURES

if TYPE_CHECKING:
    from torch import nn

# Options the pretrainers share, declared once (see benchmark.options)
ARCH = Registered(ARCHITECTURES, "resnet50")
SEED = Int(0, min=0)
IMAGE_SIZE = Int(224, min=16)
UNIT_INTERVAL = Float(min=0, max=1, min_open=True)  # e.g. RandomResizedCrop's area fractions
POSITIVE = Float(min=0, min_open=True)
CROP_SCALE = Range(UNIT_INTERVAL, [0.08, 1.0])
# the data-size axis of a sweep: train on a nested subset of the images (benchmark.sweeps.nested_subset),
# drawn from data_seed (apart from 'seed': replicates reseed training, not the subset). Added after
# results existed: at their defaults they stay out of config hashes and checkpoint names.
DATA_FRACTION = Float(1.0, min=0, max=1, min_open=True, omit_at_default=True)
DATA_SEED = Int(0, min=0, omit_at_default=True)


def subset_meta(fraction: float, seed: int, kept: int, total: int) -> dict:
    """What a checkpoint records of the subset it was trained on (nothing for all images)."""
    if fraction >= 1:
        return {}
    return {"data_fraction": fraction, "data_seed": seed, "data_subset": f"{kept} of {total} images, nested "
            f"subset drawn from data_seed {seed}"}


def freeze(name: str, arch_name: str, model: nn.Module, info: dict, input_stats=None) -> LoadedModel:
    """Wrap a trained or loaded network as the frozen representation the tasks evaluate.

    ``input_stats``: the (mean, std) the weights expect, when not the pipeline's ImageNet ones
    (weights trained elsewhere); None for weights made here."""
    from benchmark.models.backbone import FrozenBackbone, trunk_state_dict, weights_hash

    arch = get_architecture(arch_name)
    digest = weights_hash(trunk_state_dict(arch, model))
    family = arch.family_info.provenance() if hasattr(arch.family_info, "provenance") else {}
    backbone = FrozenBackbone(arch, model, input_stats)
    # the statistics the network is fed with, recorded for timm architectures (the pipeline's
    # ImageNet ones unless re-normalised to the checkpoint's pretrained_cfg)
    used = backbone.input_stats or (IMAGENET_MEAN, IMAGENET_STD)
    stats = {"input_mean": list(used[0]), "input_std": list(used[1])} if family else {}
    return LoadedModel(name, arch, backbone, digest, {**info, **family, **stats, "weights_sha256": digest})
