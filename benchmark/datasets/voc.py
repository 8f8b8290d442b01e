"""Reader for PASCAL VOC datasets in the original VOCdevkit layout.

The VOC07 classification task of Goyal et al. 2019 trains one linear SVM per class on
trainval and reports mAP on test; images whose only instances of a class are marked
"difficult" are ignored for that class.  This module turns the devkit's XML annotations
into the label matrix that protocol needs, without opening any image (decoding is done
lazily by the feature extractor).
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.datasets.listed import inside_dataset, read_list_text
from benchmark.errors import DatasetError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

_CLASS_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}
_SYNTH_HINT = "generate a small one with: ssl-bench data synth voc07 --out DIR"


@dataclass(frozen=True)
class VOCObject:
    """One annotated instance; `box` is (xmin, ymin, xmax, ymax), 1-based as in the XML."""

    name: str
    box: tuple[int, int, int, int]
    difficult: bool
    truncated: bool


@dataclass
class VOCSplit:
    """One split of a VOC dataset.

    `labels[i, c]` is 1 if image i has a non-difficult instance of class c, -1 if all its
    instances of c are difficult (the protocol ignores that pair), and 0 if c is absent.
    """

    root: Path
    year: str
    split: str
    image_ids: list[str]
    image_paths: list[Path]
    labels: np.ndarray
    objects: list[list[VOCObject]]

    def fingerprint(self) -> str:
        """Cheap cache key: changes when the split's ids or any image file size change."""
        digest = hashlib.sha256(f"{self.split}\n".encode())
        for image_id, path in zip(self.image_ids, self.image_paths):
            digest.update(f"{image_id}\t{path.stat().st_size}\n".encode())
        return digest.hexdigest()


def load_voc(root: str | Path, split: str, year: str = "2007") -> VOCSplit:
    """Load split `split` of VOC`year` from `root`.

    `root` may be the VOC{year} folder itself, the VOCdevkit folder or the folder that
    contains VOCdevkit, because users point at whichever one they extracted.
    """
    voc_dir = resolve_voc_root(root, year)
    image_ids = _read_split_ids(voc_dir, split)
    image_paths = _image_paths(voc_dir, image_ids)
    objects = [_parse_annotation(voc_dir / "Annotations" / f"{i}.xml") for i in image_ids]
    return VOCSplit(
        root=voc_dir,
        year=year,
        split=split,
        image_ids=image_ids,
        image_paths=image_paths,
        labels=labels_from_objects(objects),
        objects=objects,
    )


