"""timm-backed architectures: any ``timm.list_models()`` name as a frozen backbone with named layers.

An architecture name is ``timm/<model>`` or ``timm/<model>[key=value,...]``, e.g.
``timm/vit_tiny_patch16_224[img_size=64,depth=4]``; ``<model>`` may carry a timm pretrained tag
(``vit_small_patch16_224.dino``, ``vit_base_patch16_224.mae``) to take that tag's pretrained_cfg
(mean/std, input size) for a checkpoint of it. Nothing is ever downloaded. Keys this module reads (the others are passed
to ``timm.create_model`` as model keyword arguments; weights are never downloaded):

- ``token`` (transformers): the per-block feature. ``cls+mean`` (default: the CLS token and the
  mean of the patch tokens, concatenated; 2 x width dims), ``cls`` or ``mean``. A model without a
  class token (``class_token=False``) only has ``mean``. The concatenation is the default because
  the protocol compares methods whose linear-probe conventions differ (DINO, MoCo v3 probe the CLS
  token; MAE, I-JEPA the patch mean): a linear SVM on both can use either, per block.
- ``final_norm`` (transformers, default false): apply the model's final norm to every block's
  tokens before pooling (timm ``forward_intermediates(norm=True)``; the last block with it is the
  model's ``forward_features``).
- ``last_n`` (transformers, default 4, or the depth when smaller): the layer ``last<n>_cls`` is DINO's linear-evaluation
  feature, the CLS tokens of the last n blocks after the final norm, concatenated.
- ``stats``: the input normalisation a ``checkpoint`` model expects: ``pretrained`` (default, the
  model's timm ``pretrained_cfg`` mean/std) or ``imagenet``. Models trained here (``supervised``,
  ``pretext``) and ``random`` ones see the pipeline's ImageNet normalisation they were trained with.

The name (with its options) is the architecture's identity: it is in the feature-cache key and in
every result row. Layers:

- transformers (timm models with ``blocks`` and prefix tokens, ViT/DeiT/EVA...): ``block0`` ..
  ``block<depth-1>`` (the output of timm's ``blocks.<i>``) and ``last<n>_cls``; position
  embeddings are interpolated for input sizes other than the model's ``img_size``
  (``dynamic_img_size``).
- timm ResNets: the protocol's ``conv1``, ``res2`` .. ``res5``, ``pool5`` with the torchvision
  ResNets' pooling (the same maps, and the same state-dict keys as torchvision's).
- other ConvNets and hierarchical transformers (ConvNeXt, Swin, RegNet...): their feature stages
  ``stage0`` .. ``stage<k>`` (timm ``feature_info`` entries in order, e.g. ConvNeXt's ``stages.<i>``,
  Swin's ``layers.<i>``; recorded in provenance), each average-pooled to the grid g x g
  with g = round(sqrt(9216 / channels)) (~9k dims, the protocol's size; the ResNet table follows
  the same rule), adaptively, whatever the input size.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import TYPE_CHECKING, ClassVar

from ..datasets.imagenet_stats import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError
from ..registry import ARCHITECTURES, closest
from .architecture import Architecture, FamilyInfo, LayerPool
from .resnet import RESNET_LAYERS, RESNET_POOLS

if TYPE_CHECKING:
    import torch
    from torch import nn

PREFIX = "timm/"
TOKENS = ("cls+mean", "cls", "mean")
FEATURE_OPTIONS = {"token", "final_norm", "last_n", "stats"}
TARGET_DIMS = 9216  # the protocol's ~9k pooled dims per layer (ResNet res2/res4: 256x6x6, 1024x3x3)
_SPEC = re.compile(r"^timm/([A-Za-z0-9_.\-]+)(?:\[(.*)\])?$")
# timm ResNet feature stages -> the protocol's layer names (same maps as torchvision's stages)
_RESNET_STAGES = {"act1": "conv1", "layer1": "res2", "layer2": "res3", "layer3": "res4", "layer4": "res5"}


def timm_names(pattern: str | None = None) -> list[str]:
    import timm

    # architectures and their pretrained tags (vit_small_patch16_224.dino: the tag's pretrained_cfg,
    # e.g. its mean/std, without its weights)
    names = set(timm.list_models(pattern or "*")) | set(timm.list_pretrained(pattern or "*"))
    return [PREFIX + name for name in sorted(names)]


def _value(text: str):
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_name(name: str) -> tuple[str, dict]:
    """``timm/<model>[k=v,...]`` -> (timm model name, {k: v}); a ConfigError names what is wrong."""
    match = _SPEC.match(name)
    if not match:
        raise ConfigError(f"architecture '{name}': expected timm/<model> or timm/<model>[key=value,...], "
                          f"e.g. timm/vit_tiny_patch16_224[img_size=64,depth=4]")
    model, body = match.group(1), match.group(2)
    options: dict = {}
    for part in filter(None, (p.strip() for p in (body or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"architecture '{name}': '{part}' is not key=value")
        if key.strip() in options:
            raise ConfigError(f"architecture '{name}': option '{key.strip()}' given twice")
        options[key.strip()] = _value(value)
    return model, options


@dataclass(frozen=True)
class TokenPool:
    """A transformer block's tokens (N, prefix + patches, D) -> the block's feature. Plays the part
    of a LayerPool for the engine (``pool`` and ``describe``)."""

    token: str
    num_prefix: int
    final_norm: bool

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        import torch

        if self.token == "cls":
            return tokens[:, 0]
        mean = tokens[:, self.num_prefix:].mean(dim=1)  # patch tokens only: registers are not the image
        return mean if self.token == "mean" else torch.cat([tokens[:, 0], mean], 1)

    def describe(self, size: int) -> str:
        return f"tokens:{self.token};final_norm={str(self.final_norm).lower()}"


@dataclass(frozen=True)
class ConcatPool:
    """DINO's last-n feature: (N, n, D) normed CLS tokens -> (N, n * D)."""

    n: int

    def pool(self, stacked: torch.Tensor) -> torch.Tensor:
        return stacked.flatten(1)

    def describe(self, size: int) -> str:
        return f"concat_cls_last{self.n};final_norm=true"


