"""timm/<model> architectures: per-block features against a direct timm forward, token choices,
final norm in the cache key, ConvNet stage pooling, and the ResNet cross-check with torchvision."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
import pytest

from benchmark.errors import ConfigError
from benchmark.features import FeatureKey
from benchmark.models import FrozenBackbone, create_model
from benchmark.models.backbone import get_architecture
from benchmark.options import Registered
from benchmark.registry import ARCHITECTURES

VIT = "timm/vit_tiny_patch16_224[img_size=32,patch_size=8,depth=3,embed_dim=48,num_heads=2]"


def _block_outputs(model, x):
    """Every block's output tokens, read with forward hooks during timm's own forward_features:
    an oracle independent of forward_intermediates."""
    seen = []
    hooks = [block.register_forward_hook(lambda m, i, o: seen.append(o)) for block in model.blocks]
    try:
        with torch.no_grad():
            final = model.forward_features(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen, final


def _vit(name=VIT, seed=0):
    arch = get_architecture(name)
    model = create_model(name, seed=seed)
    return arch, model, FrozenBackbone(arch, model)


def test_vit_blocks_match_a_direct_timm_forward() -> None:
    arch, model, backbone = _vit()
    assert arch.layers == ("block0", "block1", "block2", "last3_cls")
    assert arch.reference_input_size == 32 and arch.head_prefixes == ("head.",)
    x = torch.randn(3, 3, 32, 32)
    blocks, final = _block_outputs(model, x)
    feats = backbone(x, list(arch.layers))
    for i, tokens in enumerate(blocks):
        # default token: the CLS token and the patch-token mean, concatenated
        expected = torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1)
        assert feats[f"block{i}"].shape == (3, 96)
        torch.testing.assert_close(feats[f"block{i}"], expected, rtol=1e-5, atol=1e-5)
    # DINO's feature: the normed CLS tokens of the last n blocks; the last one is forward_features'
    last = feats["last3_cls"].view(3, 3, 48)
    torch.testing.assert_close(last[:, 2], final[:, 0], rtol=1e-5, atol=1e-5)
    for i in range(3):
        torch.testing.assert_close(last[:, i], model.norm(blocks[i])[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("token,dim", [("cls", 48), ("mean", 48), ("cls+mean", 96)])
def test_token_choices(token, dim) -> None:
    name = VIT.replace("]", f",token={token}]")
    arch, model, backbone = _vit(name)
    x = torch.randn(2, 3, 32, 32)
    blocks, _ = _block_outputs(model, x)
    got = backbone(x, ["block1"])["block1"]
    cls, mean = blocks[1][:, 0], blocks[1][:, 1:].mean(1)
    expected = {"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], 1)}[token]
    assert got.shape == (2, dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert f"tokens:{token}" in backbone.describe_pooling(["block1"], 32)["block1"]


def test_final_norm_applies_the_models_norm_and_changes_the_cache_key() -> None:
    name = VIT.replace("]", ",final_norm=true]")
    arch, model, backbone = _vit(name)
    x = torch.randn(2, 3, 32, 32)
    blocks, final = _block_outputs(model, x)
    got = backbone(x, ["block2"])["block2"]
    torch.testing.assert_close(got[:, :48], final[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[:, 48:], final[:, 1:].mean(1), rtol=1e-5, atol=1e-5)

    plain_arch, _, plain = _vit(VIT)
    keys = []
    for a, b in ((plain_arch, plain), (arch, backbone)):
        pooling = b.describe_pooling(["block2"], 32)["block2"]
        keys.append(FeatureKey("w", a.name, "block2", pooling, "t", "voc07", "test", "f").digest())
    assert keys[0] != keys[1]
    assert "final_norm=true" in backbone.describe_pooling(["block2"], 32)["block2"]


def test_other_input_sizes_interpolate_position_embeddings() -> None:
    arch, model, backbone = _vit()
    x = torch.randn(2, 3, 48, 48)
    feats = backbone(x, ["block2"])
    assert feats["block2"].shape == (2, 96)  # dims do not depend on the input size
    pos = timm.layers.resample_abs_pos_embed(model.pos_embed, (6, 6), (4, 4), num_prefix_tokens=1)
    tokens = torch.cat([model.cls_token.expand(2, -1, -1), model.patch_embed(x).flatten(1, 2)], 1) + pos
    for block in model.blocks:
        tokens = block(tokens)
    torch.testing.assert_close(feats["block2"], torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1),
                               rtol=1e-4, atol=1e-4)


def test_pretrained_cfg_statistics_renormalise_the_input_and_enter_the_key() -> None:
    arch = get_architecture(VIT)
    assert arch.family_info.mean == (0.5, 0.5, 0.5)  # vit_tiny_patch16_224's pretrained_cfg
    model = create_model(VIT, seed=0)
    plain = FrozenBackbone(arch, model)
    stats = FrozenBackbone(arch, model, (arch.family_info.mean, arch.family_info.std))
    x = torch.randn(2, 3, 32, 32)
    imagenet_mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    imagenet_std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    rgb = x * imagenet_std + imagenet_mean
    torch.testing.assert_close(stats(x, ["block0"])["block0"], plain((rgb - 0.5) / 0.5, ["block0"])["block0"],
                               rtol=1e-5, atol=1e-5)
    assert "input_mean=[0.5, 0.5, 0.5]" in stats.describe_pooling(["block0"], 32)["block0"]
    assert "input_mean" not in plain.describe_pooling(["block0"], 32)["block0"]


def test_convnext_stages_pool_to_about_9k_dims() -> None:
    name = "timm/convnext_atto"
    arch = get_architecture(name)
    assert arch.layers == ("stage0", "stage1", "stage2", "stage3")
    assert arch.family_info.stage_modules == ("stages.0", "stages.1", "stages.2", "stages.3")
    model = create_model(name, seed=0)
    x = torch.randn(1, 3, 64, 64)
    feats = FrozenBackbone(arch, model)(x, list(arch.layers))
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
    for stage, fmap in zip(arch.layers, maps):
        grid = round((9216 / fmap.shape[1]) ** 0.5)  # 40 ch -> 15, 80 -> 11, 160 -> 8, 320 -> 5
        torch.testing.assert_close(feats[stage], F.adaptive_avg_pool2d(fmap, grid).flatten(1))
        assert 8000 <= feats[stage].shape[1] <= 10300


def test_timm_resnet_equals_torchvision_resnet_with_the_same_weights() -> None:
    tv_arch = get_architecture("resnet18")
    tv = create_model("resnet18", seed=3)
    timm_arch = get_architecture("timm/resnet18")
    assert timm_arch.layers == tv_arch.layers
    tm = create_model("timm/resnet18", seed=0)
    tm.load_state_dict(tv.state_dict())  # same key names: timm's ResNet follows torchvision's
    x = torch.randn(2, 3, 224, 224)
    a = FrozenBackbone(tv_arch, tv)(x, list(tv_arch.layers))
    b = FrozenBackbone(timm_arch, tm)(x, list(tv_arch.layers))
    for layer in tv_arch.layers:
        torch.testing.assert_close(b[layer], a[layer], rtol=1e-4, atol=1e-4)


def test_names_and_options_are_checked_at_load() -> None:
    option = Registered(ARCHITECTURES, "resnet50")
    assert option.check(VIT, "arch") is None
    where, value, message = option.check("timm/vit_tiny_patch16_2244", "arch")
    assert "has no model 'vit_tiny_patch16_2244'" in message and "Did you mean 'vit_tiny_patch16_224'" in message
    with pytest.raises(ConfigError, match="token='patch'; expected one of cls\\+mean, cls, mean"):
        get_architecture(VIT.replace("]", ",token=patch]"))
    with pytest.raises(ConfigError, match="apply to transformers only"):
        get_architecture("timm/convnext_atto[final_norm=true]")
    with pytest.raises(ConfigError, match="'depth' is not key=value"):
        get_architecture("timm/vit_tiny_patch16_224[depth]")
    assert "timm/vit_tiny_patch16_224" in ARCHITECTURES.all_names("vit_tiny*")
    assert "resnet18" in ARCHITECTURES.all_names("resnet1*")


def test_list_archs_filter(capsys) -> None:
    from benchmark.cli import main

    assert main(["list", "archs", "--filter", "convnext_at*"]) == 0
    names = capsys.readouterr().out.split()
    assert "timm/convnext_atto" in names and "timm/convnext_atto.d2_in1k" in names  # pretrained tags too
    assert all(name.startswith("timm/convnext_at") for name in names)
    assert main(["list", "archs", "--filter", "no_such_model*"]) == 1


def test_input_statistics_are_never_chosen_silently() -> None:
    """An untagged name whose timm default tag is not ImageNet-normalised gets a notice; a tag or
    [stats=imagenet] chooses the statistics explicitly, and the rows say where they came from."""
    from benchmark.models.timm_family import timm_architecture

    untagged = timm_architecture("timm/vit_tiny_patch16_224[img_size=32,depth=2]").family_info
    assert untagged.mean == (0.5, 0.5, 0.5) and untagged.stats_tag  # timm's default tag (augreg)
    assert f"'{untagged.stats_tag}'" in untagged.stats_notice() and "[stats=imagenet]" in untagged.stats_notice()
    assert untagged.provenance()["input_stats_source"].endswith("(timm's default tag: the name has none)")
    tagged = timm_architecture("timm/vit_small_patch16_224.dino").family_info
    assert tagged.stats_notice() is None
    assert tagged.provenance()["input_stats_source"] == "pretrained_cfg of vit_small_patch16_224.dino"
    imagenet = timm_architecture("timm/vit_tiny_patch16_224[img_size=32,depth=2,stats=imagenet]").family_info
    assert imagenet.stats_notice() is None and imagenet.provenance()["input_stats_source"].startswith("imagenet")
    assert timm_architecture("timm/resnet18").family_info.stats_notice() is None  # default tag is ImageNet's
