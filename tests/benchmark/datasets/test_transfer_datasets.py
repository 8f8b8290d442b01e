"""The twelve transfer datasets read in their official layouts (benchmark.datasets.transfer) from
tiny copies written by ``ssl-bench data synth transfer``: classes, split sizes, labels of known
images, the splits the rows record; a missing file of each is a DatasetError naming it before
anything is written; list paths stay inside the dataset folder; the protocol's metrics against
hand-worked cases and scikit-learn."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from benchmark.cli import main
from benchmark.datasets.classification import LAYOUTS, load_classification
from benchmark.datasets.images import DecodedImage, open_rgb
from benchmark.datasets.synth_transfer import synth_transfer
from benchmark.datasets.transfer import METRICS, OFFICIAL_FOLDERS, TRANSFER_LAYOUTS, InMemorySplit, metric_function
from benchmark.errors import DatasetError
from benchmark.metrics import (eleven_point_ap, eleven_point_map, mean_per_class_accuracy, precision_recall,
                               top1_accuracy)

# (classes, n_train, n_val, n_test, validation: the dataset's own or carved at 20 %) of each tiny copy
EXPECTED = {
    "food101": (3, 9, 3, 6, "carved"),
    "cifar10": (3, 12, 3, 6, "carved"),
    "cifar100": (3, 12, 3, 6, "carved"),
    "birdsnap": (3, 11, 3, 6, "carved"),  # 15 listed train images, one never downloaded
    "sun397": (3, 9, 3, 6, "carved"),  # partition 1 leaves one image per class out
    "stanford_cars": (3, 9, 3, 6, "carved"),
    "fgvc_aircraft": (3, 12, 6, 6, "own"),
    "voc2007": (20, 6, 6, 12, "own"),
    "dtd": (3, 12, 6, 6, "own"),
    "oxford_pets": (3, 15, 3, 6, "carved"),
    "caltech101": (4, 96, 24, 10, "carved"),  # 30 per class drawn for train (6 of them to val), the rest test
    "flowers102": (3, 12, 6, 6, "own"),
}
# one file of each dataset's official layout, removed to check the error names it
REQUIRED_FILE = {
    "food101": "food-101/meta/test.json",
    "cifar10": "cifar-10-batches-py/data_batch_3",
    "cifar100": "cifar-100-python/meta",
    "birdsnap": "test_images.txt",
    "sun397": "Partitions/Testing_01.txt",
    "stanford_cars": "stanford_cars/devkit/cars_meta.mat",
    "fgvc_aircraft": "fgvc-aircraft-2013b/data/images_variant_val.txt",
    "voc2007": "VOCdevkit/VOC2007/ImageSets/Main/val.txt",
    "dtd": "dtd/labels/val1.txt",
    "oxford_pets": "oxford-iiit-pet/annotations/test.txt",
    "caltech101": "caltech101/101_ObjectCategories",
    "flowers102": "flowers-102/setid.mat",
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("transfer")
    for name in TRANSFER_LAYOUTS:
        synth_transfer(root, name)
    return root


@pytest.fixture
def copy_of(data_root, tmp_path):
    """A private copy of one generated dataset, to break."""
    def make(name: str) -> Path:
        shutil.copytree(data_root / name, tmp_path / name)
        return tmp_path
    return make


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def load(root: Path, name: str, layout: str = "auto", **kwargs):
    return load_classification(root, name, layout=layout, val_fraction=0.2, multi_label=True, **kwargs)


def test_every_transfer_layout_is_a_classification_layout():
    assert set(TRANSFER_LAYOUTS) <= set(LAYOUTS)
    assert set(METRICS) == set(TRANSFER_LAYOUTS) and len(TRANSFER_LAYOUTS) == 12


@pytest.mark.parametrize("name", TRANSFER_LAYOUTS)
def test_reader_splits_and_provenance(data_root, name):
    n_classes, n_train, n_val, n_test, validation = EXPECTED[name]
    data = load(data_root, name, layout=name)
    auto = load(data_root, name)  # the official files are detected without naming the layout
    assert auto.layout == data.layout == name
    assert (data.num_classes, len(data.train), len(data.val), len(data.test)) == (n_classes, n_train, n_val, n_test)
    row = data.provenance()
    assert row["protocol_metric"] == METRICS[name] and row["official_splits"]
    assert row["layout"] == name and row["n_classes"] == n_classes
    if validation == "own":
        assert data.val.split is not data.train.split and data.carved == {}
        assert "the dataset's own" in row["val_split"]
    else:
        assert data.val.split is data.train.split and data.carved == {"fraction": 0.2, "seed": 0}
        assert row["val_split"] == "val carved from 20 % of " + data.train.split.name + " per class, seed 0"
        assert not set(data.train.indices) & set(data.val.indices)
    for part in (data.train, data.val, data.test):
        if not isinstance(part.split, InMemorySplit):
            assert all(p.is_file() and p.resolve().is_relative_to(data.root.resolve()) for p in part.split.image_paths)
    # the same data gives the same cache key
    assert [s.fingerprint() for s in data.disk_splits().values()] == \
           [s.fingerprint() for s in auto.disk_splits().values()]


# datasets whose image paths name the class folder: every label must agree with its path
CLASS_IN_PATH = {"food101": -2, "sun397": -2, "birdsnap": -2, "dtd": -2, "caltech101": -2}


@pytest.mark.parametrize("name", sorted(CLASS_IN_PATH))
def test_labels_agree_with_class_folders(data_root, name):
    data = load(data_root, name, layout=name)
    for part in (data.train, data.val, data.test):
        for index in part.indices:
            path = part.split.image_paths[index]
            folder = path.parts[CLASS_IN_PATH[name]]
            name_of_label = data.class_names[part.split.labels[index]]
            if name == "sun397":  # "/b/bakery/shop" is the class "bakery/shop"
                assert path.as_posix().endswith(f"/{name_of_label}/{path.name}")
            elif name == "birdsnap":  # the folder is the common name with "_" for " "
                assert folder == name_of_label.replace(" ", "_")
            else:
                assert folder == name_of_label


def test_labels_of_known_images(data_root):
    cars = load(data_root, "stanford_cars")
    by_name = {p.name: cars.class_names[y] for p, y in zip(cars.train.split.image_paths, cars.train.split.labels)}
    assert by_name["00001.jpg"] == "AM General Hummer SUV 2000" and by_name["00005.jpg"] == "Acura RL Sedan 2012"
    aircraft = load(data_root, "fgvc_aircraft")
    first = (data_root / "fgvc_aircraft/fgvc-aircraft-2013b/data/images_variant_val.txt").read_text().split("\n")[0]
    image_id, variant = first.split(" ", 1)
    assert aircraft.val.split.image_paths[0].name == f"{image_id}.jpg"
    assert aircraft.class_names[aircraft.val.split.labels[0]] == variant == "707-320"
    flowers = load(data_root, "flowers102")
    labels = dict(zip((p.name for p in flowers.test.split.image_paths), flowers.test.split.labels.tolist()))
    assert flowers.class_names == ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    assert labels["image_00019.jpg"] == 0 and labels["image_00024.jpg"] == 2  # tstid ids 19..24, 2 per class
    pets = load(data_root, "oxford_pets")
    assert pets.class_names == ["Abyssinian", "American Bulldog", "Bengal"]
    pet = {p.name: y for p, y in zip(pets.test.split.image_paths, pets.test.split.labels.tolist())}
    assert pet["american_bulldog_7.jpg"] == 1
    voc = load(data_root, "voc2007")
    assert voc.train.split.labels.shape == (6, 20) and voc.provenance()["multi_label"] is True
    assert set(np.unique(voc.test.split.labels)) <= {-1, 0, 1}


def test_single_label_callers_get_a_clear_error_for_voc2007(data_root):
    with pytest.raises(DatasetError, match=r"multi-label .*voc07_svm"):
        load_classification(data_root, "voc2007", layout="voc2007")


def test_no_layout_recognised_names_the_transfer_layouts(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DatasetError, match=r"nor the official files of one transfer dataset .*food101, cifar10"):
        load_classification(tmp_path, "x")


def test_cifar_images_are_decoded_from_the_batches(data_root):
    for name, key in (("cifar10", "labels"), ("cifar100", "fine_labels")):
        data = load(data_root, name)
        folder = data_root / name / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
        with open(folder / ("test_batch" if name == "cifar10" else "test"), "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        test = data.test.split
        assert isinstance(test, InMemorySplit) and test.labels.tolist() == batch[key]
        first = batch["data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
        item = test.image_paths[0]
        assert isinstance(item, DecodedImage) and np.array_equal(np.asarray(open_rgb(item)), first)
        before = test.fingerprint()
        item.pixels = item.pixels.copy()
        item.pixels[0, 0, 0] ^= 1
        assert test.fingerprint() != before
    assert load(data_root, "cifar10").class_names == ["airplane", "automobile", "bird"]


def test_caltech101_draws_30_per_class_with_the_recorded_seed(data_root):
    first = load(data_root, "caltech101", val_seed=0)
    again = load(data_root, "caltech101", val_seed=0)
    other = load(data_root, "caltech101", val_seed=1)
    train = first.train.split
    assert np.bincount(train.labels).tolist() == [30] * 4  # the background class included, last
    assert first.class_names[-1] == "BACKGROUND_Google"
    assert np.bincount(first.test.split.labels).tolist() == [2, 3, 2, 3]  # the rest
    assert not set(train.image_paths) & set(first.test.split.image_paths)
    assert train.image_paths == again.train.split.image_paths
    assert train.image_paths != other.train.split.image_paths
    row = first.provenance()
    assert row["train_draw_seed"] == 0 and row["background_class"] is True
    assert "30 training images per class drawn with seed 0" in row["official_splits"]


def test_sun397_uses_partition_1_only(data_root):
    data = load(data_root, "sun397")
    listed = (data_root / "sun397/Partitions/Training_01.txt").read_text().split()
    assert sorted("/" + p.relative_to(data_root / "sun397/SUN397").as_posix() for p in data.train.split.image_paths) \
        == sorted(listed)
    assert "bakery/shop" in data.class_names


def test_birdsnap_counts_images_never_downloaded(data_root):
    row = load(data_root, "birdsnap").provenance()
    assert (row["n_listed_train"], row["n_listed_test"], row["n_missing_images"]) == (15, 6, 1)


def test_dtd_in_torchvision_nesting_reads_the_same(data_root, tmp_path):
    nested = tmp_path / "dtd_tv" / "dtd"
    nested.mkdir(parents=True)
    shutil.copytree(data_root / "dtd" / "dtd", nested / "dtd")  # torchvision's own download: dtd/dtd/
    archive, torchvision = load(data_root, "dtd"), load(tmp_path, "dtd_tv", layout="dtd")
    for part in ("train", "val", "test"):
        a, b = getattr(archive, part).split, getattr(torchvision, part).split
        assert [p.name for p in a.image_paths] == [p.name for p in b.image_paths]
        assert a.labels.tolist() == b.labels.tolist() and a.class_names == b.class_names


@pytest.mark.parametrize("name", sorted(set(OFFICIAL_FOLDERS) - {"sun397"}))
def test_dataset_folder_may_be_the_official_folder_itself(data_root, name):
    """``data_root: /datasets`` with ``dataset: food-101``: the archive's own top folder."""
    base = OFFICIAL_FOLDERS[name][0]
    data = load(data_root / name, base, layout=name)
    assert (data.num_classes, len(data.test)) == (EXPECTED[name][0], EXPECTED[name][3])


