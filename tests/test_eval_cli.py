"""``ssl-bench eval``: checkpoints evaluated on a suite's tasks in one command, no YAML file."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch

from benchmark.cli import main
from benchmark.config import load_suite
from benchmark.errors import ConfigError
from benchmark.evaluate import eval_suite, model_names, parse_task_layers
from benchmark.models import create_model
from tests.suites import RANDOM, suite_yaml, voc07_svm

VIT = "timm/vit_tiny_patch16_224[img_size=32,depth=2]"


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    assert main(["data", "synth", "voc07", "--out", str(root / "data"), "--images", "60", "--seed", "4"]) == 0
    config = root / "bench.yaml"
    config.write_text(suite_yaml(root / "data", {"random": RANDOM}, {"voc07_svm": voc07_svm(["res4", "res5"])}))
    resnet = root / "my_resnet.pth"
    torch.save(create_model("resnet18", seed=3).state_dict(), resnet)
    vit = root / "dino_vit.pth"  # DINO's training layout: the teacher's keys under 'backbone.'
    torch.save({"teacher": {f"backbone.{k}": v for k, v in create_model(VIT, seed=4).state_dict().items()},
                "epoch": 10}, vit)
    return root, config, resnet, vit


def test_a_resnet_and_a_dino_vit_in_one_command_and_one_leaderboard(setting, capsys, caplog) -> None:
    root, config, resnet, vit = setting
    out = root / "runs"
    caplog.set_level("WARNING")
    assert main(["eval", str(resnet), str(vit), "--arch", "resnet18", VIT, "--suite", "tiny", "--config", str(config),
                 "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    run_dir = out / "eval-tiny"
    assert "# Leaderboard: eval-tiny" in printed and f"--config {run_dir / 'config.yaml'} --suite eval-tiny" in printed
    rows = pd.read_csv(run_dir / "results.csv")
    maps = rows[(rows["metric"] == "mAP")]
    # each architecture family gets its own default layers (the suite's res4/res5 were for ResNets)
    assert set(maps.loc[maps["model"] == "my_resnet", "layer"]) == {"conv1", "res2", "res3", "res4", "res5"}
    # depth 2: its last 2 CLS
    assert set(maps.loc[maps["model"] == "dino_vit", "layer"]) == {"block0", "block1", "last2_cls"}
    assert set(rows["checkpoint_path"]) == {str(resnet.resolve()), str(vit.resolve())}
    assert rows["checkpoint_sha256"].str.len().eq(16).all()  # the file itself, not only its path
    # one table reads both side by side: each model's best layer, named
    best = printed[printed.index("## Best layer per model"):]
    assert re.search(r"\| my_resnet +\| [0-9.]+ \((conv1|res[2-5])\)", best)
    assert re.search(r"\| dino_vit +\| [0-9.]+ \((block[01]|last2_cls)\)", best)
    # the untagged timm name: the ViT checkpoint's statistics come from timm's default tag, and
    # the run says so before any work and in every row
    notices = [r.getMessage() for r in caplog.records if "names no pretrained tag" in r.getMessage()]
    assert len(notices) == 1 and "model 'dino_vit'" in notices[0] and "[stats=imagenet]" in notices[0]
    vit_rows = rows[rows["model"] == "dino_vit"]
    assert vit_rows["input_stats_source"].str.contains("timm's default tag").all()
    assert vit_rows["native_input_size"].eq(32).all() and "input_size" not in rows
    suite = load_suite("eval-tiny", run_dir / "config.yaml")  # the run's copy reruns it
    assert [m.name for m in suite.models] == ["my_resnet", "dino_vit"]

    assert main(["eval", str(resnet), "--arch", "resnet18", "--suite", "tiny", "--config", str(config),
                 "--tasks", "voc07_svm:res5", "--out", str(root / "one"), "--device", "cpu"]) == 0
    capsys.readouterr()
    one = pd.read_csv(root / "one" / "eval-tiny" / "results.csv")
    assert set(one.loc[one["metric"] == "mAP", "layer"]) == {"res5"}


def test_a_checkpoint_of_another_architecture_is_refused_before_anything_is_written(setting, capsys) -> None:
    root, config, resnet, _ = setting
    out = root / "refused"
    assert main(["eval", str(resnet), "--arch", "resnet50", "--suite", "tiny", "--config", str(config),
                 "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "model 'my_resnet'" in err and "does not match architecture resnet50" in err
    assert not out.exists()


def test_options_are_checked_and_names_made_from_files(setting, tmp_path) -> None:
    _, config, resnet, vit = setting
    assert parse_task_layers(["voc07_svm:res4,res5", "knn"]) == {"voc07_svm": ["res4", "res5"], "knn": None}
    with pytest.raises(ConfigError, match="TASK:L1,L2"):
        parse_task_layers(["voc07_svm:res4,"])
    assert model_names([tmp_path / "a.pth", tmp_path / "x" / "a.pth", tmp_path / "b c.pt"]) == ["a", "a_2", "b_c"]
    with pytest.raises(ConfigError, match="no task 'voc07_svn'.*voc07_svm"):
        eval_suite([resnet], ["resnet18"], "tiny", ["voc07_svn"], config)
    with pytest.raises(ConfigError, match="one per checkpoint"):
        eval_suite([resnet, vit], ["resnet18", VIT, "resnet50"], "tiny", None, config)
    with pytest.raises(ConfigError, match="no suite 'tinny'"):
        eval_suite([resnet], ["resnet18"], "tinny", None, config)