def load_voc_per_class_labels(
    root: str | Path, split: str, cls: str, year: str = "2007"
) -> dict[str, int]:
    """Read the devkit's own `ImageSets/Main/{cls}_{split}.txt`, in the devkit's encoding.

    Values are returned as written: 1 present, -1 absent, 0 difficult-only.  Note this
    differs from `VOCSplit.labels`, where absent is 0 and difficult-only is -1.  Useful to
    cross-check the labels derived from the XML annotations.
    """
    if cls not in _CLASS_INDEX:
        raise DatasetError(f"unknown VOC class {cls!r}; expected one of: {', '.join(VOC_CLASSES)}")
    voc_dir = resolve_voc_root(root, year)
    path = voc_dir / "ImageSets" / "Main" / f"{cls}_{split}.txt"
    if not path.is_file():
        raise DatasetError(
            f"per-class label file {path} does not exist; expected lines like '000005 -1'"
        )
    labels: dict[str, int] = {}
    for line_no, line in enumerate(read_list_text(path, "lines like '000005 -1'").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("1", "-1", "0"):
            raise DatasetError(f"{path}:{line_no}: expected '<image id> <1|-1|0>', got {line!r}")
        labels[fields[0]] = int(fields[1])
    return labels


def labels_from_objects(objects: list[list[VOCObject]]) -> np.ndarray:
    """Build the (n, 20) int8 label matrix (1 / -1 difficult-only / 0 absent)."""
    labels = np.zeros((len(objects), len(VOC_CLASSES)), dtype=np.int8)
    for row, image_objects in zip(labels, objects):
        for obj in image_objects:
            c = _CLASS_INDEX[obj.name]
            if not obj.difficult:
                row[c] = 1
            elif row[c] == 0:
                row[c] = -1
    return labels


def resolve_voc_root(root: str | Path, year: str = "2007") -> Path:
    """Find the VOC{year} folder given it, its VOCdevkit parent, or the folder above that."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"VOC dataset folder {root} does not exist. {_expected_layout(year)}")
    for candidate in (root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    raise DatasetError(
        f"{root} is not a VOC{year} dataset: no ImageSets/Main found in it, in "
        f"{root / f'VOC{year}'} or in {root / 'VOCdevkit' / f'VOC{year}'}. {_expected_layout(year)}"
    )


def _expected_layout(year: str) -> str:
    return (
        f"Expected the VOC{year} folder (or VOCdevkit, or the folder containing VOCdevkit) "
        "with ImageSets/Main/<split>.txt, Annotations/ and JPEGImages/; "
        f"{_SYNTH_HINT}"
    )


def _read_split_ids(voc_dir: Path, split: str) -> list[str]:
    main = voc_dir / "ImageSets" / "Main"
    path = main / f"{split}.txt"
    if not path.is_file():
        existing = ", ".join(_available_splits(main)) or "none"
        raise DatasetError(
            f"split file {path} does not exist; splits available in {main}: {existing}. {_SYNTH_HINT}"
        )
    lines = read_list_text(path, "one image id per line").splitlines()
    ids = [line.strip() for line in lines if line.strip()]
    for line_no, line in enumerate(lines, start=1):
        image_id = line.strip()
        if image_id and (image_id in (".", "..") or "/" in image_id or "\\" in image_id):
            raise DatasetError(f"{path}:{line_no}: image id {image_id!r} is not a file name (it contains a path); "
                               f"expected one id per line, e.g. 000005")
    if not ids:
        raise DatasetError(f"split file {path} lists no image ids; expected one image id per line")
    return ids


def _available_splits(main: Path) -> list[str]:
    """Split names in ImageSets/Main, skipping the per-class `{cls}_{split}.txt` files."""
    class_prefixes = tuple(f"{c}_" for c in VOC_CLASSES)
    return sorted(p.stem for p in main.glob("*.txt") if not p.stem.startswith(class_prefixes))


def _image_paths(voc_dir: Path, image_ids: list[str]) -> list[Path]:
    """Paths of the JPEGs, each inside JPEGImages/ (a symlink out of it is refused); only their
    existence is checked so loading stays fast."""
    paths = [inside_dataset(voc_dir / "JPEGImages", f"{i}.jpg", str(voc_dir / "JPEGImages"), option=False)
             for i in image_ids]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise DatasetError(
            f"{len(missing)} image(s) listed in the split are missing: {shown}{more}; "
            f"expected one JPEG per image id in {voc_dir / 'JPEGImages'}"
        )
    return paths


def _parse_annotation(path: Path) -> list[VOCObject]:
    if not path.is_file():
        raise DatasetError(
            f"annotation file {path} does not exist; expected one XML per image id in {path.parent}"
        )
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise DatasetError(f"annotation file {path} is not valid XML: {exc}") from exc
    return [_parse_object(path, element) for element in tree.getroot().iter("object")]


def _parse_object(path: Path, element: ET.Element) -> VOCObject:
    name = (element.findtext("name") or "").strip()
    if name not in _CLASS_INDEX:
        raise DatasetError(
            f"annotation file {path} has an object of unknown class {name!r}; "
            f"expected one of: {', '.join(VOC_CLASSES)}"
        )
    return VOCObject(
        name=name,
        box=_parse_box(path, element),
        difficult=_parse_flag(path, element, "difficult"),
        truncated=_parse_flag(path, element, "truncated"),
    )


def _parse_box(path: Path, element: ET.Element) -> tuple[int, int, int, int]:
    """Read bndbox; some devkit files write coordinates as floats ("48.0")."""
    coords = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = element.findtext(f"bndbox/{tag}")
        try:
            coords.append(int(float(text)))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise DatasetError(
                f"annotation file {path}: object bndbox/{tag} is {text!r}; expected a number"
            ) from None
    xmin, ymin, xmax, ymax = coords
    return xmin, ymin, xmax, ymax


def _parse_flag(path: Path, element: ET.Element, tag: str) -> bool:
    """Read a 0/1 flag; an absent tag means 0, as in parts of the original devkit."""
    text = (element.findtext(tag) or "0").strip()
    try:
        return bool(int(float(text)))
    except ValueError:
        raise DatasetError(
            f"annotation file {path}: object {tag} is {text!r}; expected 0 or 1"
        ) from None