@dataclass(frozen=True)
class TimmInfo(FamilyInfo):
    """What the family knows about one configured timm model, recorded in provenance."""

    # on every row: the timm model, its pretrained_cfg statistics and the statistics the weights
    # were fed with (input_mean/input_std, added by the pretrainer that loads them), since the
    # same architecture name can be fed either
    # the size images are fed at is every row's image_size; native_input_size is the model's own
    # img_size (other sizes interpolate its position embeddings)
    row_keys: ClassVar[tuple[str, ...]] = ("timm_model", "native_input_size", "pretrained_cfg_mean",
                                           "pretrained_cfg_std", "input_stats_source", "input_mean", "input_std")

    model: str
    kind: str  # "transformer" | "resnet" | "stages"
    kwargs: tuple
    mean: tuple
    std: tuple
    stats: str
    input_size: int
    stats_tag: str = ""  # the pretrained tag whose mean/std these are
    tag_named: bool = False  # whether the architecture's name chose that tag
    depth: int = 0
    num_prefix: int = 0
    has_cls: bool = False
    last_n: int = 0
    final_norm: bool = False
    token: str = ""
    stage_modules: tuple = ()  # the timm module behind stage<i> (non-transformers)

    def provenance(self) -> dict:
        return {"timm_model": self.model, "timm_kwargs": dict(self.kwargs), "native_input_size": self.input_size,
                "pretrained_cfg_mean": list(self.mean), "pretrained_cfg_std": list(self.std),
                "input_stats": self.stats, "input_stats_source": self.stats_source(),
                **({"timm_stage_modules": list(self.stage_modules)} if self.stage_modules else {})}


    def stats_source(self) -> str:
        """Where the mean/std a checkpoint of this architecture is fed come from, in words."""
        if self.stats == "imagenet":
            return "imagenet ([stats=imagenet])"
        base = self.model.split(".")[0]
        if self.tag_named:
            return f"pretrained_cfg of {base}.{self.stats_tag}"
        return f"pretrained_cfg of {base}.{self.stats_tag} (timm's default tag: the name has none)"

    def stats_notice(self) -> str | None:
        """What to tell a user whose checkpoint gets statistics chosen by timm's default tag and
        not ImageNet's: the name did not say which, and self-supervised checkpoints (DINO, MoCo v3,
        MAE, iBOT) were trained on ImageNet's. None when the name or an option chose them."""
        if self.stats != "pretrained" or self.tag_named or (self.mean, self.std) == (IMAGENET_MEAN, IMAGENET_STD):
            return None
        base = self.model.split(".")[0]
        return (f"timm/{base} names no pretrained tag, so its checkpoint is fed mean {list(self.mean)} and std "
                f"{list(self.std)}: the statistics of timm's default tag '{self.stats_tag}'. A checkpoint trained "
                f"with ImageNet statistics (DINO, MoCo v3, MAE, iBOT, most self-supervised ViTs) needs "
                f"'timm/{base}.<tag>' with its tag (ssl-bench list archs --filter '{base}.*') or "
                f"'timm/{base}[stats=imagenet]'")


def grid_for(channels: int) -> int:
    return max(1, round(math.sqrt(TARGET_DIMS / channels)))


