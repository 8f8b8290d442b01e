"""The contract every registered plugin keeps, checked over the registries (built-in parts and any
installed third-party plugin alike): what the runner, the config loader and the pretext loop rely on."""

from __future__ import annotations

import inspect
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.plugin_api import Pretrainer, Task
from benchmark.models import create_model
from benchmark.models.backbone import get_architecture
from benchmark.options import Declared, Option, declared, validate
from benchmark.registry import PRETRAINERS, TASKS
from pretrainers.pretext.method import PRETEXT_METHODS, PretextMethod
from pretrainers.pretext.trainer import OPTIMIZERS, TRAIN_DEFAULTS

pytestmark = pytest.mark.usefixtures("single_thread")

ARCH = "resnet18"
SIZE = 64
# options scaled down for 64 px images and a batch of four; a method not listed runs on its defaults
TINY_OPTIONS = {
    "jigsaw": {"num_permutations": 8},
    "simclr": {"blur": False},
    "moco": {"queue_size": 64, "dim": 16},
    "colorization": {"head_channels": 32},
    "relative_position": {"patch_size": 20, "gap": 6, "jitter": 2, "hidden": 64, "aberration": "none"},
    "deepcluster": {"num_clusters": 4, "pca_dim": 8, "kmeans_iterations": 5},
    "context_encoder": {"decoder_width": 32},
    "pirl": {"num_negatives": 32, "dim": 16},
    "nat": {"target_dim": 16, "reassign_every": 1},
}


def _check_declaration(cls) -> None:
    assert isinstance(cls.options, Declared), f"{cls.__name__}.options: declare them with benchmark.options.declare"
    assert all(isinstance(option, Option) for option in declared(cls.options).values())


def test_every_registry_holds_the_built_in_parts() -> None:
    """The built-in parts come through ssl-bench's own entry points (pyproject.toml): an install
    that lost them would otherwise look like an empty benchmark."""
    assert {"voc07_svm", "lowshot_voc07", "lowshot_places205", "linear_places205", "normals_nyuv2",
            "detection_voc07"} <= set(TASKS.names())
    assert {"random", "supervised", "checkpoint", "pretext"} <= set(PRETRAINERS.names())
    assert {"rotation", "jigsaw", "simclr", "moco", "colorization", "relative_position", "deepcluster", "exemplar",
            "context_encoder", "pirl", "nat"} <= set(PRETEXT_METHODS.names())


def test_an_empty_registry_asks_whether_ssl_bench_is_installed() -> None:
    from benchmark.errors import ConfigError
    from benchmark.registry import Registry

    with pytest.raises(ConfigError, match=r"None is registered: is ssl-bench installed \(pip install -e \.\)\?"):
        Registry("no_such_group").get("voc07_svm")


@pytest.mark.parametrize("name", TASKS.names())
def test_task_contract(name) -> None:
    cls = TASKS.get(name)
    assert inspect.isclass(cls) and issubclass(cls, Task)
    assert cls.name == name, f"registered as '{name}' but named '{cls.name}'"
    assert isinstance(cls.dataset, str) and cls.dataset
    assert isinstance(cls.trains, bool)
    _check_declaration(cls)
    task = cls()  # every option has a valid default
    assert isinstance(task.needs_gpu, bool)  # the schedulers read it (a property where an option decides)
    assert dict(task.config) == dict(validate({}, cls.options, name))
    units = task.units(get_architecture(ARCH))
    assert units and all(isinstance(unit, str) and unit for unit in units)
    assert len(set(units)) == len(units)


@pytest.mark.parametrize("name", PRETRAINERS.names())
def test_pretrainer_contract(name) -> None:
    cls = PRETRAINERS.get(name)
    assert inspect.isclass(cls) and issubclass(cls, Pretrainer)
    assert cls.name == name, f"registered as '{name}' but named '{cls.name}'"
    assert isinstance(cls.trains, bool)
    _check_declaration(cls)
    assert callable(cls.build)


def _image(seed: int) -> Image.Image:
    """Smooth, structured colours (noise has nothing for a pretext task to see)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:80, 0:72] / 80.0
    base = rng.uniform(0, 1, 3) + rng.uniform(-1, 1, 3) * y[..., None] + rng.uniform(-1, 1, 3) * x[..., None]
    return Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8))


class _PlainLoader:
    """What the loop's plain loader yields to ``epoch_start``: (normalised images, indices)."""

    def __init__(self, images):
        from torchvision import transforms as T

        from benchmark.datasets.images import IMAGENET_MEAN, IMAGENET_STD

        transform = T.Compose([T.Resize(SIZE), T.CenterCrop(SIZE), T.ToTensor(),
                               T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.tensors = torch.stack([transform(image) for image in images])
        self.dataset = list(range(len(images)))

    def __iter__(self):
        yield self.tensors, torch.arange(len(self.dataset))


@pytest.mark.parametrize("name", PRETEXT_METHODS.names())
def test_pretext_method_contract(name, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path))  # jigsaw's permutation sets
    cls = PRETEXT_METHODS.get(name)
    assert inspect.isclass(cls) and issubclass(cls, PretextMethod)
    assert cls.name == name, f"registered as '{name}' but named '{cls.name}'"
    _check_declaration(cls)
    assert set(cls.training) <= {*TRAIN_DEFAULTS, "optimizer"}
    assert cls.training.get("optimizer", "sgd") in OPTIMIZERS
    doc = (sys.modules[cls.__module__].__doc__ or "").strip()
    assert doc, "`ssl-bench list pretext` shows the first line of the method module's docstring"

    torch.manual_seed(0)
    method = cls(create_model(ARCH, seed=0), get_architecture(ARCH), SIZE, **TINY_OPTIONS.get(name, {}))
    images = [_image(i) for i in range(8)]
    method.epoch_start(0, _PlainLoader(images), torch.device("cpu"))
    examples = [method.sample(image, i, torch.Generator().manual_seed(i)) for i, image in enumerate(images[:4])]
    assert all(isinstance(value, torch.Tensor) for example in examples for value in example.values())
    batch = {key: torch.stack([example[key] for example in examples]) for key in examples[0]}
    method.train()
    loss, metrics = method(batch)
    assert loss.ndim == 0 and math.isfinite(float(loss.detach()))
    assert all(isinstance(value, float) and math.isfinite(value) for value in metrics.values())
    loss.backward()
    trunk_grads = [p.grad for p in method.trunk.parameters() if p.grad is not None]
    assert trunk_grads, "the loss must train the trunk: only its weights are saved"
    method.after_step()


def test_plugins_written_against_the_former_module_name_still_import():
    import benchmark.engine as former
    import benchmark.plugin_api as api

    for name in ("Task", "Pretrainer", "RunContext", "LoadedModel", "ReportItem"):
        assert getattr(former, name) is getattr(api, name)
