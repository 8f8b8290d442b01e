"""Dilated ResNet + PSP decoder: the atrous conversion (vs the original network and torchvision),
frozen layers bit-identical after training, training beats the untrained decoder, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.models as tvm

from benchmark.datasets.nyuv2 import load_nyuv2
from benchmark.datasets.synth_nyuv2 import synth_nyuv2
from benchmark.errors import ConfigError
from benchmark.models import create_model
from tasks.normals.codebook import cached_codebook
from tasks.normals.model import NormalsNet, dilate_resnet
from tasks.normals.train import (
    NormalsData,
    NormalsSchedule,
    NormalsSetup,
    build_model,
    evaluate,
    train_normals,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """One intra-op thread: faster on the shared cores, and the same for runs compared bit for bit."""


def trunk(net, x):
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_dilated_network_computes_the_original_densely(name) -> None:
    """Atrous conversion: output stride 8, and every 4th res5 position equals the original res5."""
    original = create_model(name, seed=0).eval()
    before = {k: v.clone() for k, v in original.state_dict().items()}
    dilated = dilate_resnet(original).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense, sparse = trunk(dilated, x), trunk(original, x)
    assert dense.shape[-2:] == (8, 8) and sparse.shape[-2:] == (2, 2)
    assert torch.allclose(dense[..., ::4, ::4], sparse, rtol=1e-4, atol=1e-4 * sparse.abs().max().item())
    # the original is untouched: same weights, still strided
    assert original.layer4[0].conv1.stride == (2, 2) or original.layer4[0].conv2.stride == (2, 2)
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())


def test_bottleneck_conversion_equals_torchvision() -> None:
    original = create_model("resnet50", seed=0).eval()
    reference = tvm.resnet50(weights=None, replace_stride_with_dilation=[False, True, True]).eval()
    reference.load_state_dict(original.state_dict())
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(trunk(dilate_resnet(original).eval(), x), trunk(reference, x))


def test_not_a_resnet_is_an_error() -> None:
    with pytest.raises(ConfigError, match="needs a torchvision ResNet"):
        dilate_resnet(create_model("alexnet", seed=0))


def test_normals_net_shapes_and_trainable_parts() -> None:
    net = NormalsNet(create_model("resnet18", seed=0), out_channels=40, decoder_channels=32)
    out = net(torch.randn(2, 3, 40, 56))
    assert out.shape == (2, 40, 40, 56)
    assert not any(p.requires_grad for p in net.frozen.parameters())
    assert all(p.requires_grad for p in net.res5.parameters())
    assert all(p.requires_grad for p in net.decoder.parameters())
    net.train()
    assert not net.frozen.training and not net.res5.training and net.decoder.training
    assert not any(k.startswith("frozen.") for k in net.trainable_state())


# --- training on generated data ------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = synth_nyuv2(tmp_path_factory.mktemp("nyu"), n_images=24, seed=0, width=48, height=36)
    train, test = load_nyuv2(root, "train"), load_nyuv2(root, "test")
    codes, _ = cached_codebook(tmp_path_factory.mktemp("cache"), train.fingerprint(), 12, train.normals, len(train),
                               samples=5000, seed=0)
    return train, test, torch.as_tensor(codes, dtype=torch.float32)


def setup_for(codes, head="codebook", iterations=30, **kw) -> NormalsSetup:
    schedule = NormalsSchedule("custom", iterations, 4, 0.02, 1e-4)
    return NormalsSetup(head=head, schedule=schedule, short_side=(27, 45), codes=codes, decoder_channels=32, seed=0,
                        checkpoint_every=4, eval_batch_size=8, fingerprint=f"test-{head}-{iterations}", **kw)


class Crash(Exception):
    pass


def crash_at(n):
    def hook(done):
        if done == n:
            raise Crash

    return hook


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    train, test, codes = data
    resnet = create_model("resnet18", seed=0)
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    setup = setup_for(codes)
    untrained = evaluate(build_model(resnet, setup), NormalsData(test), setup, CPU)
    out = tmp_path_factory.mktemp("run")
    return {"resnet": resnet, "before": before, "setup": setup, "untrained": untrained, "out": out,
            "result": train_normals(resnet, train, test, setup, out, CPU)}


def test_frozen_layers_unchanged_and_training_helps(trained, data) -> None:
    resnet, result = trained["resnet"], trained["result"]
    # the benchmark's network itself is untouched (the task trains a deep copy)
    assert all(torch.equal(trained["before"][k], v) for k, v in resnet.state_dict().items())
    # the trained copy's conv1..res4, weights and BatchNorm statistics, are bit-identical to a fresh
    # conversion; the checkpoint does not even hold them
    net = build_model(resnet, trained["setup"])
    fresh = build_model(resnet, trained["setup"])
    assert not any(k.startswith("frozen.") for k in result["model"])
    net.load_state_dict(result["model"], strict=False)
    frozen_state = net.frozen.state_dict()
    assert len(frozen_state) > 50
    for key, value in fresh.frozen.state_dict().items():
        assert torch.equal(frozen_state[key], value), key
    # res5 and the decoder did change
    assert not torch.equal(fresh.trainable_state()["res5.0.conv1.weight"], result["model"]["res5.0.conv1.weight"])
    untrained, metrics = trained["untrained"], result["metrics"]
    print("untrained", untrained, "trained", metrics)
    assert metrics["valid_pixels"] == untrained["valid_pixels"] > 0
    assert metrics["mean_error"] < untrained["mean_error"] - 5, (untrained, metrics)
    assert metrics["within_30"] > untrained["within_30"] + 5
    assert np.mean(result["losses"][-5:]) < np.mean(result["losses"][:5])


@pytest.mark.parametrize("crash", [5, 13])
def test_resume_after_crash_equals_uninterrupted(trained, data, tmp_path, crash) -> None:
    train, test, codes = data
    resnet, setup, reference = trained["resnet"], trained["setup"], trained["result"]
    with pytest.raises(Crash):
        train_normals(resnet, train, test, setup, tmp_path, CPU, on_iteration=crash_at(crash))
    partial = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert not partial["done"] and partial["iteration"] == crash - crash % setup.checkpoint_every
    resumed = train_normals(resnet, train, test, setup, tmp_path, CPU)
    assert resumed["metrics"] == reference["metrics"]
    assert resumed["losses"] == reference["losses"]
    for key, value in reference["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert (tmp_path / "log.csv").read_text() == (trained["out"] / "log.csv").read_text()


def test_finished_run_is_read_back_and_another_configuration_restarts(trained, data, tmp_path, capsys) -> None:
    train, test, codes = data
    again = train_normals(trained["resnet"], train, test, trained["setup"], trained["out"], CPU,
                          on_iteration=crash_at(1))  # would raise if it trained again
    assert again["metrics"] == trained["result"]["metrics"]
    short = setup_for(codes, iterations=2)
    train_normals(trained["resnet"], train, test, short, tmp_path, CPU)
    other = setup_for(codes, iterations=3)
    result = train_normals(trained["resnet"], train, test, other, tmp_path, CPU)
    assert "another configuration" in capsys.readouterr().out and len(result["losses"]) == 3


def test_regression_head_trains(data, tmp_path) -> None:
    train, test, _ = data
    resnet = create_model("resnet18", seed=0)
    setup = setup_for(None, head="regression", iterations=12)
    untrained = evaluate(build_model(resnet, setup), NormalsData(test), setup, CPU)
    result = train_normals(resnet, train, test, setup, tmp_path, CPU)
    assert len(result["model"]["decoder.classifier.weight"]) == 3
    assert result["metrics"]["mean_error"] < untrained["mean_error"]