def _create(model: str, kwargs: dict, dynamic: bool) -> nn.Module:
    import timm

    # dynamic_img_size: position embeddings interpolated (timm resample_abs_pos_embed) for inputs
    # of another size than img_size; at img_size itself the forward is unchanged
    try:
        return timm.create_model(model, pretrained=False, **({"dynamic_img_size": True} if dynamic else {}), **kwargs)
    except TypeError as exc:
        raise ConfigError(f"timm model '{model}' does not accept the options {kwargs}: {exc}") from None


def _probe(model: str, kwargs: dict) -> tuple[nn.Module, bool]:
    """The model on the meta device (its configuration, no memory) and whether it takes dynamic_img_size."""
    import torch

    with torch.device("meta"):
        try:
            return _create(model, kwargs, True), True
        except ConfigError:
            return _create(model, kwargs, False), False


_KINDS = ((bool, "true or false"), (int, "an integer"), (float, "a number"), (str, "a word"))


def _expected(default) -> tuple[tuple[type, ...], str] | None:
    """(accepted types, description) of a keyword whose default is ``default``; None: not checked."""
    for kind, described in _KINDS:
        if type(default) is kind:
            accepted = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}[kind]
            return accepted, described
    return None


def check_keyword_types(name: str, model_name: str, kwargs: dict) -> None:
    """Every keyword value has the type of the model class's default for it (``depth=x`` is refused
    naming the keyword, the value and the type); keywords the class does not declare are left to
    timm."""
    import inspect

    import timm
    import torch

    if not kwargs:
        return
    with torch.device("meta"):
        model_class = type(timm.create_model(model_name, pretrained=False))
    parameters = inspect.signature(model_class.__init__).parameters
    for key, value in kwargs.items():
        parameter = parameters.get(key)
        found = _expected(parameter.default) if parameter is not None else None
        if found and not (isinstance(value, found[0]) and (bool in found[0] or not isinstance(value, bool))):
            example = str(parameter.default).lower() if isinstance(parameter.default, bool) else parameter.default
            raise ConfigError(f"architecture '{name}': keyword '{key}' is {value!r} ({type(value).__name__}); "
                              f"timm {model_class.__name__} expects {found[1]} (its default is "
                              f"{parameter.default!r}), e.g. {key}={example}")


def _is_transformer(model: nn.Module) -> bool:
    import inspect

    from torch import nn

    method = getattr(model, "forward_intermediates", None)
    return (method is not None and isinstance(getattr(model, "blocks", None), nn.Sequential | nn.ModuleList)
            and "return_prefix_tokens" in inspect.signature(method).parameters)


