"""Tests of the VOC devkit reader and the synthetic VOC07 generator."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.datasets.synth_voc import synth_voc07
from benchmark.datasets.voc import VOC_CLASSES, VOCObject, load_voc, load_voc_per_class_labels
from benchmark.errors import DatasetError

CAT, DOG, PERSON = (VOC_CLASSES.index(c) for c in ("cat", "dog", "person"))


def _object_xml(
    name: str, box: tuple[str, ...], difficult: str | None = "0", truncated: str | None = "0"
) -> str:
    """One <object>; a flag of None leaves its tag out, as some devkit files do."""
    tags = {"difficult": difficult, "truncated": truncated}
    flags = "".join(f"<{tag}>{value}</{tag}>" for tag, value in tags.items() if value is not None)
    coords = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<object><name>{name}</name><pose>Left</pose>{flags}<bndbox>{coords}</bndbox></object>"


def _write_devkit(base: Path, annotations: dict[str, str], split: str = "trainval") -> Path:
    """Hand-made VOCdevkit/VOC2007 under `base`; `annotations` maps id -> XML object elements."""
    voc = base / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    for image_id, objects in annotations.items():
        xml = f"<annotation><filename>{image_id}.jpg</filename>{objects}</annotation>"
        (voc / "Annotations" / f"{image_id}.xml").write_text(xml)
        Image.new("RGB", (8, 8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
    lines = "".join(f"{i}\n" for i in annotations) + "\n"  # trailing blank line must be ignored
    (voc / "ImageSets" / "Main" / f"{split}.txt").write_text(lines)
    return voc


@pytest.fixture
def hand_voc(tmp_path: Path) -> Path:
    return _write_devkit(
        tmp_path,
        {
            "000001": _object_xml("dog", ("48", "240", "195", "371"))
            + _object_xml("dog", ("8", "12", "20", "30"), difficult="1", truncated="1")
            + _object_xml("cat", ("1", "2", "3", "4"), difficult="1"),
            "000002": _object_xml(
                "person", ("48.0", "10.5", "100.0", "200.9"), difficult=None, truncated=None
            ),
            "000003": "",
        },
    )


def test_hand_written_labels(hand_voc: Path) -> None:
    split = load_voc(hand_voc, "trainval")
    assert split.image_ids == ["000001", "000002", "000003"]
    assert split.labels.dtype == np.int8 and split.labels.shape == (3, 20)
    expected = np.zeros((3, 20), dtype=np.int8)
    expected[0, DOG] = 1  # one difficult + one non-difficult instance
    expected[0, CAT] = -1  # only a difficult instance
    expected[1, PERSON] = 1  # no difficult tag means not difficult
    np.testing.assert_array_equal(split.labels, expected)


def test_hand_written_objects(hand_voc: Path) -> None:
    split = load_voc(hand_voc, "trainval")
    assert split.objects[0] == [
        VOCObject("dog", (48, 240, 195, 371), difficult=False, truncated=False),
        VOCObject("dog", (8, 12, 20, 30), difficult=True, truncated=True),
        VOCObject("cat", (1, 2, 3, 4), difficult=True, truncated=False),
    ]
    assert split.objects[1] == [VOCObject("person", (48, 10, 100, 200), False, False)]
    assert split.objects[2] == []
    assert split.image_paths[0] == hand_voc / "JPEGImages" / "000001.jpg"
    assert split.root == hand_voc and split.year == "2007" and split.split == "trainval"


def test_fingerprint_tracks_ids_and_file_sizes(hand_voc: Path) -> None:
    before = load_voc(hand_voc, "trainval").fingerprint()
    assert before == load_voc(hand_voc, "trainval").fingerprint()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(hand_voc / "JPEGImages" / "000002.jpg")
    assert load_voc(hand_voc, "trainval").fingerprint() != before


@pytest.mark.parametrize("relative", ["", "..", "../.."])
def test_accepted_root_forms(hand_voc: Path, relative: str) -> None:
    root = (hand_voc / relative).resolve()
    assert load_voc(root, "trainval").root == hand_voc


def test_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as info:
        load_voc(missing, "trainval")
    message = str(info.value)
    assert str(missing) in message
    assert "ImageSets/Main" in message and "JPEGImages" in message
    assert "ssl-bench data synth voc07 --out DIR" in message


def test_root_without_devkit_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="ssl-bench data synth voc07") as info:
        load_voc(tmp_path, "trainval")
    assert str(tmp_path) in str(info.value)


def test_missing_split_lists_existing_splits(hand_voc: Path) -> None:
    (hand_voc / "ImageSets" / "Main" / "dog_trainval.txt").write_text("000001  1\n")
    with pytest.raises(DatasetError) as info:
        load_voc(hand_voc, "test")
    message = str(info.value)
    assert str(hand_voc / "ImageSets" / "Main" / "test.txt") in message
    assert "trainval" in message and "dog_trainval" not in message


def test_malformed_xml(hand_voc: Path) -> None:
    broken = hand_voc / "Annotations" / "000002.xml"
    broken.write_text("<annotation><object><name>dog</name>")
    with pytest.raises(DatasetError, match="not valid XML") as info:
        load_voc(hand_voc, "trainval")
    assert str(broken) in str(info.value)


def test_missing_annotation(hand_voc: Path) -> None:
    missing = hand_voc / "Annotations" / "000003.xml"
    missing.unlink()
    with pytest.raises(DatasetError) as info:
        load_voc(hand_voc, "trainval")
    assert str(missing) in str(info.value)


def test_unknown_class(hand_voc: Path) -> None:
    path = hand_voc / "Annotations" / "000003.xml"
    path.write_text(f"<annotation>{_object_xml('unicorn', ('1', '1', '2', '2'))}</annotation>")
    with pytest.raises(DatasetError, match="unicorn") as info:
        load_voc(hand_voc, "trainval")
    assert str(path) in str(info.value)


def test_missing_jpeg(hand_voc: Path) -> None:
    missing = hand_voc / "JPEGImages" / "000002.jpg"
    missing.unlink()
    with pytest.raises(DatasetError) as info:
        load_voc(hand_voc, "trainval")
    assert str(missing) in str(info.value)


# --- synthetic dataset


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_voc07(tmp_path_factory.mktemp("synth"), n_images=80, seed=0)


def test_synth_layout(synth_root: Path) -> None:
    assert synth_root.parts[-2:] == ("VOCdevkit", "VOC2007")
    main = synth_root / "ImageSets" / "Main"
    for split in ("train", "val", "trainval", "test"):
        assert (main / f"{split}.txt").is_file()
        assert all((main / f"{c}_{split}.txt").is_file() for c in VOC_CLASSES)
    trainval = (main / "trainval.txt").read_text().split()
    assert trainval == (main / "train.txt").read_text().split() + (main / "val.txt").read_text().split()
    assert trainval[0] == "000001" and len(trainval) == 40


def test_synth_splits_cover_all_classes(synth_root: Path) -> None:
    trainval, test = load_voc(synth_root, "trainval"), load_voc(synth_root, "test")
    assert len(trainval.image_ids) == len(test.image_ids) == 40
    assert not set(trainval.image_ids) & set(test.image_ids)
    assert (trainval.labels == 1).any(axis=0).all()
    assert (test.labels == 1).any(axis=0).all()
    assert (trainval.labels == -1).any() and (test.labels == -1).any()


@pytest.mark.parametrize("split", ["train", "val", "trainval", "test"])
def test_synth_labels_match_per_class_files(synth_root: Path, split: str) -> None:
    data = load_voc(synth_root, split)
    devkit_to_ours = {1: 1, -1: 0, 0: -1}
    for c, cls in enumerate(VOC_CLASSES):
        official = load_voc_per_class_labels(synth_root, split, cls)
        assert list(official) == data.image_ids
        ours = [devkit_to_ours[v] for v in official.values()]
        np.testing.assert_array_equal(ours, data.labels[:, c], err_msg=cls)


def test_synth_images_match_annotations(synth_root: Path) -> None:
    data = load_voc(synth_root, "trainval")
    flags = {"difficult": 0, "truncated": 0}
    for path, image_id, objects in zip(data.image_paths, data.image_ids, data.objects):
        size = ET.parse(synth_root / "Annotations" / f"{image_id}.xml").getroot().find("size")
        width, height = int(size.findtext("width")), int(size.findtext("height"))
        with Image.open(path) as image:
            assert image.size == (width, height) and image.mode == "RGB"
        assert 80 <= width <= 128 and 80 <= height <= 128
        assert 1 <= len(objects) <= 4
        for obj in objects:
            xmin, ymin, xmax, ymax = obj.box
            assert 1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height
            flags["difficult"] += obj.difficult
            flags["truncated"] += obj.truncated
    assert flags["difficult"] > 0 and flags["truncated"] > 0


def _snapshot(root: Path) -> tuple[list[bytes], list[np.ndarray]]:
    xml = [p.read_bytes() for p in sorted((root / "Annotations").glob("*.xml"))]
    pixels = [np.asarray(Image.open(p)) for p in sorted((root / "JPEGImages").glob("*.jpg"))]
    return xml, pixels


def test_synth_is_deterministic(tmp_path: Path) -> None:
    first = _snapshot(synth_voc07(tmp_path / "a", n_images=12, seed=3))
    again = _snapshot(synth_voc07(tmp_path / "b", n_images=12, seed=3))
    other = _snapshot(synth_voc07(tmp_path / "c", n_images=12, seed=4))
    assert first[0] == again[0]
    assert all(np.array_equal(a, b) for a, b in zip(first[1], again[1]))
    assert first[0] != other[0]
    assert not any(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(first[1], other[1]))


def test_synth_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="test_fraction"):
        synth_voc07(tmp_path, n_images=10, test_fraction=1.0)
    with pytest.raises(DatasetError, match="n_images"):
        synth_voc07(tmp_path, n_images=2)
