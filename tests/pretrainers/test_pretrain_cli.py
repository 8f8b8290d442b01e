"""`ssl-bench pretrain` end to end on a tiny image folder, --opt parsing and validation, `list
pretext` and a plugin's methods and listings, and the `pretext` pretrainer of benchmark.yaml
(train once, reuse, strict load)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import pretrainers.pretext.methods.rotation as pretext_rotation
import pretrainers.pretext.trainer as pretext_trainer
from benchmark.checkpoint import load_trunk_weights
from benchmark.cli import main
from benchmark.config import load_suite
from benchmark.plugin_api import RunContext
from benchmark.errors import ConfigError
from benchmark.features import FeatureCache
from benchmark.models import create_model
from benchmark.models.backbone import get_architecture, trunk_state_dict
from benchmark.registry import PRETRAINERS, Registry
from pretrainers.pretext.method import PRETEXT_METHODS
from pretrainers.pretext.trainer import parse_opts

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def image_dir(tmp_path) -> Path:
    root = tmp_path / "unlabeled"
    rng = np.random.default_rng(0)
    for i in range(8):
        folder = root / ("nested" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    return root


def test_pretrain_cli_end_to_end(image_dir, tmp_path, capsys) -> None:
    out = tmp_path / "ckpt" / "jigsaw.pth"
    code = main(["pretrain", "jigsaw", "--data", str(image_dir), "--arch", "resnet18", "--out", str(out),
                 "--epochs", "2", "--batch-size", "4", "--image-size", "32", "--device", "cpu", "--workers", "0",
                 "--opt", "num_permutations=6", "--opt", "head=mlp", "--opt", "hidden_dim=64"])
    assert code == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    saved = torch.load(out, weights_only=True)
    meta = saved["meta"]
    assert meta["options"]["num_permutations"] == 6 and meta["options"]["head"] == "mlp"
    assert meta["num_images"] == 8 and meta["epochs"] == 2 and len(meta["loss_history"]) == 2
    assert meta["iterations"] == 4 and meta["training"]["lr"] == 0.05  # the method's default
    model = create_model("resnet18", seed=1)
    load_trunk_weights(model, get_architecture("resnet18"), out)
    assert all(torch.equal(v, saved["state_dict"][k])
               for k, v in trunk_state_dict(get_architecture("resnet18"), model).items())
    assert len(out.with_name("jigsaw.log.csv").read_text().splitlines()) == 1 + 4


def test_bad_opt_key_suggests_the_closest(image_dir, tmp_path, capsys) -> None:
    code = main(["pretrain", "simclr", "--data", str(image_dir), "--arch", "resnet18", "--out",
                 str(tmp_path / "x.pth"), "--opt", "temprature=0.1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown key 'temprature'" in err and "Did you mean 'temperature'?" in err
    assert not (tmp_path / "x.pth").exists()
    assert main(["pretrain", "simclr", "--data", str(image_dir), "--out", str(tmp_path / "x.pth"),
                 "--opt", "temperature"]) == 2
    assert "expected key=value" in capsys.readouterr().err
    assert main(["pretrain", "rotatoin", "--data", str(image_dir), "--out", str(tmp_path / "x.pth")]) == 2
    assert "Did you mean 'rotation'?" in capsys.readouterr().err
    assert main(["pretrain", "rotation", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_opt_values_are_yaml() -> None:
    assert parse_opts(["temperature=0.2", "blur=false", "crop_scale=[0.2, 1.0]", "hidden_dim=null", "a=b=c"]) == \
        {"temperature": 0.2, "blur": False, "crop_scale": [0.2, 1.0], "hidden_dim": None, "a": "b=c"}
    with pytest.raises(ConfigError, match="given twice"):
        parse_opts(["x=1", "x=2"])


def test_list_pretext(capsys) -> None:
    assert main(["list", "pretext"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = [line.split()[0] for line in lines]
    assert {"rotation", "jigsaw", "simclr", "moco"} <= set(listed) and listed == sorted(listed)
    assert set(listed) == set(PRETEXT_METHODS.names())
    # each with the first line of its module's docstring
    assert next(line for line in lines if line.startswith("rotation ")).endswith(
        pretext_rotation.__doc__.strip().splitlines()[0])
    assert main(["list", "pretext", "--filter", "*c*"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == [
        name for name in listed if "c" in name]
    assert main(["list", "pretrainers"]) == 0
    assert "pretext" in capsys.readouterr().out.split()


def test_a_plugin_adds_a_pretext_method_and_a_listing(tmp_path, monkeypatch, capsys) -> None:
    """A pip-installed plugin is a distribution with entry points: emulate one on sys.path. Its
    pretext method joins the methods' registry, its listing `ssl-bench list`."""
    (tmp_path / "my_pretext_plugin.py").write_text(textwrap.dedent("""
        \"\"\"`my_method`: a plugin's pretext method.\"\"\"
        from pretrainers.pretext.method import PretextMethod
        class MyMethod(PretextMethod):
            pass
        def list_my_parts(pattern):
            return [f"part-{i} (filter {pattern})" for i in range(2)]
    """))
    dist = tmp_path / "my_pretext_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-pretext-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ssl_bench.pretext_methods]\nmy_method = my_pretext_plugin:MyMethod\n\n"
                                           "[ssl_bench.listings]\nmy_parts = my_pretext_plugin:list_my_parts\n"
                                           "tasks = my_pretext_plugin:list_my_parts\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    methods = Registry("pretext_methods")  # PRETEXT_METHODS itself was loaded before the plugin existed
    assert "my_method" in methods.names() and "rotation" in methods.names()
    assert methods.get("my_method").name == "my_method"
    assert main(["list", "my_parts", "--filter", "x*"]) == 0
    assert capsys.readouterr().out.splitlines() == ["part-0 (filter x*)", "part-1 (filter x*)"]
    assert main(["list", "tasks"]) == 0  # a plugin cannot replace a built-in listing
    assert "voc07_svm" in capsys.readouterr().out.split()


