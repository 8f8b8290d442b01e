"""ImageNet in its download layouts (benchmark.datasets.imagenet) read from generated copies: Kaggle's
ILSVRC tree with LOC_val_solution.csv and the class-folder layout; labels against the solution file
read here with the csv module; the errors a partial copy gives; `linear` on it end to end."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.datasets.classification import load_classification
from benchmark.datasets.synth_imagenet import synth_imagenet
from benchmark.errors import DatasetError
from benchmark.results import ResultStore
from tests.suites import RANDOM, suite_yaml

VAL = {"test_split": "val", "val_split": "holdout"}


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    synth_imagenet(root, num_classes=3, train_per_class=6, val_per_class=2)
    return root


@pytest.fixture
def copy(kaggle, tmp_path) -> Path:
    shutil.copytree(kaggle / "imagenet", tmp_path / "imagenet")
    return tmp_path


def test_kaggle_layout_labels_follow_the_solution_file(kaggle):
    data = load_classification(kaggle, "imagenet", **VAL)
    assert data.layout == "imagenet" and data.class_names == ["n01440764", "n01443537", "n01484850"]
    assert (len(data.train) + len(data.val), len(data.test)) == (18, 6)
    with open(kaggle / "imagenet" / "LOC_val_solution.csv", newline="") as handle:
        expected = {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(handle)}
    test = data.test.split
    got = {p.stem: test.class_names[label] for p, label in zip(test.image_paths, test.labels)}
    assert got == expected
    assert all(p.parent.name == "val" and p.is_file() for p in test.image_paths)
    train = data.train.split
    assert all(p.parent.name == train.class_names[label] for p, label in zip(train.image_paths, train.labels))


def test_class_folder_layout(tmp_path):
    synth_imagenet(tmp_path, num_classes=3, train_per_class=4, val_per_class=2, layout="folders")
    data = load_classification(tmp_path, "imagenet", layout="imagenet", **VAL)
    assert (data.num_classes, len(data.train) + len(data.val), len(data.test)) == (3, 12, 6)
    test = data.test.split
    assert all(p.parent.name == test.class_names[label] for p, label in zip(test.image_paths, test.labels))


def test_validation_and_test_may_not_be_the_same_split(kaggle):
    with pytest.raises(DatasetError, match="both 'val'.*holdout"):
        load_classification(kaggle, "imagenet", test_split="val")
    with pytest.raises(DatasetError, match="test_split: val"):
        load_classification(kaggle, "imagenet", val_split="holdout")


def test_missing_solution_file_is_named(copy):
    (copy / "imagenet" / "LOC_val_solution.csv").unlink()
    with pytest.raises(DatasetError, match="LOC_val_solution.csv does not exist"):
        load_classification(copy, "imagenet", layout="imagenet", **VAL)


def test_listed_image_missing_and_image_not_listed(copy):
    val = copy / "imagenet" / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    (val / "ILSVRC2012_val_00000003.JPEG").unlink()
    with pytest.raises(DatasetError, match="missing: .*ILSVRC2012_val_00000003.JPEG"):
        load_classification(copy, "imagenet", **VAL)
    shutil.copy(val / "ILSVRC2012_val_00000001.JPEG", val / "ILSVRC2012_val_00000099.JPEG")
    with pytest.raises(DatasetError, match="ILSVRC2012_val_00000099.JPEG"):
        load_classification(copy, "imagenet", **VAL)


def test_label_outside_the_training_classes_names_the_line(copy):
    solution = copy / "imagenet" / "LOC_val_solution.csv"
    lines = solution.read_text().splitlines()
    lines[2] = lines[2].split(",")[0] + ",n09999999 1 2 3 4"
    solution.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"LOC_val_solution.csv:3: .*'n09999999'"):
        load_classification(copy, "imagenet", **VAL)


def test_synth_cli_layouts(tmp_path, capsys):
    assert main(["data", "synth", "imagenet", "--out", str(tmp_path), "--classes", "2", "--per-class", "3"]) == 0
    assert (tmp_path / "imagenet" / "LOC_synset_mapping.txt").read_text().startswith("n01440764 tench")
    assert main(["data", "synth", "imagenet", "--out", str(tmp_path / "f"), "--layout", "folders",
                 "--classes", "2", "--per-class", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "f" / "imagenet" / "val").iterdir()) == ["n01440764", "n01443537"]
    assert main(["data", "synth", "imagenet", "--out", str(tmp_path), "--layout", "csv"]) == 2
    assert "kaggle, folders" in capsys.readouterr().err


def test_linear_on_imagenet_end_to_end(kaggle, tmp_path):
    task = {"task": "linear", "dataset": "imagenet", **VAL, "recipe": "simclr", "layers": ["pool5"],
            "image_size": 32, "epochs": 1, "batch_size": 8}
    config = tmp_path / "bench.yaml"
    config.write_text(suite_yaml(kaggle, {"random": RANDOM}, {"linear_imagenet": task}))
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(tmp_path / "runs"),
                 "--device", "cpu"]) == 0
    rows = ResultStore(tmp_path / "runs" / "tiny").load()
    top1 = rows[(rows["metric"] == "top1")].iloc[0]
    assert top1["layout"] == "imagenet" and top1["recipe"] == "simclr" and int(top1["n_test"]) == 6
    assert 0.0 <= float(top1["value"]) <= 100.0 and pd.notna(top1["trained_on"])
