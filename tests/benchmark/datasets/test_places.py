"""Tests of the Places205 reader and the synthetic Places205 generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.datasets.places import PlacesSplit, load_places205
from benchmark.datasets.synth_places import scene_names, synth_places205
from benchmark.errors import DatasetError

TARBALL_IMAGES = "data/vision/torralba/deeplearning/images256"

TRAIN = {
    "a/abbey/00000001.jpg": 0,
    "a/abbey/00000002.jpg": 0,
    "s/subway_station/platform/00000001.jpg": 2,
    "b/bar/00000001.jpg": 1,
}
VAL = {
    "a/abbey/00000003.jpg": 0,
    "loose.jpg": 4,  # no folder: class name unknown; val's label raises num_classes to 5
}


def _write_places(
    root: Path,
    train: dict[str, int] = TRAIN,
    val: dict[str, int] = VAL,
    images: str = "images",
    lists_in_root: bool = False,
) -> Path:
    """Hand-made Places205 layout under `root`, with 8x8 dummy JPEGs."""
    for relative in {**train, **val}:
        path = root / images / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(path)
    list_dir = root if lists_in_root else root / "trainvalsplit_places205"
    list_dir.mkdir(parents=True, exist_ok=True)
    for split, entries in (("train", train), ("val", val)):
        lines = "".join(f"{p} {label}\n" for p, label in entries.items()) + "\n"  # blank line ok
        (list_dir / f"{split}_places205.csv").write_text(lines)
    return root


@pytest.fixture
def hand_places(tmp_path: Path) -> Path:
    return _write_places(tmp_path / "Places205")


def _list_file(root: Path, split: str = "train") -> Path:
    return root / "trainvalsplit_places205" / f"{split}_places205.csv"


def test_hand_written_train(hand_places: Path) -> None:
    train = load_places205(hand_places, "train")
    assert isinstance(train, PlacesSplit) and train.split == "train" and train.root == hand_places
    assert train.labels.dtype == np.int64 and train.labels.shape == (4,)
    np.testing.assert_array_equal(train.labels, [0, 0, 2, 1])
    assert train.image_paths == [hand_places / "images" / p for p in TRAIN]
    assert train.num_classes == 5  # max label over BOTH lists + 1
    assert train.class_names == ["abbey", "bar", "subway_station_platform", "class3", "class4"]
    np.testing.assert_array_equal(train.class_counts(), [2, 1, 1, 0, 0])
    assert train.class_counts().dtype == np.int64


def test_hand_written_val_agrees_with_train(hand_places: Path) -> None:
    val = load_places205(hand_places, "val")
    train = load_places205(hand_places, "train")
    np.testing.assert_array_equal(val.labels, [0, 4])
    assert val.num_classes == train.num_classes == 5
    assert val.class_names == train.class_names
    np.testing.assert_array_equal(val.class_counts(), [1, 0, 0, 0, 1])


def test_class_names_come_from_either_list(tmp_path: Path) -> None:
    val = {"c/canyon/x.jpg": 0, "b/bar/y.jpg": 1}
    root = _write_places(tmp_path, train={"loose.jpg": 0}, val=val)
    assert load_places205(root, "train").class_names == ["canyon", "bar"]


@pytest.mark.parametrize("images", ["images", TARBALL_IMAGES])
@pytest.mark.parametrize("lists_in_root", [False, True])
def test_accepted_layouts(tmp_path: Path, images: str, lists_in_root: bool) -> None:
    root = _write_places(tmp_path, images=images, lists_in_root=lists_in_root)
    train = load_places205(root, "train")
    assert train.image_paths[0] == root / images / "a/abbey/00000001.jpg"
    assert train.num_classes == 5 and len(train.image_paths) == 4


def test_fingerprint_tracks_paths_and_file_sizes(hand_places: Path) -> None:
    before = load_places205(hand_places, "train").fingerprint()
    assert before == load_places205(hand_places, "train").fingerprint()
    assert before != load_places205(hand_places, "val").fingerprint()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(hand_places / "images/b/bar/00000001.jpg")
    assert load_places205(hand_places, "train").fingerprint() != before


# --- errors


def test_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as info:
        load_places205(missing, "train")
    message = str(info.value)
    assert str(missing) in message and "train_places205.csv" in message
    assert "ssl-bench data synth places205 --out DIR" in message


def test_unknown_split(hand_places: Path) -> None:
    with pytest.raises(DatasetError, match="'test'.*train, val"):
        load_places205(hand_places, "test")


@pytest.mark.parametrize("split", ["train", "val"])
def test_missing_list_file_names_both_places(hand_places: Path, split: str) -> None:
    _list_file(hand_places, split).unlink()
    with pytest.raises(DatasetError) as info:
        load_places205(hand_places, "train")  # val's list is needed too, for num_classes
    message = str(info.value)
    assert str(_list_file(hand_places, split)) in message
    assert str(hand_places / f"{split}_places205.csv") in message
    assert "ssl-bench data synth places205" in message


def test_missing_images_folder(tmp_path: Path) -> None:
    root = _write_places(tmp_path, images="pictures")
    with pytest.raises(DatasetError) as info:
        load_places205(root, "train")
    message = str(info.value)
    assert str(root / "images") in message and str(root / TARBALL_IMAGES) in message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("a/abbey/00000009.jpg", "expected '<relative/path.jpg> <label>'"),
        ("a/abbey/00000009.jpg 0 extra", "expected '<relative/path.jpg> <label>'"),
        ("a/abbey/00000009.jpg abbey", "label 'abbey' is not an integer"),
        ("a/abbey/00000009.jpg 1.5", "label '1.5' is not an integer"),
        ("a/abbey/00000009.jpg -1", "label -1 is negative"),
    ],
)
def test_malformed_line(hand_places: Path, line: str, expected: str) -> None:
    path = _list_file(hand_places, "val")
    path.write_text(path.read_text().rstrip("\n") + f"\n{line}\n")  # line 3
    with pytest.raises(DatasetError) as info:
        load_places205(hand_places, "train")
    message = str(info.value)
    assert f"{path}:3:" in message and expected in message and repr(line) in message


def test_missing_images_counted_and_first_five_named(hand_places: Path) -> None:
    train = {f"a/abbey/{i:08d}.jpg": 0 for i in range(1, 10)}  # 1..3 exist, 4..9 do not
    path = _list_file(hand_places)
    path.write_text("".join(f"{p} {label}\n" for p, label in train.items()))
    with pytest.raises(DatasetError) as info:
        load_places205(hand_places, "train")
    message = str(info.value)
    assert "6 image(s)" in message and str(path) in message and "(and 1 more)" in message
    images = hand_places / "images" / "a" / "abbey"
    assert all(str(images / f"{i:08d}.jpg") in message for i in range(4, 9))
    assert all(str(images / f"{i:08d}.jpg") not in message for i in (3, 9))


def test_empty_list(hand_places: Path) -> None:
    path = _list_file(hand_places, "val")
    path.write_text("\n  \n")
    with pytest.raises(DatasetError, match="lists no images") as info:
        load_places205(hand_places, "val")
    assert str(path) in str(info.value)


# --- synthetic dataset

N_CLASSES, PER_TRAIN, PER_VAL = 10, 16, 8


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_places205(
        tmp_path_factory.mktemp("synth"), N_CLASSES, PER_TRAIN, PER_VAL, seed=0
    )


def test_synth_layout_and_counts(synth_root: Path) -> None:
    assert synth_root.name == "Places205"
    train, val = load_places205(synth_root, "train"), load_places205(synth_root, "val")
    assert train.num_classes == val.num_classes == N_CLASSES
    np.testing.assert_array_equal(train.class_counts(), [PER_TRAIN] * N_CLASSES)
    np.testing.assert_array_equal(val.class_counts(), [PER_VAL] * N_CLASSES)
    assert train.class_names == [n.replace("/", "_") for n in scene_names(N_CLASSES)]
    assert train.class_names[:3] == ["abbey", "airport_terminal", "alley"]
    assert not set(train.image_paths) & set(val.image_paths)
    first = train.image_paths[0].relative_to(synth_root / "images").as_posix()
    assert first == "a/abbey/00000001.jpg"
    for path in train.image_paths[::7] + val.image_paths[::5]:
        with Image.open(path) as image:
            assert image.mode == "RGB" and all(80 <= s <= 128 for s in image.size)


def _pixels(paths: list[Path], side: int = 16) -> np.ndarray:
    small = [Image.open(p).resize((side, side), Image.BILINEAR) for p in paths]
    return np.stack([np.asarray(image, np.float32).ravel() for image in small])


def test_synth_is_learnable_by_nearest_class_mean(synth_root: Path) -> None:
    """Guards against degenerate images: raw 16x16 pixels already beat chance clearly."""
    train, val = load_places205(synth_root, "train"), load_places205(synth_root, "val")
    x_train, x_val = _pixels(train.image_paths), _pixels(val.image_paths)
    means = np.stack([x_train[train.labels == c].mean(axis=0) for c in range(N_CLASSES)])
    distances = ((x_val[:, None, :] - means[None]) ** 2).sum(axis=-1)
    accuracy = float((distances.argmin(axis=1) == val.labels).mean())
    assert accuracy > 2.0 / N_CLASSES


def test_synth_nested_names_and_many_classes(tmp_path: Path) -> None:
    names = scene_names(205)
    assert len(set(names)) == 205 and names[13] == "apartment_building/outdoor"
    assert names[-1] == "scene_204"
    root = synth_places205(tmp_path, num_classes=15, train_per_class=1, val_per_class=1, seed=0)
    val = load_places205(root, "val")
    assert val.class_names[13] == "apartment_building_outdoor"
    assert val.image_paths[13] == root / "images/a/apartment_building/outdoor/00000002.jpg"


def _snapshot(root: Path) -> tuple[list[bytes], list[np.ndarray]]:
    lists = [p.read_bytes() for p in sorted((root / "trainvalsplit_places205").glob("*.csv"))]
    pixels = [np.asarray(Image.open(p)) for p in sorted((root / "images").rglob("*.jpg"))]
    return lists, pixels


def test_synth_is_deterministic(tmp_path: Path) -> None:
    kwargs = {"num_classes": 3, "train_per_class": 2, "val_per_class": 1}
    first = _snapshot(synth_places205(tmp_path / "a", seed=3, **kwargs))
    again = _snapshot(synth_places205(tmp_path / "b", seed=3, **kwargs))
    other = _snapshot(synth_places205(tmp_path / "c", seed=4, **kwargs))
    assert first[0] == again[0] and len(first[1]) == 9
    assert all(np.array_equal(a, b) for a, b in zip(first[1], again[1]))
    assert not any(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(first[1], other[1]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 206}, "num_classes"),
        ({"train_per_class": 0}, "train_per_class"),
        ({"val_per_class": 0}, "val_per_class"),
        ({"min_side": 16}, "min_side"),
        ({"min_side": 100, "max_side": 90}, "min_side"),
    ],
)
def test_synth_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        synth_places205(tmp_path, **kwargs)


def test_cli_synth_places205(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["data", "synth", "places205", "--out", str(tmp_path), "--per-class", "3"]
    assert main(args + ["--classes", "2", "--seed", "1"]) == 0
    assert "Places205" in capsys.readouterr().out
    val = load_places205(tmp_path / "Places205", "val")
    np.testing.assert_array_equal(val.class_counts(), [1, 1])  # val = per-class // 3
    assert main(["data", "synth", "places205", "--out", str(tmp_path), "--per-class", "2"]) == 2
    assert "val_per_class" in capsys.readouterr().err