def _ctx(run_dir: Path, data_root: Path) -> RunContext:
    return RunContext(run_dir=run_dir, data_root=data_root, cache=FeatureCache(run_dir / "cache"),
                      device=torch.device("cpu"), num_workers=0)


def test_pretext_pretrainer_trains_once_then_reuses(image_dir, tmp_path, monkeypatch) -> None:
    cls = PRETRAINERS.get("pretext")
    options = {**cls.options, "method": "rotation", "arch": "resnet18", "data": image_dir.name, "epochs": 1,
               "batch_size": 4, "image_size": 32, "method_options": {"head": "mlp"}}
    first = cls(**options).build(_ctx(tmp_path / "run", image_dir.parent), "rot")  # data relative to data_root
    checkpoints = list((tmp_path / "run" / "checkpoints").glob("rot-*.pth"))
    assert len(checkpoints) == 1 and first.info["method"] == "rotation" and first.info["pretrainer"] == "pretext"
    assert not any(p.requires_grad for p in first.backbone.parameters())
    monkeypatch.setattr(pretext_trainer, "train_pretext", lambda *a, **k: pytest.fail("trained again"))
    again = cls(**options).build(_ctx(tmp_path / "run", image_dir.parent), "rot")
    assert again.weights == first.weights
    # other data under the same options: another checkpoint key, so it trains
    Image.new("RGB", (40, 40), (10, 200, 30)).save(image_dir / "extra.png")
    with pytest.raises(pytest.fail.Exception, match="trained again"):
        cls(**options).build(_ctx(tmp_path / "run", image_dir.parent), "rot")


def test_pretext_model_in_benchmark_yaml_is_validated(tmp_path) -> None:
    config = {"suites": {"s": {"models": {"rot": {"pretrainer": "pretext", "method": "rotation", "arch": "resnet18",
                                                   "epoch": 3}}}}}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="Did you mean 'epochs'"):
        load_suite("s", path)
    cls = PRETRAINERS.get("pretext")
    with pytest.raises(ConfigError, match=r"pretrainer 'pretext'\.method_options.*Did you mean 'temperature'"):
        cls(**{**cls.options, "method": "simclr", "arch": "resnet18", "method_options": {"temprature": 0.1}})
    config["suites"]["s"]["models"]["rot"] = {"pretrainer": "pretext", "method": "simclr", "arch": "resnet18",
                                              "method_options": {"temprature": 0.1}}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError,
                       match=r"bench\.yaml: suites\.s\.models\.rot\.method_options\. Did you mean 'temperature'"):
        load_suite("s", path)
    mini = load_suite("goyal2019-mini")
    pretext_models = {m.name: m.options for m in mini.models if m.pretrainer == "pretext"}
    assert {"rotation", "jigsaw", "simclr"} <= set(pretext_models)
    assert all(o["arch"] == "resnet18" and o["image_size"] == 64 and o["data"] == "voc07:trainval"
               for o in pretext_models.values())