def test_sun397_folder_itself_with_its_partitions_inside(copy_of):
    root = copy_of("sun397")
    shutil.move(root / "sun397/Partitions", root / "sun397/SUN397/Partitions")
    assert len(load(root / "sun397", "SUN397", layout="sun397").test) == 6


def test_decoded_images_go_through_the_extraction_dataset(data_root):
    from benchmark.datasets.images import ImageFileDataset, svm_transform

    test = load(data_root, "cifar10").test.split
    image, index = ImageFileDataset(test.image_paths, svm_transform(32)[0])[3]
    assert tuple(image.shape) == (3, 32, 32) and index == 3


def test_official_files_in_a_folder_of_another_name_say_how_to_fix(copy_of):
    root = copy_of("food101")
    (root / "food101" / "food-101").rename(root / "myfood")
    with pytest.raises(DatasetError, match=r"rename .*myfood to food-101"):
        load(root, "myfood", layout="food101")


@pytest.mark.parametrize("name", TRANSFER_LAYOUTS)
def test_missing_file_is_named_before_anything_is_written(copy_of, name):
    root = copy_of(name)
    missing = root / name / REQUIRED_FILE[name]
    shutil.rmtree(missing) if missing.is_dir() else missing.unlink()
    before = tree(root)
    with pytest.raises(DatasetError) as error:
        load(root, name, layout=name)
    assert str(missing) in str(error.value) or missing.name in str(error.value)
    assert "download=True" not in str(error.value)  # torchvision's advice never reaches the user
    assert tree(root) == before  # torchvision's Caltech101 would have created its folder


