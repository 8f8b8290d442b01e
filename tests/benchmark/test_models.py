"""Frozen backbones: per-layer feature dimensions and pooling values of the protocol table."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import ConfigError
from benchmark.models import FrozenBackbone, create_model, list_models
from benchmark.models.backbone import get_architecture, trunk_state_dict, weights_hash

RESNET_LAYERS = ["conv1", "res2", "res3", "res4", "res5", "pool5"]
# Goyal et al. 2019 table at 224 px: (kernel, stride, padding) and the resulting dimension
RESNET50_TABLE = {
    "conv1": ((10, 10, 4), 64 * 12 * 12),  # 9216
    "res2": ((16, 8, 0), 256 * 6 * 6),  # 9216
    "res3": ((13, 5, 0), 512 * 4 * 4),  # 8192
    "res4": ((8, 3, 0), 1024 * 3 * 3),  # 9216
    "res5": ((6, 1, 0), 2048 * 2 * 2),  # 8192
}
GRIDS = {"conv1": 12, "res2": 6, "res3": 4, "res4": 3, "res5": 2}


pytestmark = pytest.mark.usefixtures("single_thread")


def _backbone(name: str, seed: int = 0) -> FrozenBackbone:
    return FrozenBackbone(get_architecture(name), create_model(name, seed=seed))


def _resnet_maps(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Raw stage outputs computed with torchvision's own modules (eval mode)."""
    model.eval()
    with torch.no_grad():
        conv1 = model.relu(model.bn1(model.conv1(x)))
        res2 = model.layer1(model.maxpool(conv1))
        res3 = model.layer2(res2)
        res4 = model.layer3(res3)
        res5 = model.layer4(res4)
    return {"conv1": conv1, "res2": res2, "res3": res3, "res4": res4, "res5": res5}


@pytest.fixture(scope="module")
def resnet50() -> FrozenBackbone:
    return _backbone("resnet50", seed=0)


def test_registry_lists_protocol_architectures() -> None:
    names = list_models()
    for name in ("alexnet", "alexnet_bn", "resnet18", "resnet34", "resnet50"):
        assert name in names
    with pytest.raises(ConfigError, match="Did you mean 'resnet50'"):
        get_architecture("resnet05")


def test_resnet50_at_224_matches_protocol_table(resnet50: FrozenBackbone) -> None:
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    feats = resnet50(x, RESNET_LAYERS)
    maps = _resnet_maps(resnet50.model, x)
    assert [maps[k].shape[-1] for k in GRIDS] == [112, 56, 28, 14, 7]
    for layer, ((kernel, stride, padding), dim) in RESNET50_TABLE.items():
        assert feats[layer].shape == (2, dim), layer
        expected = nn.AvgPool2d(kernel, stride, padding)(maps[layer]).flatten(1)
        assert expected.shape == (2, dim)
        torch.testing.assert_close(feats[layer], expected, rtol=1e-5, atol=1e-6)
    assert feats["pool5"].shape == (2, 2048)
    torch.testing.assert_close(feats["pool5"], maps["res5"].mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)


