"""A small timm ViT end to end through the command line, on generated data: trained by `supervised`
and loaded from a DINO-layout checkpoint, evaluated per block by VOC07 SVM, both low-shot tasks and
the Places205 linear heads; detection and normals refuse it at planning time."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from benchmark.cli import main
from benchmark.models import create_model
from benchmark.models.backbone import get_architecture, trunk_state_dict

pytestmark = pytest.mark.slow

VIT = "timm/vit_tiny_patch16_224[img_size=32,patch_size=8,depth=2,embed_dim=48,num_heads=2]"
DINO = "timm/vit_small_patch16_224.dino[img_size=32,patch_size=8,depth=2,embed_dim=48,num_heads=2]"

SUITE = """
suites:
  vit:
    data_root: {data}
    num_workers: 0
    batch_size: 16
    models:
      vit:
        pretrainer: supervised
        arch: "{vit}"
        image_size: 32
        epochs: 1
        batch_size: 16
        lr: 0.01
      dino:
        pretrainer: checkpoint
        arch: "{dino}"
        path: {checkpoint}
    tasks:
      voc07_svm:
        costs: [0.1, 1.0]
        n_jobs: 1
      lowshot_voc07:
        layers: [block1, last2_cls]
        k_values: [1, 2]
        num_samples: 2
        costs: [0.1, 1.0]
        n_jobs: 1
      lowshot_places205:
        models: [vit]
        layers: [block0]
        k_values: [4]
        num_samples: 1
        costs: [1.0]
        n_jobs: 1
      linear_places205:
        models: [vit]
        layers: [block0, block1, last2_cls]
        schedule: custom
        epochs: 1
        milestones: []
        batch_size: 8
"""


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit")
    assert main(["data", "synth", "voc07", "--out", str(root / "data"), "--images", "120", "--seed", "2"]) == 0
    assert main(["data", "synth", "places205", "--out", str(root / "data"), "--classes", "4", "--per-class", "8",
                 "--seed", "2"]) == 0
    model = create_model(DINO, seed=5)
    teacher = {f"backbone.{k}": v for k, v in trunk_state_dict(get_architecture(DINO), model).items()}
    torch.save({"teacher": teacher, "epoch": 1}, root / "dino.pth")
    config = root / "bench.yaml"
    config.write_text(SUITE.format(data=root / "data", vit=VIT, dino=DINO, checkpoint=root / "dino.pth"))
    out = root / "runs"
    assert main(["run", "--suite", "vit", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 0
    return root, config, out


def test_per_block_results_with_the_architecture_in_every_row(vit_run) -> None:
    _, _, out = vit_run
    df = pd.read_csv(out / "vit" / "results.csv", keep_default_na=False)
    svm = df[(df.task == "voc07_svm") & (df.metric == "mAP")]
    assert sorted(zip(svm.model, svm.layer)) == [(m, layer) for m in ("dino", "vit")
                                                  for layer in ("block0", "block1", "last2_cls")]
    assert set(svm.arch) == {VIT, DINO}
    dims = dict(zip(svm.layer, pd.to_numeric(svm.feature_dim)))
    assert dims == {"block0": 96, "block1": 96, "last2_cls": 96}  # CLS+mean; 2 x CLS
    assert pd.to_numeric(svm.value).between(0, 100).all()
    # what the timm family records in every row: the model and the input statistics it was fed with
    first = svm.groupby("model").first()
    assert first.loc["vit", "timm_model"] == "vit_tiny_patch16_224"
    assert first.loc["vit", "pretrained_cfg_mean"] == "0.5 0.5 0.5"  # the timm config's ...
    assert first.loc["vit", "input_mean"] == "0.485 0.456 0.406"  # ... but trained here on ImageNet statistics
    assert first.loc["dino", "input_mean"] == first.loc["dino", "pretrained_cfg_mean"] == "0.485 0.456 0.406"
    assert first.loc["vit", "native_input_size"] in (32, "32", 32.0)
    low = df[df.task == "lowshot_voc07"]
    assert set(low.layer) == {"block1", "last2_cls"} and set(low.model) == {"dino", "vit"}
    assert set(df[df.task == "lowshot_places205"].layer) == {"block0"}
    assert set(df[df.task == "linear_places205"].layer) >= {"block0", "block1", "last2_cls"}


@pytest.mark.parametrize("task", ["detection_voc07", "normals_nyuv2"])
def test_resnet_only_tasks_refuse_a_vit_at_planning(vit_run, tmp_path, task, capsys) -> None:
    root, _, _ = vit_run
    config = tmp_path / "bench.yaml"
    config.write_text(f"""
suites:
  s:
    data_root: {root / 'data'}
    models:
      vit: {{pretrainer: random, arch: "{VIT}"}}
    tasks:
      {task}: {{}}
""")
    assert main(["run", "--suite", "s", "--config", str(config), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert f"{task} is ResNet-only for now" in err and "timm architecture" in err