@pytest.mark.parametrize("name, image", [("food101", "food-101/images/baklava"), ("flowers102", "flowers-102/jpg"),
                                         ("stanford_cars", "stanford_cars/cars_test"), ("dtd", "dtd/images/braided")])
def test_missing_image_is_named(copy_of, name, image):
    root = copy_of(name)
    victim = max((root / name / image).iterdir())
    victim.unlink()
    with pytest.raises(DatasetError, match=victim.name):
        load(root, name, layout=name)


def test_torchvision_errors_are_rephrased(copy_of):
    root = copy_of("food101")
    images = root / "food101/food-101/images"
    shutil.rmtree(images)
    images.write_text("not a folder")  # present, so torchvision's own check is the one that fails
    with pytest.raises(DatasetError,
                       match=r"torchvision could not read the food101 dataset .*expected DATASET/food-101"):
        load(root, "food101")
    root = copy_of("cifar10")
    (root / "cifar10/cifar-10-batches-py/data_batch_2").write_bytes(b"truncated")
    with pytest.raises(DatasetError, match=r"cifar10 dataset .* malformed .*re-extract"):
        load(root, "cifar10")


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"looked for .*cifar-10-batches-py"):
        load_classification(tmp_path, ".", layout="cifar10")


def test_list_paths_leaving_the_dataset_are_refused(copy_of):
    root = copy_of("food101")
    train_json = root / "food101/food-101/meta/train.json"
    lists = json.loads(train_json.read_text())
    lists["apple_pie"].append("../../../outside")
    train_json.write_text(json.dumps(lists))
    with pytest.raises(DatasetError, match="leaves the dataset folder"):
        load(root, "food101")


