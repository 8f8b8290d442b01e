"""``ssl-bench run --dry-run``: the run's checks, what it would run, read and write; nothing written."""

from __future__ import annotations

import re

import pytest

from benchmark.cli import main
from tests.suites import RANDOM, suite_yaml, voc07_svm


@pytest.fixture(scope="module")
def setting(tmp_path_factory, synth_voc07):
    root = tmp_path_factory.mktemp("dry_run")
    data = synth_voc07(40, 2)
    config = root / "bench.yaml"
    config.write_text(suite_yaml(data, {"random": RANDOM, "random2": {**RANDOM, "seed": 2}},
                                 {"voc07_svm": voc07_svm(["res4", "res5"])}))
    return root, config, data


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_a_dry_run_writes_nothing_and_says_what_would_run(setting, capsys):
    root, config, data = setting
    out = root / "out"
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu",
                 "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    assert "4 units: 4 to run, 0 already done" in printed
    # 40 generated images: the trainval and test features each model's SVM units read
    images = sum(1 for _ in (data / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))
    assert f"- voc07_svm: 4 units (4 to run); reads the features of {images:,} images per model" in printed
    assert "2 unit(s) not timed" not in printed and "4 unit(s) not timed: no finished unit" in printed
    assert re.search(r"disk: [0-9.,]+ MiB of features under .*feature-cache", printed)


def test_after_a_partial_run_the_rest_is_timed_from_the_finished_units(setting, capsys):
    root, config, data = setting
    out = root / "partial"
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu",
                 "--models", "random"]) == 0
    before = _tree(out)
    capsys.readouterr()
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu",
                 "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert _tree(out) == before  # nothing written, nothing removed
    assert "4 units: 2 to run, 2 already done" in printed
    assert re.search(r"about \d+ s for 2 unit\(s\), at the median time of this run's finished units of voc07_svm",
                     printed)


def test_a_dry_run_refuses_what_a_run_refuses(setting, capsys):
    root, config, data = setting
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(root / "x"), "--device", "cpu",
                 "--data-root", str(root / "nowhere"), "--dry-run"]) == 2
    assert "nowhere" in capsys.readouterr().err and not (root / "x").exists()
