"""A swept suite end to end on a tiny generated VOC07: points planned and run, the nested data
subset used for training, sweep columns in the gathered rows, scaling figures in the report."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from benchmark.cli import main

pytestmark = pytest.mark.slow

SUITE = """
suites:
  tinysweep:
    data_root: {data}
    num_workers: 0
    batch_size: 16
    models:
      rand:
        pretrainer: random
        arch: resnet18
        sweep: {{arch: [resnet18, resnet34]}}
      sup:
        pretrainer: supervised
        arch: resnet18
        image_size: 32
        epochs: 1
        batch_size: 8
        sweep: {{data_fraction: [0.25, 1.0]}}
    tasks:
      voc07_svm:
        layers: [res4, res5]
        image_size: 32
        costs: [0.1, 1.0]
        n_jobs: 1
"""


def test_swept_suite_runs_and_reports_scaling_curves(tmp_path, synth_voc07):
    config = tmp_path / "bench.yaml"
    config.write_text(SUITE.format(data=synth_voc07(120, 1)))
    out = tmp_path / "runs"
    assert main(["run", "--suite", "tinysweep", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 0
    run = out / "tinysweep"
    df = pd.read_csv(run / "results.csv", keep_default_na=False)
    maps = df[df.metric == "mAP"]
    assert sorted(set(maps.model)) == ["rand", "rand.arch-resnet34", "sup", "sup.data_fraction-0.25"]
    assert set(maps[maps.model.str.startswith("rand")]["sweep"]) == {"rand"}
    assert maps.set_index("model")["sweep:data_fraction"].get("sup.data_fraction-0.25").iloc[0] == "0.25"
    # the quarter model trained on a quarter of trainval, and says so
    metas = {p.name.split("-")[0]: json.loads(p.read_text()) for p in (run / "checkpoints").glob("*.json")}
    full, quarter = metas["sup"], metas["sup.data_fraction"]
    assert quarter["train_images"] * 4 >= full["train_images"] > (quarter["train_images"] - 1) * 4
    assert quarter["data_fraction"] == 0.25 and "nested subset" in quarter["data_subset"]
    figures = sorted(p.name for p in run.glob("scaling_*.png"))
    assert figures == ["scaling_rand_arch.png", "scaling_sup_data_fraction.png"]
    page = (run / "report.html").read_text()
    assert "scaling_rand_arch.png" in page and "scaling_sup_data_fraction.png" in page