def test_birdsnap_and_sun397_paths_leaving_the_dataset_are_refused(copy_of):
    root = copy_of("birdsnap")
    images = root / "birdsnap/images.txt"
    lines = images.read_text().splitlines()
    fields = lines[1].split("\t")
    fields[2] = "../../../x.jpg"
    images.write_text("\n".join([lines[0], "\t".join(fields)] + lines[2:]) + "\n")
    with pytest.raises(DatasetError, match=r"images.txt:2: path .* leaves the dataset folder"):
        load(root, "birdsnap")
    root = copy_of("sun397")
    partition = root / "sun397/Partitions/Testing_01.txt"
    partition.write_text("/../../../x.jpg\n" + partition.read_text())
    with pytest.raises(DatasetError, match=r"Testing_01.txt:1: path .* leaves the dataset folder"):
        load(root, "sun397")


def test_synth_transfer_cli(tmp_path, capsys):
    assert main(["data", "synth", "transfer", "--dataset", "dtd", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "dtd/dtd/labels/train1.txt").is_file()
    assert main(["data", "synth", "transfer", "--out", str(tmp_path)]) != 0
    assert "--dataset NAME" in capsys.readouterr().err


# --per-class 10: 10 train images per class, 5 val and 5 test (per-class // 2); CIFAR's train is
# five batches of ceil(10 / 5) per class; VOC2007 gets 6 images per --per-class
SIZED = {"dtd": (30, 15, 15), "fgvc_aircraft": (30, 15, 15), "flowers102": (30, 15, 15),
         "cifar10": (30, None, 15), "cifar100": (30, None, 15)}


@pytest.mark.parametrize("name", [*SIZED, "voc2007"])
def test_synth_transfer_per_class_sets_the_split_sizes(tmp_path, name):
    assert main(["data", "synth", "transfer", "--dataset", name, "--out", str(tmp_path), "--per-class", "10"]) == 0
    data = load(tmp_path, name, layout=name)
    if name == "voc2007":
        assert len(data.train) + len(data.val) + len(data.test) == 60
        return
    n_train, n_val, n_test = SIZED[name]
    if n_val is None:  # no validation split of its own: 20 % of train carved out
        assert (len(data.train) + len(data.val), len(data.val), len(data.test)) == (n_train, n_train // 5, n_test)
    else:
        assert (len(data.train), len(data.val), len(data.test)) == (n_train, n_val, n_test)


def test_synth_transfer_refuses_a_size_below_two(tmp_path):
    with pytest.raises(DatasetError, match="--per-class"):
        synth_transfer(tmp_path, "dtd", per_class=1)


# --- metrics


def test_mean_per_class_accuracy_hand_cases():
    assert mean_per_class_accuracy([0, 0, 0, 1], [0, 0, 0, 0]) == pytest.approx(0.5)  # top-1 says 0.75
    assert top1_accuracy([0, 0, 0, 1], [0, 0, 0, 0]) == pytest.approx(0.75)
    assert mean_per_class_accuracy([2, 2, 5], [2, 5, 5]) == pytest.approx((0.5 + 1.0) / 2)
    assert mean_per_class_accuracy(["a", "b"], ["b", "b"]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mean_per_class_accuracy([0, 1], [0])


def test_mean_per_class_accuracy_against_sklearn():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n_classes = int(rng.integers(2, 12))
        y_true = rng.integers(0, n_classes, int(rng.integers(5, 300)))
        # predictions may name a class that never occurs in y_true (sklearn warns, then leaves it out)
        y_pred = np.where(rng.random(len(y_true)) < 0.6, y_true, rng.integers(0, n_classes + 2, len(y_true)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = balanced_accuracy_score(y_true, y_pred)
        assert mean_per_class_accuracy(y_true, y_pred) == pytest.approx(expected, abs=1e-12), trial


def test_eleven_point_map_hand_cases():
    # positives ranked 1st and 3rd of 4: precision 1 up to recall 0.5, then 2/3
    labels = np.array([[1], [0], [1], [0]])
    scores = np.array([[0.9], [0.8], [0.7], [0.1]])
    assert eleven_point_map(labels, scores) == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)
    # -1 (only difficult instances) leaves the image out of that class's ranking
    with_difficult = np.array([[1, 1], [-1, 0], [0, 1], [0, 0]])
    two = np.array([[0.9, 0.2], [0.95, 0.9], [0.7, 0.8], [0.1, 0.1]])
    first = eleven_point_ap(*precision_recall([1, 0, 0], [0.9, 0.7, 0.1]))
    second = eleven_point_ap(*precision_recall([1, 0, 1, 0], [0.2, 0.9, 0.8, 0.1]))
    assert first == 1.0 and eleven_point_map(with_difficult, two) == pytest.approx((first + second) / 2)
    # a class without positives has no AP and stays out of the mean
    assert eleven_point_map(np.array([[1, 0], [0, 0]]), np.array([[1.0, 0.5], [0.0, 0.2]])) == 1.0


def test_metric_of_each_dataset():
    assert {name for name, metric in METRICS.items() if metric == "mean_per_class_accuracy"} == \
        {"fgvc_aircraft", "oxford_pets", "caltech101", "flowers102"}
    assert METRICS["voc2007"] == "voc07_11point_map"
    assert metric_function("flowers102") == ("mean_per_class_accuracy", mean_per_class_accuracy)
    assert metric_function("food101")[1]([1, 2], [1, 1]) == 0.5
