"""benchmark.datasets.classification: both layouts, own split names, carved validation, errors."""

import os

import numpy as np
import pytest

from benchmark.datasets.classification import carve_validation, load_classification
from benchmark.datasets.images import open_rgb
from benchmark.datasets.synth_classification import synth_classification
from benchmark.errors import DatasetError


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    synth_classification(root, name="tree", num_classes=3, per_split={"train": 10, "test": 2}, min_side=32, max_side=40)
    synth_classification(root, name="lists", num_classes=3, per_split={"trainval": 6, "val": 2, "eval": 2},
                         layout="csv", min_side=32, max_side=40)
    return root


def test_imagefolder_with_carved_stratified_validation(folders):
    data = load_classification(folders, "tree", val_fraction=0.2, val_seed=3)
    assert data.layout == "imagefolder" and data.class_names == ["class_00", "class_01", "class_02"]
    assert np.bincount(data.val.labels).tolist() == [2, 2, 2]  # 20 % of 10 per class
    assert np.bincount(data.train.labels).tolist() == [8, 8, 8]
    assert not set(data.train.indices) & set(data.val.indices)
    assert data.val.split is data.train.split  # one on-disk split: features extracted once
    assert len(data.test) == 6 and "seed 3" in data.val.description
    again = load_classification(folders, "tree", val_fraction=0.2, val_seed=3)
    np.testing.assert_array_equal(again.val.indices, data.val.indices)  # the recorded seed reproduces it
    other = load_classification(folders, "tree", val_fraction=0.2, val_seed=4)
    assert not np.array_equal(other.val.indices, data.val.indices)


def test_csv_lists_with_own_split_names(folders):
    data = load_classification(folders, "lists", train_split="trainval", val_split="val", test_split="eval")
    assert data.layout == "csv" and not data.carved
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 6)
    assert data.train.split.image_paths[0].is_file()


def test_carve_keeps_every_class_and_a_singleton_class_in_train():
    labels = np.array([0] * 5 + [1] * 2 + [2])
    train, val = carve_validation(labels, 0.1, 0)
    assert sorted(np.bincount(labels[val], minlength=3)) == [0, 1, 1]  # at least one where n >= 2
    assert 7 in train  # the single image of class 2 stays in train
    assert len(train) + len(val) == 8