def test_resnet50_at_64_uses_adaptive_pooling_to_same_dims(resnet50: FrozenBackbone) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    feats = resnet50(x, RESNET_LAYERS)
    maps = _resnet_maps(resnet50.model, x)
    assert [maps[k].shape[-1] for k in GRIDS] == [32, 16, 8, 4, 2]
    for layer, (_, dim) in RESNET50_TABLE.items():
        assert feats[layer].shape == (2, dim), layer
        expected = F.adaptive_avg_pool2d(maps[layer], GRIDS[layer]).flatten(1)
        torch.testing.assert_close(feats[layer], expected, rtol=1e-5, atol=1e-6)
    # conv1 at 32x32 -> 12x12 adaptive: the first cell averages rows/cols 0..2 (floor(0) .. ceil(32/12))
    torch.testing.assert_close(feats["conv1"].view(2, 64, 12, 12)[:, :, 0, 0],
                               maps["conv1"][:, :, :3, :3].mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    assert feats["pool5"].shape == (2, 2048)


def test_describe_pooling(resnet50: FrozenBackbone) -> None:
    assert resnet50.describe_pooling(["conv1", "res5", "pool5"], 224) == {
        "conv1": "avg(k=10,s=10,p=4)->12x12",
        "res5": "avg(k=6,s=1,p=0)->2x2",
        "pool5": "adaptive_avg->1x1",
    }
    assert resnet50.describe_pooling(["res4"], 64) == {"res4": "adaptive_avg->3x3"}


def test_stride_one_res5_uses_kernel_12_stride_2() -> None:
    # a colorization-style res5 keeps 14x14 at 224 px: pooled with kernel 12, stride 2 -> 2x2
    pool = get_architecture("resnet50").pools["res5"]
    fmap = torch.randn(1, 8, 14, 14)
    torch.testing.assert_close(pool.pool(fmap), F.avg_pool2d(fmap, 12, 2, 0))
    assert pool.pool(fmap).shape == (1, 8, 2, 2)


def test_resnet18_dims_at_64() -> None:
    backbone = _backbone("resnet18")
    feats = backbone(torch.randn(3, 3, 64, 64), RESNET_LAYERS)
    dims = {layer: value.shape for layer, value in feats.items()}
    assert dims == {
        "conv1": (3, 64 * 144), "res2": (3, 64 * 36), "res3": (3, 128 * 16),
        "res4": (3, 256 * 9), "res5": (3, 512 * 4), "pool5": (3, 512),
    }
    assert all(v.dtype == torch.float32 for v in feats.values())


def test_alexnet_at_227_matches_protocol_table() -> None:
    backbone = _backbone("alexnet")
    model = backbone.model
    x = torch.randn(2, 3, 227, 227, generator=torch.Generator().manual_seed(2))
    feats = backbone(x, ["conv1", "conv2", "conv3", "conv4", "conv5"])
    with torch.no_grad():  # stage outputs from the model's own modules
        c1 = model.conv1(x)
        c2 = model.conv2(model.pool1(c1))
        c3 = model.conv3(model.pool2(c2))
        c4 = model.conv4(c3)
        c5 = model.conv5(c4)
    table = {  # layer: (map, (kernel, stride), dim)
        "conv1": (c1, (19, 4), 9600), "conv2": (c2, (12, 3), 9216), "conv3": (c3, (9, 1), 9600),
        "conv4": (c4, (9, 1), 9600), "conv5": (c5, (8, 1), 9216),
    }
    assert [m.shape[-1] for m, _, _ in table.values()] == [55, 27, 13, 13, 13]
    for layer, (fmap, (kernel, stride), dim) in table.items():
        assert feats[layer].shape == (2, dim), layer
        torch.testing.assert_close(feats[layer], nn.AvgPool2d(kernel, stride)(fmap).flatten(1),
                                   rtol=1e-5, atol=1e-6)
    assert (feats["conv1"] >= 0).all()  # post-ReLU


def test_only_requested_stages_run() -> None:
    backbone = _backbone("resnet18")
    calls: list[str] = []
    for name in ("layer1", "layer4", "avgpool"):
        getattr(backbone.model, name).register_forward_hook(lambda *_, n=name: calls.append(n))
    feats = backbone(torch.randn(1, 3, 32, 32), ["conv1"])
    assert list(feats) == ["conv1"] and calls == []
    feats = backbone(torch.randn(1, 3, 32, 32), ["res2"])
    assert list(feats) == ["res2"] and calls == ["layer1"]
    calls.clear()
    backbone(torch.randn(1, 3, 32, 32), ["pool5", "conv1"])
    assert calls == ["layer1", "layer4", "avgpool"]


def test_unknown_layer_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"resnet18 has no layer\(s\) \['res6'\]"):
        _backbone("resnet18")(torch.randn(1, 3, 32, 32), ["conv1", "res6"])


def test_frozen_backbone_is_frozen() -> None:
    backbone = _backbone("resnet18")
    assert not any(p.requires_grad for p in backbone.parameters())
    assert backbone.train() is backbone
    backbone.train(True)
    assert not any(m.training for m in backbone.modules())
    before = {k: v.clone() for k, v in backbone.model.state_dict().items() if "running" in k or "num_batches" in k}
    assert before
    # inputs far from the initial running stats (mean 0, var 1): train-mode BN would move them
    for _ in range(2):
        out = backbone(torch.randn(4, 3, 32, 32) * 5 + 3, RESNET_LAYERS)
        assert not out["res5"].requires_grad
    after = backbone.model.state_dict()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0)


def test_create_model_is_deterministic_per_seed() -> None:
    a, b, c = (create_model("resnet18", seed=s).state_dict() for s in (0, 0, 1))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    assert not torch.equal(a["layer4.1.conv2.weight"], c["layer4.1.conv2.weight"])


def test_create_model_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    create_model("resnet18", seed=5)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_weights_hash() -> None:
    arch = get_architecture("resnet18")
    model = create_model("resnet18", seed=0)
    state = trunk_state_dict(arch, model)
    assert not any(k.startswith("fc.") for k in state)
    digest = weights_hash(state)
    assert len(digest) == 64
    # same content in another key order / a copy -> same hash
    assert weights_hash(dict(reversed(list(state.items())))) == digest
    assert weights_hash({k: v.clone() for k, v in state.items()}) == digest
    assert weights_hash(trunk_state_dict(arch, create_model("resnet18", seed=0))) == digest
    # one weight changed by one ulp -> different hash
    changed = {k: v.clone() for k, v in state.items()}
    changed["layer3.0.conv1.weight"][0, 0, 0, 0] = torch.nextafter(
        changed["layer3.0.conv1.weight"][0, 0, 0, 0], torch.tensor(1.0))
    assert weights_hash(changed) != digest
    # BN running statistics are part of the representation too
    changed = {k: v.clone() for k, v in state.items()}
    changed["bn1.running_var"][0] += 1
    assert weights_hash(changed) != digest
    # the classifier head is not
    model.fc.weight.data.add_(1.0)
    assert weights_hash(trunk_state_dict(arch, model)) == digest
