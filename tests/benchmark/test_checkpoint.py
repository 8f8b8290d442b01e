"""Strict trunk loading from the checkpoint layouts researchers actually have."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmark.checkpoint import load_trunk_weights
from benchmark.plugin_api import LoadedModel, RunContext
from benchmark.errors import CheckpointError, ConfigError
from benchmark.features import FeatureCache
from benchmark.models import FrozenBackbone, create_model
from benchmark.models.backbone import get_architecture, trunk_state_dict, weights_hash
from benchmark.registry import PRETRAINERS

ARCH = get_architecture("resnet18")


pytestmark = pytest.mark.usefixtures("single_thread")


class NotATensor:
    """A custom class: unpickling it would execute code, so weights_only loading refuses it."""

    def __init__(self):
        self.x = 1


@pytest.fixture(scope="module")
def original() -> dict[str, torch.Tensor]:
    """Trunk weights (no fc) that a fresh model (seed 0) certainly does not have."""
    model = create_model("resnet18", seed=11)
    for name, buf in model.named_buffers():  # non-default BN statistics must be loaded too
        if "running" in name:
            buf.add_(torch.rand(buf.shape, generator=torch.Generator().manual_seed(len(name))))
    return {k: v.clone() for k, v in trunk_state_dict(ARCH, model).items()}


@pytest.fixture(scope="module")
def other(original) -> dict[str, torch.Tensor]:
    """Different values with the same keys (a DINO student)."""
    return {k: (v + 1 if v.is_floating_point() else v + 7) for k, v in original.items()}


def _fresh() -> torch.nn.Module:
    return create_model("resnet18", seed=0)


def _assert_trunk_equals(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    loaded = trunk_state_dict(ARCH, model)
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def _layouts(sd: dict, other: dict) -> dict[str, object]:
    head = {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    return {
        "torchvision": {**sd, **head},
        "torchvision_trunk_only": dict(sd),
        "ddp": {"state_dict": {"module." + k: v for k, v in {**sd, **head}.items()}, "epoch": 3},
        "moco": {
            "epoch": 200, "arch": "resnet18",
            "state_dict": {
                **{"module.encoder_q." + k: v for k, v in sd.items()},
                "module.encoder_q.fc.0.weight": torch.randn(512, 512),
                "module.encoder_q.fc.0.bias": torch.randn(512),
                "module.encoder_q.fc.2.weight": torch.randn(128, 512),
                **{"module.encoder_k." + k: v + 1 for k, v in sd.items() if v.is_floating_point()},
                "module.queue": torch.randn(128, 64),
                "module.queue_ptr": torch.zeros(1, dtype=torch.long),
            },
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "params": [0, 1]}]},
        },
        "vissl": {"classy_state_dict": {"base_model": {"model": {
            "trunk": {"_feature_blocks." + k: v for k, v in sd.items()},
            "heads": {"0.clf.0.weight": torch.randn(128, 512)},
        }}}, "iteration": 10},
        "dino": {
            "teacher": {**{"backbone." + k: v for k, v in sd.items()},
                        "head.mlp.0.weight": torch.randn(64, 512), "head.last_layer.weight_g": torch.ones(1, 256)},
            "student": {**{"module.backbone." + k: v for k, v in other.items()},
                        "module.head.mlp.0.weight": torch.randn(64, 512)},
            "epoch": 100,
        },
    }


@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory, original, other) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    files = {}
    for name, content in _layouts(original, other).items():
        files[name] = root / f"{name}.pth"
        torch.save(content, files[name])
    return files


@pytest.mark.parametrize("layout, container, ignored", [
    ("torchvision", "<root>", 2),
    ("torchvision_trunk_only", "<root>", 0),
    ("ddp", "state_dict", 2),
    ("moco", "state_dict", None),  # q's fc (3), every float key of encoder_k, queue, queue_ptr
    ("vissl", "classy_state_dict/base_model/model/trunk", 0),
    ("dino", "teacher", 2),
])
def test_layouts_load_exactly(checkpoint_files, original, layout, container, ignored) -> None:
    model = _fresh()
    fc_before = model.fc.weight.clone()
    info = load_trunk_weights(model, ARCH, checkpoint_files[layout])
    _assert_trunk_equals(model, original)
    assert torch.equal(model.fc.weight, fc_before)  # the head is never taken from a checkpoint
    assert info["container"] == container and info["checkpoint"] == str(checkpoint_files[layout])
    if layout == "moco":
        ignored = 3 + sum(v.is_floating_point() for v in original.values()) + 2
    assert info["ignored_head_keys"] == ignored


def test_dino_student_on_request(checkpoint_files, other) -> None:
    model = _fresh()
    info = load_trunk_weights(model, ARCH, checkpoint_files["dino"], which="student")
    _assert_trunk_equals(model, other)
    assert info["container"] == "student"


# --- errors -----------------------------------------------------------------------------------------


def _save(tmp_path: Path, content) -> Path:
    path = tmp_path / "bad.pth"
    torch.save(content, path)
    return path


_PRISTINE: dict[str, dict[str, torch.Tensor]] = {}


def _load_fails(path: Path, arch_name: str = "resnet18") -> str:
    """Load must fail and must leave the model exactly as it was; returns the message."""
    model = create_model(arch_name, seed=0)
    if arch_name not in _PRISTINE:  # an untouched twin (create_model is deterministic per seed)
        _PRISTINE[arch_name] = create_model(arch_name, seed=0).state_dict()
    with pytest.raises(CheckpointError) as info:
        load_trunk_weights(model, get_architecture(arch_name), path)
    after = model.state_dict()
    assert after.keys() == _PRISTINE[arch_name].keys()
    assert all(torch.equal(after[k], v) for k, v in _PRISTINE[arch_name].items())
    return str(info.value)


def test_missing_trunk_key(tmp_path, original) -> None:
    sd = {k: v for k, v in original.items() if k not in ("layer2.1.bn2.running_var", "layer4.0.conv1.weight")}
    message = _load_fails(_save(tmp_path, sd))
    assert "2 trunk key(s) missing: layer2.1.bn2.running_var, layer4.0.conv1.weight" in message
    assert "Nothing was loaded" in message and "resnet18" in message


def test_unexpected_key(tmp_path, original) -> None:
    message = _load_fails(_save(tmp_path, {**original, "layer5.0.conv1.weight": torch.zeros(3)}))
    assert "1 unexpected key(s): layer5.0.conv1.weight" in message
    assert "missing" not in message


def test_shape_mismatch(tmp_path, original) -> None:
    sd = {**original, "conv1.weight": torch.zeros(64, 3, 5, 5)}
    message = _load_fails(_save(tmp_path, sd))
    assert "1 shape mismatch(es): conv1.weight: checkpoint (64, 3, 5, 5) vs resnet18 (64, 3, 7, 7)" in message


def test_resnet18_checkpoint_into_resnet34(checkpoint_files) -> None:
    message = _load_fails(checkpoint_files["torchvision"], "resnet34")
    # resnet34 has 3/4/6/3 blocks: layer1.2, layer2.2-3, layer3.2-5, layer4.2 are absent
    assert "trunk key(s) missing" in message and "layer1.2.bn1.bias" in message
    assert "resnet34" in message and "unexpected" not in message


def test_resnet18_checkpoint_into_resnet50(checkpoint_files) -> None:
    message = _load_fails(checkpoint_files["ddp"], "resnet50")
    assert "missing" in message and "shape mismatch" in message
    assert "layer1.0.conv1.weight: checkpoint (64, 64, 3, 3) vs resnet50 (64, 64, 1, 1)" in message


def test_nonexistent_file(tmp_path) -> None:
    path = tmp_path / "nowhere" / "model.pth"
    message = _load_fails(path)
    assert str(path) in message and "does not exist" in message


def test_pickled_custom_object_is_refused(tmp_path, original) -> None:
    path = _save(tmp_path, {"state_dict": original, "args": NotATensor()})
    message = _load_fails(path)
    assert str(path) in message and "weights_only" in message
    assert f"pickled Python objects ({__name__}.NotATensor)" in message
    assert "Re-save" in message and "state_dict()" in message


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_corrupt_file_is_not_blamed_on_pickled_objects(tmp_path, kind) -> None:
    path = tmp_path / "broken.pth"
    if kind == "garbage":  # not a zip: torch falls back to the legacy unpickler
        path.write_bytes(b"\x00not a checkpoint" * 10)
    elif kind == "truncated":
        torch.save({"w": torch.randn(1000)}, path)
        path.write_bytes(path.read_bytes()[:2000])
    else:
        path.write_bytes(b"")
    message = _load_fails(path)
    assert str(path) in message and "cannot be read" in message
    assert "pickled Python objects" not in message


def test_no_tensor_dict(tmp_path) -> None:
    message = _load_fails(_save(tmp_path, {"epoch": 3, "config": {"lr": 0.1}}))
    assert "no tensor dict" in message and "epoch" in message


# --- the `checkpoint` pretrainer --------------------------------------------------------------------


def _context(tmp_path: Path) -> RunContext:
    return RunContext(run_dir=tmp_path / "run", data_root=tmp_path / "data", cache=FeatureCache(tmp_path / "cache"),
                      device=torch.device("cpu"))


def test_checkpoint_pretrainer_end_to_end(tmp_path, checkpoint_files, original, other) -> None:
    cls = PRETRAINERS.get("checkpoint")
    loaded = cls(arch="resnet18", path=str(checkpoint_files["moco"]), which="teacher").build(_context(tmp_path), "moco")
    assert isinstance(loaded, LoadedModel) and isinstance(loaded.backbone, FrozenBackbone)
    assert loaded.name == "moco" and loaded.arch.name == "resnet18"
    assert loaded.weights == weights_hash(original)
    assert loaded.info["weights_sha256"] == loaded.weights
    assert loaded.info["pretrainer"] == "checkpoint" and loaded.info["container"] == "state_dict"
    _assert_trunk_equals(loaded.backbone.model, original)
    assert not any(p.requires_grad for p in loaded.backbone.parameters())
    # every layout of the same weights is the same representation (same feature-cache identity)
    for layout in ("vissl",):
        again = cls(arch="resnet18", path=str(checkpoint_files[layout]), which="teacher").build(_context(tmp_path), "x")
        assert again.weights == loaded.weights
    student = cls(arch="resnet18", path=str(checkpoint_files["dino"]), which="student").build(_context(tmp_path), "s")
    assert student.weights == weights_hash(other) != loaded.weights


def test_checkpoint_pretrainer_needs_path(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"pretrainer 'checkpoint'\.path is required; expected the path of a \.pth"):
        PRETRAINERS.get("checkpoint")(arch="resnet18", path=None, which="teacher").build(_context(tmp_path), "m")


def test_a_prefix_selects_the_trunk_inside_a_training_wrapper(tmp_path, original) -> None:
    """A Lightning-style {'state_dict': {'model.backbone.*', 'model.head.*'}}: without a prefix it
    is refused with the prefix that would load it; with it, exactly the trunk loads and the rows
    record the prefix and how many keys lay outside it; a prefix no key has is refused."""
    wrapped = {f"model.backbone.{k}": v for k, v in original.items()}
    wrapped.update({"model.head.weight": torch.zeros(10, 512), "model.head.bias": torch.zeros(10)})
    path = _save(tmp_path, {"state_dict": wrapped, "epoch": 3})
    message = _load_fails(path)
    assert f"{len(original)} of the {len(original)} trunk keys are there under 'model.backbone.'" in message
    assert "prefix: 'model.backbone.'" in message
    model = _fresh()
    info = load_trunk_weights(model, ARCH, path, prefix="model.backbone.")
    _assert_trunk_equals(model, original)
    assert (info["checkpoint_prefix"], info["keys_outside_prefix"]) == ("model.backbone.", 2)
    with pytest.raises(CheckpointError, match=r"no key starts with prefix 'backbone\.'.*model\."):
        load_trunk_weights(_fresh(), ARCH, path, prefix="backbone.")


def test_a_vit_checkpoint_of_another_depth_names_the_depth_that_fits(tmp_path) -> None:
    small = create_model("timm/vit_tiny_patch16_224[img_size=32,depth=2]", seed=1)
    path = _save(tmp_path, small.state_dict())
    deep = "timm/vit_tiny_patch16_224[img_size=32,depth=4]"
    with pytest.raises(CheckpointError) as info:
        load_trunk_weights(create_model(deep, seed=0), get_architecture(deep), path)
    message = str(info.value)
    assert "The checkpoint has blocks 0-1, the architecture 0-3: add [depth=2]" in message
    assert "torchvision key names" not in message  # that advice is for ResNets


def test_a_checkpoint_that_does_not_fit_is_refused_before_the_run_directory_exists(tmp_path, capsys) -> None:
    """ssl-bench run: a missing checkpoint file, or one of another architecture, is one error
    (exit 2) naming the model, before any folder is made."""
    from benchmark.cli import main
    from tests.suites import suite_yaml, voc07_svm

    assert main(["data", "synth", "voc07", "--out", str(tmp_path / "data"), "--images", "40", "--seed", "2"]) == 0
    resnet50 = create_model("resnet50", seed=0)
    wrong = tmp_path / "resnet50.pth"
    torch.save(resnet50.state_dict(), wrong)
    for path, expected in ((tmp_path / "nowhere.pth", "does not exist"), (wrong, "does not match architecture")):
        config = tmp_path / "bench.yaml"
        config.write_text(suite_yaml(tmp_path / "data", {"mine": {"pretrainer": "checkpoint", "arch": "resnet18",
                                                                  "path": str(path)}},
                                     {"voc07_svm": voc07_svm()}))
        out = tmp_path / "runs"
        assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ssl-bench: error: model 'mine': ") and expected in err and str(path) in err
        assert not out.exists()


def test_a_training_dict_with_args_gets_a_recipe_that_works(tmp_path, original) -> None:
    """DINO's layout: {'teacher', 'student', 'epoch', 'args': argparse.Namespace}. The refusal names
    the 'args' entry and gives a re-save recipe; following it (as a user would, on a file they
    trust) gives a file that loads."""
    import argparse

    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": original, "student": original, "epoch": 100, "args": argparse.Namespace(lr=0.1)}, path)
    message = _load_fails(path)
    assert "argparse.Namespace: the 'args' entry" in message and "weights_only=False" not in message
    assert "with torch.serialization.safe_globals([argparse.Namespace])" in message
    assert "torch.save({k: v for k, v in ckpt.items() if isinstance(v, dict)}" in message
    with torch.serialization.safe_globals([argparse.Namespace]):  # the recipe: no other class admitted
        ckpt = torch.load(path)
    torch.save({k: v for k, v in ckpt.items() if isinstance(v, dict)}, tmp_path / "checkpoint-weights.pth")
    assert str(tmp_path / "checkpoint-weights.pth") in message
    model = _fresh()
    load_trunk_weights(model, ARCH, tmp_path / "checkpoint-weights.pth")
    _assert_trunk_equals(model, original)