def test_errors_name_the_problem(folders, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_classification(folders, "nothing")
    with pytest.raises(DatasetError, match="test split .*nope"):
        load_classification(folders, "tree", test_split="nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.csv").write_text("a.jpg,cat\nb.jpg,dog\n")
    (bad / "test.csv").write_text("a.jpg,cow\n")
    for name in ("a.jpg", "b.jpg"):
        (bad / name).write_bytes(b"x")
    with pytest.raises(DatasetError, match=r"test.csv: label 'cow'.*not a class of the training list"):
        load_classification(tmp_path, "bad")
    (bad / "test.csv").write_text("a.jpg,cat\nmissing.jpg,dog\n")
    with pytest.raises(DatasetError, match="missing.jpg"):
        load_classification(tmp_path, "bad")
    (bad / "test.csv").write_text("a.jpg\n")
    with pytest.raises(DatasetError, match=r"test.csv:1: expected 'path,label'"):
        load_classification(tmp_path, "bad")
    tree = tmp_path / "tree2"
    (tree / "train" / "cat").mkdir(parents=True)
    (tree / "test" / "dog").mkdir(parents=True)
    (tree / "train" / "dog").mkdir()
    (tree / "train" / "cat" / "1.jpg").write_bytes(b"x")
    (tree / "train" / "dog" / "1.jpg").write_bytes(b"x")
    (tree / "test" / "dog" / "1.jpg").write_bytes(b"x")
    (tree / "test" / "emu").mkdir()
    with pytest.raises(DatasetError, match=r"class folder\(s\) \['emu'\] that the training split lacks"):
        load_classification(tmp_path, "tree2")
    (tree / "test" / "emu").rmdir()
    with pytest.raises(DatasetError, match="no validation images can be carved out"):
        load_classification(tmp_path, "tree2")
    (tree / "train" / "cat" / "2.jpg").write_bytes(b"x")
    data = load_classification(tmp_path, "tree2", val_fraction=0.5)
    with pytest.raises(DatasetError, match=r"1.jpg is corrupt or not an image"):
        open_rgb(data.test.split.image_paths[0])  # decoding happens at extraction: named there


def test_places205_official_lists_as_a_classification_dataset(tmp_path):
    from benchmark.datasets.synth_places import synth_places205

    synth_places205(tmp_path, num_classes=3, train_per_class=4, val_per_class=2, min_side=32, max_side=40)
    data = load_classification(tmp_path, "Places205", layout="places205", test_split="val",
                               val_split="holdout", val_fraction=0.25)
    assert (len(data.train), len(data.val), len(data.test)) == (9, 3, 6)  # val carved: Places205's val is test
    assert data.class_names == ["abbey", "airport_terminal", "alley"]
    assert data.train.split.fingerprint() != data.test.split.fingerprint()


def test_cli_writes_a_loadable_dataset(tmp_path, capsys):
    from benchmark.cli import main

    assert main(["data", "synth", "classification", "--out", str(tmp_path), "--classes", "3", "--per-class", "3",
                 "--layout", "csv", "--name", "mini", "--val-per-class", "1"]) == 0
    assert "3 classes x (3 train + 1 test + 1 val)" in capsys.readouterr().out
    data = load_classification(tmp_path, "mini")
    assert (data.layout, len(data.train), len(data.val), len(data.test)) == ("csv", 9, 3, 3)
    first = open_rgb(data.train.split.image_paths[0])
    assert 64 <= min(first.size) and max(first.size) <= 96


def _csv_dataset(base, name="ds"):
    """A CSV-layout dataset of two classes, two images each, under ``base/name``; returns its folder."""
    root = base / name
    (root / "img").mkdir(parents=True)
    for image in ("a1", "a2", "b1", "b2"):
        (root / "img" / f"{image}.jpg").write_bytes(b"x")
    (root / "train.csv").write_text("path,label\nimg/a1.jpg,a\nimg/a2.jpg,a\nimg/b1.jpg,b\nimg/b2.jpg,b\n")
    (root / "test.csv").write_text("img/a1.jpg,a\nimg/b1.jpg,b\n")
    return root


@pytest.mark.parametrize("listed", ["../outside.jpg", "img/../../outside.jpg", "ABSOLUTE"])
def test_a_list_path_leaving_the_dataset_is_refused_with_file_line_and_path(tmp_path, listed):
    root = _csv_dataset(tmp_path)
    (tmp_path / "outside.jpg").write_bytes(b"secret")
    listed = str(tmp_path / "outside.jpg") if listed == "ABSOLUTE" else listed
    (root / "test.csv").write_text(f"img/a1.jpg,a\n{listed},b\n")
    for follow in (False, True):  # a path that leaves by its name is refused even with follow_symlinks
        with pytest.raises(DatasetError) as caught:
            load_classification(tmp_path, "ds", follow_symlinks=follow)
        assert f"{root / 'test.csv'}:2: path {listed!r} leaves the dataset folder" in str(caught.value)


def test_a_symlink_pointing_outside_is_refused_unless_followed_and_recorded(tmp_path):
    root = _csv_dataset(tmp_path)
    (tmp_path / "elsewhere.jpg").write_bytes(b"elsewhere")
    (root / "img" / "b2.jpg").unlink()
    (root / "img" / "b2.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    with pytest.raises(DatasetError) as caught:
        load_classification(tmp_path, "ds")
    message = str(caught.value)
    assert f"{root / 'train.csv'}:5: path 'img/b2.jpg' is a symlink" in message
    assert "follow_symlinks: true" in message and str(tmp_path / "elsewhere.jpg") in message
    data = load_classification(tmp_path, "ds", follow_symlinks=True)
    assert data.provenance()["follow_symlinks"] is True
    (root / "img" / "b2.jpg").unlink()
    (root / "img" / "b2.jpg").symlink_to(root / "img" / "b1.jpg")  # a symlink inside the dataset is fine
    assert "follow_symlinks" not in load_classification(tmp_path, "ds").provenance()


def test_an_imagefolder_symlink_or_linked_class_folder_pointing_outside_is_refused(tmp_path):
    tree = tmp_path / "tree"
    for split, cls in (("train", "cat"), ("train", "dog"), ("test", "cat")):
        (tree / split / cls).mkdir(parents=True)
        (tree / split / cls / "1.jpg").write_bytes(b"x")
        (tree / split / cls / "2.jpg").write_bytes(b"x")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "key.jpg").write_bytes(b"x")
    (tree / "test" / "dog").symlink_to(tmp_path / "private")
    with pytest.raises(DatasetError, match=r"test/dog: path 'test/dog/key.jpg' is a symlink .*pointing outside"):
        load_classification(tmp_path, "tree")
    assert len(load_classification(tmp_path, "tree", follow_symlinks=True).test) == 3


@pytest.mark.parametrize("content, expected", [
    (b"\xff\xfe\x00b\x00i\x00n", "is not UTF-8 text"),
    (b"img/a1.jpg,a\x00\nimg/b1.jpg,b\n", "holds NUL bytes"),
])
def test_a_binary_or_non_utf8_list_is_refused_naming_it(tmp_path, content, expected):
    root = _csv_dataset(tmp_path)
    (root / "test.csv").write_bytes(content)
    with pytest.raises(DatasetError, match=f"list file {root / 'test.csv'} {expected}"):
        load_classification(tmp_path, "ds")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_list_is_refused_naming_it(tmp_path):
    root = _csv_dataset(tmp_path)
    (root / "test.csv").chmod(0)
    with pytest.raises(DatasetError, match=f"list file {root / 'test.csv'} cannot be read"):
        load_classification(tmp_path, "ds")