@lru_cache(maxsize=64)
def timm_architecture(name: str) -> Architecture:
    import timm

    model_name, options = parse_name(name)
    if not timm.is_model(model_name):
        raise ConfigError(f"architecture '{name}': timm {timm.__version__} has no model '{model_name}'."
                          f"{closest(model_name, timm.list_models())} List them with: ssl-bench list archs "
                          f"--filter '{model_name.split('_')[0]}*'")
    features = {k: options.pop(k) for k in list(options) if k in FEATURE_OPTIONS}
    kwargs = options
    check_keyword_types(name, model_name, kwargs)
    probe, dynamic = _probe(model_name, kwargs)
    if not hasattr(probe, "forward_intermediates"):
        raise ConfigError(f"architecture '{name}': timm model '{model_name}' has no forward_intermediates(), which "
                          f"ssl-bench uses to read per-layer features; choose another model")
    cfg = getattr(probe, "pretrained_cfg", {}) or {}
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    stats = features.get("stats", "pretrained")
    if stats not in ("pretrained", "imagenet"):
        raise ConfigError(f"architecture '{name}': stats={stats!r}; expected pretrained or imagenet")
    patch = getattr(probe, "patch_embed", None)
    img_size = getattr(patch, "img_size", None)
    input_size = int(img_size[-1]) if img_size else int(cfg.get("input_size", (3, 224, 224))[-1])
    head = cfg.get("classifier", "head")
    head_prefixes = tuple(f"{h}." for h in ((head,) if isinstance(head, str) else head))
    common = dict(model=model_name, kwargs=tuple(sorted(kwargs.items())), mean=mean, std=std, stats=stats,
                  input_size=input_size, stats_tag=str(cfg.get("tag") or ""), tag_named="." in model_name)
    build = partial(_create, model_name, kwargs, dynamic)

    if _is_transformer(probe):
        has_cls = bool(getattr(probe, "cls_token", None) is not None)
        token = features.get("token", "cls+mean" if has_cls else "mean")
        if token not in TOKENS or (token != "mean" and not has_cls):
            allowed = TOKENS if has_cls else ("mean",)
            raise ConfigError(f"architecture '{name}': token={token!r}; expected one of {', '.join(allowed)}"
                              + ("" if has_cls else " (the model has no class token)"))
        final_norm = features.get("final_norm", False)
        if not isinstance(final_norm, bool):
            raise ConfigError(f"architecture '{name}': final_norm={final_norm!r}; expected true or false")
        depth = len(probe.blocks)
        last_n = features.get("last_n", min(4, depth))
        if not isinstance(last_n, int) or not 1 <= last_n <= depth:
            raise ConfigError(f"architecture '{name}': last_n={last_n!r}; expected an integer in [1, {depth}]")
        info = TimmInfo(**common, kind="transformer", depth=depth, num_prefix=int(probe.num_prefix_tokens),
                        has_cls=has_cls, last_n=last_n, final_norm=final_norm, token=token)
        pools = {f"block{i}": TokenPool(token, info.num_prefix, final_norm) for i in range(depth)}
        if has_cls:
            pools[f"last{last_n}_cls"] = ConcatPool(last_n)
        layers = tuple(pools)
        default = layers
    else:
        extra = set(features) - {"stats"}
        if extra:
            raise ConfigError(f"architecture '{name}': {sorted(extra)} apply to transformers only; "
                              f"{model_name} is a convolutional/hierarchical model")
        # layer names without dots: they key module dicts (linear heads) and leaderboard columns
        stages = [f"stage{i}" for i in range(len(probe.feature_info))]
        channels = [fi["num_chs"] for fi in probe.feature_info]
        if [fi["module"] for fi in probe.feature_info] == list(_RESNET_STAGES):
            info = TimmInfo(**common, kind="resnet", stage_modules=tuple(_RESNET_STAGES))
            pools = dict(RESNET_POOLS)
            layers = RESNET_LAYERS
            default = ("conv1", "res2", "res3", "res4", "res5")
        else:
            info = TimmInfo(**common, kind="stages",
                            stage_modules=tuple(fi["module"] for fi in probe.feature_info))
            pools = {stage: LayerPool(grid_for(c)) for stage, c in zip(stages, channels)}
            layers = default = tuple(stages)
    return Architecture(
        name=name, build=build, layers=layers, pools=pools, stages=lambda model: [],
        head_prefixes=head_prefixes, reference_input_size=input_size, default_layers=default,
        feature_maps=partial(_feature_maps, info), family_info=info,
    )


def _feature_maps(info: TimmInfo, model: nn.Module, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
    """{layer: what its pool reads}: tokens (N, T, D) of a block, (N, n, D) normed CLS tokens of the
    last n blocks, or a stage's (N, C, H, W) map. One forward, stopped after the deepest layer."""
    import torch

    if info.kind == "transformer":
        last = [f"last{info.last_n}_cls"] if f"last{info.last_n}_cls" in layers else []
        wanted = {int(layer[5:]) for layer in layers if layer.startswith("block")}
        if last:
            wanted |= set(range(info.depth - info.last_n, info.depth))
        indices = sorted(wanted)
        outputs = model.forward_intermediates(x, indices=indices, return_prefix_tokens=info.num_prefix > 0,
                                              norm=False, stop_early=True, output_fmt="NLC", intermediates_only=True)
        tokens = {}
        for index, out in zip(indices, outputs):
            tokens[index] = torch.cat([out[1], out[0]], 1) if info.num_prefix > 0 else out
        maps = {}
        for layer in layers:
            if layer.startswith("block"):
                value = tokens[int(layer[5:])]
                maps[layer] = model.norm(value) if info.final_norm else value
        if last:
            # the norm is per token: normalising the CLS token alone gives the same values
            maps[last[0]] = torch.stack([model.norm(tokens[i][:, :1])[:, 0]
                                         for i in range(info.depth - info.last_n, info.depth)], 1)
        return maps
    names = list(_RESNET_STAGES.values()) if info.kind == "resnet" else [
        f"stage{i}" for i in range(len(model.feature_info))]
    wanted_stages = [i for i, stage in enumerate(names) if stage in layers or (stage == "res5" and "pool5" in layers)]
    outputs = model.forward_intermediates(x, indices=wanted_stages, stop_early=True, intermediates_only=True)
    maps = {names[i]: out for i, out in zip(wanted_stages, outputs)}
    if "pool5" in layers:
        maps["pool5"] = maps["res5"]
    return {layer: maps[layer] for layer in layers}


def resolve(name: str) -> Architecture:
    return timm_architecture(name)


ARCHITECTURES.register_family(PREFIX, resolve, timm_names)
