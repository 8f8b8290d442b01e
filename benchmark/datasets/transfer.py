"""The twelve transfer datasets of Kornblith et al. 2019 (SimCLR's Table 8) in their official layouts.

Each reader takes the dataset folder as downloaded and returns a ``ClassificationData`` with the
protocol's splits (docs/tasks/transfer.md lists the facts and their sources):

- the dataset's own validation split where it has one (Flowers102 ``valid``, Aircraft ``val``,
  DTD ``val1``, VOC2007 ``val``), otherwise a validation set carved out of the training split
  with the recorded fraction and seed (``classification.carve_validation``);
- SUN397 partition 1 (``Training_01.txt`` / ``Testing_01.txt``), DTD split 1;
- Caltech-101: 30 training images per class drawn with the recorded seed, the rest for testing.

Torchvision's dataset classes read the official files where torchvision has one, always with
``download=False``: nothing is ever fetched. Their checks of the layout come too late and say too
little ("Dataset not found"), so every reader first checks the files it needs and names what is
missing and where it looked; torchvision's own errors are rephrased with the expected layout.
Birdsnap has no torchvision class and is read from its list files; VOC2007 goes through the
project's VOC reader and is multi-label (``labels`` of shape (n, 20): 1 present, 0 absent, -1 only
difficult instances).

CIFAR ships its images inside pickled batches: its splits hold ``DecodedImage`` items (decoded
pixels) where the other datasets hold file paths, and ``images.open_rgb`` reads both.

The metric of each dataset is data too: ``METRICS`` (dataset -> metric name) and ``metric_function``.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.datasets.listed import inside_dataset, read_list_text
from benchmark.datasets.splits import ClassificationData, ClassificationSplit, SplitPart, carved_parts, check_files
from benchmark.errors import DatasetError
from benchmark.metrics import eleven_point_map, mean_per_class_accuracy, top1_accuracy

TRANSFER_LAYOUTS = ("food101", "cifar10", "cifar100", "birdsnap", "sun397", "stanford_cars", "fgvc_aircraft",
                    "voc2007", "dtd", "oxford_pets", "caltech101", "flowers102")
# the metric the protocol reports on each dataset (Kornblith et al. 2019, Table 1 / Appendix A)
METRICS = {
    "food101": "top1", "cifar10": "top1", "cifar100": "top1", "birdsnap": "top1", "sun397": "top1",
    "stanford_cars": "top1", "dtd": "top1",
    "fgvc_aircraft": "mean_per_class_accuracy", "oxford_pets": "mean_per_class_accuracy",
    "caltech101": "mean_per_class_accuracy", "flowers102": "mean_per_class_accuracy",
    "voc2007": "voc07_11point_map",
}
METRIC_FUNCTIONS: dict[str, Callable] = {
    "top1": top1_accuracy,  # (y_true, y_pred) class indices
    "mean_per_class_accuracy": mean_per_class_accuracy,  # (y_true, y_pred) class indices
    "voc07_11point_map": eleven_point_map,  # (labels (n, 20) in {1, 0, -1}, scores (n, 20))
}

CALTECH_TRAIN_PER_CLASS = 30
SUN397_PARTITION = 1
DTD_PARTITION = 1
_CALTECH_DRAW_TAG = 0xCA1101
_SYNTH_HINT = "generate a small copy with: ssl-bench data synth transfer --dataset NAME --out DIR"

# What each reader expects, for the error messages and docs/tasks/transfer.md
EXPECTED = {
    "food101": "DATASET/food-101/meta/{train,test}.json and DATASET/food-101/images/<class>/<id>.jpg "
               "(food-101.tar.gz extracted into DATASET)",
    "cifar10": "DATASET/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} "
               "(cifar-10-python.tar.gz extracted into DATASET)",
    "cifar100": "DATASET/cifar-100-python/{train,test,meta} (cifar-100-python.tar.gz extracted into DATASET)",
    "birdsnap": "DATASET/{species.txt,images.txt,test_images.txt} and the images get_birdsnap.py downloaded "
                "to DATASET/download/images/<species>/<file>.jpg",
    "sun397": "DATASET/SUN397/ClassName.txt, DATASET/SUN397/<letter>/<class>/sun_*.jpg and the partition "
              "lists Training_01.txt / Testing_01.txt in DATASET/SUN397/Partitions/, DATASET/SUN397/ or DATASET/",
    "stanford_cars": "DATASET/stanford_cars/{cars_train/,cars_test/,cars_test_annos_withlabels.mat,"
                     "devkit/cars_meta.mat,devkit/cars_train_annos.mat} (torchvision's StanfordCars layout)",
    "fgvc_aircraft": "DATASET/fgvc-aircraft-2013b/data/{variants.txt,images_variant_{train,val,test}.txt,"
                     "images/<id>.jpg} (fgvc-aircraft-2013b.tar.gz extracted into DATASET)",
    "voc2007": "DATASET/VOCdevkit/VOC2007/{ImageSets/Main/{train,val,test}.txt,Annotations/,JPEGImages/}",
    "dtd": "DATASET/dtd/{labels/{train1,val1,test1}.txt,images/<class>/<file>.jpg} (dtd-r1.0.1.tar.gz "
           "extracted into DATASET; torchvision's DATASET/dtd/dtd/ is read too)",
    "oxford_pets": "DATASET/oxford-iiit-pet/{annotations/{trainval,test}.txt,images/<id>.jpg} (images.tar.gz "
                   "and annotations.tar.gz extracted into DATASET/oxford-iiit-pet)",
    "caltech101": "DATASET/caltech101/101_ObjectCategories/<class>/image_NNNN.jpg "
                  "(101_ObjectCategories.tar.gz extracted into DATASET/caltech101)",
    "flowers102": "DATASET/flowers-102/{jpg/image_NNNNN.jpg,imagelabels.mat,setid.mat} (102flowers.tgz, "
                  "imagelabels.mat and setid.mat in DATASET/flowers-102)",
}
# the folder torchvision's class expects (its ``root`` is that folder's parent) and what must be in it
OFFICIAL_FOLDERS = {
    "food101": ("food-101", ["meta/train.json", "meta/test.json", "images"]),
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]),
    "cifar100": ("cifar-100-python", ["train", "test", "meta"]),
    "sun397": ("SUN397", ["ClassName.txt"]),
    "stanford_cars": ("stanford_cars", ["cars_train", "cars_test", "cars_test_annos_withlabels.mat",
                                        "devkit/cars_meta.mat", "devkit/cars_train_annos.mat"]),
    "fgvc_aircraft": ("fgvc-aircraft-2013b", ["data/variants.txt", "data/images_variant_train.txt",
                                              "data/images_variant_val.txt", "data/images_variant_test.txt",
                                              "data/images"]),
    "oxford_pets": ("oxford-iiit-pet", ["annotations/trainval.txt", "annotations/test.txt", "images"]),
    "caltech101": ("caltech101", ["101_ObjectCategories"]),
    "flowers102": ("flowers-102", ["jpg", "imagelabels.mat", "setid.mat"]),
    "dtd": ("dtd", [f"labels/{s}{DTD_PARTITION}.txt" for s in ("train", "val", "test")] + ["images"]),
}
BIRDSNAP_FILES = ["species.txt", "images.txt", "test_images.txt", "download/images"]


@dataclass
class InMemorySplit(ClassificationSplit):
    """A split whose images were decoded from the dataset's container files (CIFAR's batches):
    ``image_paths`` holds ``DecodedImage`` items, which the extraction pipeline reads like files."""

    def fingerprint(self) -> str:
        """Cache key: changes when any pixel or label changes."""
        digest = hashlib.sha256(f"{self.name}\n".encode())
        for item in self.image_paths:
            digest.update(np.ascontiguousarray(item.pixels).tobytes())
        digest.update(self.labels.astype(np.int64).tobytes())
        return digest.hexdigest()


@dataclass
class _Read:
    """What a reader found: the on-disk splits (val None: carve it out of train) and what the rows
    must say about how the splits were chosen."""

    train: ClassificationSplit
    val: ClassificationSplit | None
    test: ClassificationSplit
    protocol: dict


def load_transfer(root: Path, name: str, layout: str, *, val_fraction: float = 0.2, val_seed: int = 0,
                  follow_symlinks: bool = False) -> ClassificationData:
    """The dataset folder ``root`` (the option ``dataset``: ``name``) in the official layout of
    ``layout``, with the protocol's train, validation and test parts. ``val_seed`` also draws
    Caltech-101's 30 training images per class. Everything is checked before anything is read
    further: a missing file is a DatasetError naming it and the expected layout."""
    if layout not in TRANSFER_LAYOUTS:
        raise DatasetError(f"unknown transfer layout {layout!r}; expected one of {', '.join(TRANSFER_LAYOUTS)}")
    if not root.is_dir():
        raise DatasetError(f"{layout} dataset folder {root} does not exist; expected {EXPECTED[layout]}; "
                           f"{_SYNTH_HINT}")
    read = _READERS[layout](root, follow_symlinks=follow_symlinks, seed=val_seed)
    protocol = {"protocol_metric": METRICS[layout], **read.protocol}
    train = read.train
    carved = {}
    if read.val is not None:
        train_part = SplitPart(train, np.arange(len(train.labels)), train.name)
        val_part = SplitPart(read.val, np.arange(len(read.val.labels)), f"{read.val.name} (the dataset's own)")
    else:
        if train.labels.ndim != 1:
            raise DatasetError(f"{train.source}: a multi-label training split cannot be carved; it needs its own "
                               f"validation split")
        train_part, val_part, carved = carved_parts(train, val_fraction, val_seed)
    test_part = SplitPart(read.test, np.arange(len(read.test.labels)), read.test.name)
    return ClassificationData(name, root, layout, train.class_names, train_part, val_part, test_part, carved,
                              follow_symlinks, protocol)


def metric_function(layout: str) -> tuple[str, Callable]:
    """(metric name, function) the protocol reports for a transfer dataset."""
    metric = METRICS[layout]
    return metric, METRIC_FUNCTIONS[metric]


def detect_transfer_layout(root: Path) -> str | None:
    """The transfer layout whose official folder (or list files) ``root`` holds, when exactly one
    does; None otherwise."""
    found = [layout for layout in TRANSFER_LAYOUTS if _looks_like(root, layout)]
    return found[0] if len(found) == 1 else None


def _looks_like(root: Path, layout: str) -> bool:
    if layout == "birdsnap":
        return all((root / f).is_file() for f in ("species.txt", "images.txt", "test_images.txt"))
    if layout == "voc2007":
        return any((root / p / "ImageSets" / "Main").is_dir() for p in ("VOCdevkit/VOC2007", "VOC2007", "."))
    base, needed = OFFICIAL_FOLDERS[layout]
    candidates = [root / base, root / base / base] if layout == "dtd" else [root / base]
    if root.name == base:
        candidates.append(root)
    return any((folder / needed[0]).exists() for folder in candidates)


# --- locating the official folder and calling torchvision


def _official_folder(root: Path, layout: str) -> Path:
    """The folder of ``layout``'s official files: ``root/<base>`` or ``root`` itself when it has
    that name; every file the reader needs must be there (the error names those missing)."""
    base, needed = OFFICIAL_FOLDERS[layout]
    candidates = [root / base] + ([root] if root.name == base else [])
    if layout == "dtd":  # torchvision's own download nests the archive's dtd/ in another dtd/
        candidates.insert(0, root / base / base)
    for folder in candidates:
        if folder.is_dir():
            missing = [str(folder / n) for n in needed if not (folder / n).exists()]
            if missing:
                raise DatasetError(f"{layout} dataset {root} is incomplete: missing {', '.join(missing)}; "
                                   f"expected {EXPECTED[layout]}")
            return folder
    if all((root / n).exists() for n in needed):
        raise DatasetError(f"{layout}: the official files are directly in {root}, but torchvision reads them from "
                           f"a folder named {base}; rename {root} to {base} (or move the files into {root / base})")
    looked = " and ".join(str(c) for c in candidates)
    raise DatasetError(f"{layout} dataset not found: looked for {looked}; expected {EXPECTED[layout]}; {_SYNTH_HINT}")


def _torchvision(layout: str, root: Path, dataset_class, *args, **kwargs):
    """``dataset_class(*args, **kwargs)``, a torchvision dataset, built with download=False (nothing
    is ever fetched), its errors rephrased."""
    try:
        return dataset_class(*args, download=False, **kwargs)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        raise DatasetError(f"torchvision could not read the {layout} dataset in {root} ({exc}); "
                           f"expected {EXPECTED[layout]}") from None
    except Exception as exc:  # a truncated pickle or .mat, a list line torchvision cannot split, ...
        raise DatasetError(f"{layout} dataset {root}: a file of the official layout is malformed "
                           f"({type(exc).__name__}: {exc}); expected {EXPECTED[layout]}; re-extract the "
                           f"archive") from exc


def _split(root: Path, name: str, paths, labels, class_names: list[str], source: Path | str,
           follow_symlinks: bool) -> ClassificationSplit:
    """A split of image files, each kept inside the dataset folder ``root`` and checked to exist."""
    if not len(paths):
        raise DatasetError(f"{source} lists no images for the {name} split")
    kept = [inside_dataset(root, os.path.relpath(p, root), str(source), follow_symlinks) for p in paths]
    check_files(kept, str(source))
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim == 1 and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise DatasetError(f"{source}: labels run from {labels.min()} to {labels.max()} but there are "
                           f"{len(class_names)} classes")
    return ClassificationSplit(root, name, kept, labels, list(class_names), str(source))


# --- the readers


def _two_official_splits(root: Path, layout: str, dataset_class, image_attribute: str, names: tuple[str, str],
                         list_file: str, follow_symlinks: bool) -> _Read:
    """A dataset whose torchvision class reads a training and a test split from the official lists
    (``list_file`` formatted with the split's name, under the official folder); no validation split."""
    folder = _official_folder(root, layout)
    splits = {}
    for split in names:
        data = _torchvision(layout, root, dataset_class, folder.parent, split=split)
        splits[split] = _split(root, split, getattr(data, image_attribute), data._labels, data.classes,
                               folder / list_file.format(split=split), follow_symlinks)
    train, test = (splits[name] for name in names)
    _same_classes(train, test)
    return _Read(train, None, test, {"official_splits": f"{'/'.join(names)} of {list_file.format(split='*')}"})


def _read_food101(root: Path, follow_symlinks: bool, seed: int) -> _Read:
    from torchvision.datasets import Food101

    return _two_official_splits(root, "food101", Food101, "_image_files", ("train", "test"), "meta/{split}.json",
                                follow_symlinks)


def _unchecked_cifar(layout: str):
    """torchvision's CIFAR class with its MD5 checks left out (an MD5 of None means "the file
    exists" to torchvision): the checks would refuse any copy but the original archive and read all
    180 MB at every load; the reader checks the decoded contents itself."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if layout == "cifar10" else CIFAR100
    return type(f"Unchecked{cls.__name__}", (cls,), {
        "train_list": [[name, None] for name, _ in cls.train_list],
        "test_list": [[name, None] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None}})


def _read_cifar(layout: str) -> Callable:
    def read(root: Path, follow_symlinks: bool, seed: int) -> _Read:
        # imported here: it imports torch, which only CIFAR's reader needs
        from benchmark.datasets.images import DecodedImage

        folder = _official_folder(root, layout)
        cls = _unchecked_cifar(layout)
        splits = {}
        for split in ("train", "test"):
            data = _torchvision(layout, root, cls, str(folder.parent), train=split == "train")
            pixels = np.asarray(data.data)
            if pixels.ndim != 4 or pixels.shape[1:] != (32, 32, 3) or pixels.dtype != np.uint8:
                raise DatasetError(f"{folder}: the {split} batches hold {pixels.dtype} images of shape "
                                   f"{pixels.shape[1:]}; expected 32x32x3 uint8 (rows of 3072 bytes)")
            if len(data.targets) != len(pixels):
                raise DatasetError(f"{folder}: the {split} batches hold {len(pixels)} images but "
                                   f"{len(data.targets)} labels")
            labels = np.asarray(data.targets, dtype=np.int64)
            if len(labels) and (labels.min() < 0 or labels.max() >= len(data.classes)):
                raise DatasetError(f"{folder}: {split} labels run from {labels.min()} to {labels.max()} but the "
                                   f"meta file names {len(data.classes)} classes")
            items = [DecodedImage(pixels[i], f"{folder.name} {split} image {i}") for i in range(len(pixels))]
            splits[split] = InMemorySplit(root, split, items, labels, list(data.classes), str(folder))
        return _Read(splits["train"], None, splits["test"], {"official_splits": "train/test batches"})

    return read


def _read_birdsnap(root: Path, follow_symlinks: bool, seed: int) -> _Read:
    missing = [str(root / f) for f in BIRDSNAP_FILES if not (root / f).exists()]
    if missing:
        raise DatasetError(f"birdsnap dataset {root} is incomplete: missing {', '.join(missing)}; expected "
                           f"{EXPECTED['birdsnap']}; {_SYNTH_HINT}")
    species = _read_tsv(root / "species.txt", ("id", "common"))
    ids = {}
    for line_no, row in species:
        try:
            ids[int(row["id"])] = row["common"]
        except ValueError:
            raise DatasetError(f"{root / 'species.txt'}:{line_no}: species id {row['id']!r} is not an "
                               f"integer") from None
    order = sorted(ids)
    class_names = [ids[i] for i in order]
    index = {species_id: position for position, species_id in enumerate(order)}
    test_paths = {row["path"] for _, row in _read_tsv(root / "test_images.txt", ("path",))}
    image_dir = root / "download" / "images"
    lists = {"train": ([], []), "test": ([], [])}
    listed = {"train": 0, "test": 0}
    for line_no, row in _read_tsv(root / "images.txt", ("path", "species_id")):
        where = f"{root / 'images.txt'}:{line_no}"
        try:
            label = index[int(row["species_id"])]
        except (ValueError, KeyError):
            raise DatasetError(f"{where}: species_id {row['species_id']!r} is not an id of species.txt") from None
        split = "test" if row["path"] in test_paths else "train"
        listed[split] += 1
        path = inside_dataset(root, f"download/images/{row['path']}", where, follow_symlinks)
        # images whose Flickr source had gone when get_birdsnap.py ran are absent by design (its
        # fail.txt lists them): the protocol uses the images that could be downloaded, counted below
        if path.is_file():
            lists[split][0].append(path)
            lists[split][1].append(label)
    splits = {s: _split(root, s, paths, labels, class_names, root / "images.txt", follow_symlinks)
              for s, (paths, labels) in lists.items()}
    protocol = {"official_splits": "test = test_images.txt, train = the rest of images.txt",
                "n_listed_train": listed["train"], "n_listed_test": listed["test"],
                "n_missing_images": listed["train"] + listed["test"] - len(lists["train"][0]) - len(lists["test"][0])}
    if not lists["train"][0] or not lists["test"][0]:
        raise DatasetError(f"birdsnap: no image of images.txt was found under {image_dir}; run get_birdsnap.py "
                           f"in {root} to download them")
    return _Read(splits["train"], None, splits["test"], protocol)


def _read_tsv(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line number, {column: value}) of a tab-separated Birdsnap list with a header line."""
    lines = io.StringIO(read_list_text(path, "tab-separated lines under a header line"))
    header = lines.readline().rstrip("\r\n").split("\t")
    absent = [c for c in columns if c not in header]
    if absent:
        raise DatasetError(f"{path}:1: header {header!r} lacks the column(s) {absent}; expected Birdsnap's "
                           f"tab-separated header naming {', '.join(columns)}")
    rows = []
    for line_no, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) < len(header):
            raise DatasetError(f"{path}:{line_no}: {len(fields)} tab-separated fields where the header has "
                               f"{len(header)}: {line.strip()!r}")
        rows.append((line_no, dict(zip(header, fields))))
    return rows


def _read_sun397(root: Path, follow_symlinks: bool, seed: int) -> _Read:
    from torchvision.datasets import SUN397

    folder = _official_folder(root, "sun397")
    names = [f"{kind}_{SUN397_PARTITION:02d}.txt" for kind in ("Training", "Testing")]
    places = [folder / "Partitions", folder] + ([root / "Partitions", root] if root != folder else [])
    lists_dir = next((p for p in places if all((p / n).is_file() for n in names)), None)
    if lists_dir is None:
        raise DatasetError(f"sun397: partition lists {' and '.join(names)} not found in "
                           f"{', '.join(str(p) for p in places)} (they come in Partitions.zip, apart from "
                           f"SUN397.tar.gz); expected {EXPECTED['sun397']}")
    data = _torchvision("sun397", root, SUN397, folder.parent)
    label_of = {Path(p).relative_to(folder).as_posix(): label for p, label in zip(data._image_files, data._labels)}
    splits = {}
    for split, list_name in zip(("train", "test"), names):
        list_file = lists_dir / list_name
        paths, labels = [], []
        for line_no, line in enumerate(io.StringIO(read_list_text(list_file, "'/a/abbey/sun_x.jpg' lines")), 1):
            relative = line.strip().lstrip("/")
            if not relative:
                continue
            inside_dataset(folder, relative, f"{list_file}:{line_no}", follow_symlinks)
            if relative not in label_of:
                raise DatasetError(f"{list_file}:{line_no}: image {folder / relative} is missing (or is not a "
                                   f"sun_*.jpg file under a class folder of ClassName.txt)")
            paths.append(folder / relative)
            labels.append(label_of[relative])
        splits[split] = _split(root, split, paths, labels, data.classes, list_file, follow_symlinks)
    return _Read(splits["train"], None, splits["test"],
                 {"official_splits": f"partition {SUN397_PARTITION} ({names[0]} / {names[1]})"})


def _read_stanford_cars(root: Path, follow_symlinks: bool, seed: int) -> _Read:
    from torchvision.datasets import StanfordCars

    folder = _official_folder(root, "stanford_cars")
    splits = {}
    annotation_files = (("train", "devkit/cars_train_annos.mat"), ("test", "cars_test_annos_withlabels.mat"))
    for split, annotation_file in annotation_files:
        data = _torchvision("stanford_cars", root, StanfordCars, folder.parent, split=split)
        paths = [p for p, _ in data._samples]
        labels = [t for _, t in data._samples]
        splits[split] = _split(root, split, paths, labels, data.classes, folder / annotation_file, follow_symlinks)
    return _Read(splits["train"], None, splits["test"],
                 {"official_splits": "train/test of cars_train_annos.mat / cars_test_annos_withlabels.mat"})


def _read_fgvc_aircraft(root: Path, follow_symlinks: bool, seed: int) -> _Read:
    from torchvision.datasets import FGVCAircraft

    folder = _official_folder(root, "fgvc_aircraft")
    splits = {}
    for split in ("train", "val", "test"):
        data = _torchvision("fgvc_aircraft", root, FGVCAircraft, folder.parent, split=split,
                            annotation_level="variant")
        splits[split] = _split(root, split, data._image_files, data._labels, data.classes,
                               folder / "data" / f"images_variant_{split}.txt", follow_symlinks)
    return _Read(splits["train"], splits["val"], splits["test"],
                 {"official_splits": "train/val/test of images_variant_*.txt (variant level)"})


def _read_voc2007(root: Path, follow_symlinks: bool, seed: int) -> _Read:
    from benchmark.datasets.voc import VOC_CLASSES, load_voc, resolve_voc_root

    voc_dir = resolve_voc_root(root, "2007")
    splits = {}
    for split in ("train", "val", "test"):
        voc = load_voc(voc_dir, split, "2007")
        paths = [inside_dataset(root, os.path.relpath(p, root), str(voc_dir / "ImageSets" / "Main" / f"{split}.txt"),
                                follow_symlinks) for p in voc.image_paths]
        splits[split] = ClassificationSplit(root, split, paths, voc.labels.astype(np.int64), list(VOC_CLASSES),
                                            str(voc_dir / "ImageSets" / "Main" / f"{split}.txt"))
    return _Read(splits["train"], splits["val"], splits["test"],
                 {"official_splits": "train/val/test of ImageSets/Main", "multi_label": True})


def _read_dtd(root: Path, follow_symlinks: bool, seed: int) -> _Read:
    folder = _official_folder(root, "dtd")
    splits = {}
    for split in ("train", "val", "test"):
        list_file = folder / "labels" / f"{split}{DTD_PARTITION}.txt"
        paths, classes = _dtd_split(root, folder, split, list_file)
        splits[split] = (paths, classes, list_file)
    class_names = sorted(set(splits["train"][1]))
    index = {c: i for i, c in enumerate(class_names)}
    result = {}
    for split, (paths, classes, list_file) in splits.items():
        unknown = sorted(set(classes) - set(index))
        if unknown:
            raise DatasetError(f"{list_file}: class(es) {unknown} are not in {splits['train'][2]}")
        result[split] = _split(root, split, paths, [index[c] for c in classes], class_names, list_file,
                               follow_symlinks)
    return _Read(result["train"], result["val"], result["test"],
                 {"official_splits": f"split {DTD_PARTITION} (labels/train{DTD_PARTITION}.txt, val, test)"})


def _dtd_split(root: Path, folder: Path, split: str, list_file: Path) -> tuple[list[Path], list[str]]:
    """Image paths and class names of one DTD list: through torchvision's DTD where the folder sits
    where it looks (``<r>/dtd/dtd``); the archive as extracted (``dtd/`` alone) holds the same
    ``class/file.jpg`` lines, read directly."""
    if folder.parent.name == "dtd":
        from torchvision.datasets import DTD

        data = _torchvision("dtd", root, DTD, folder.parent.parent, split=split, partition=DTD_PARTITION)
        return list(data._image_files), [data.classes[label] for label in data._labels]
    paths, classes = [], []
    text = read_list_text(list_file, "'<class>/<file>.jpg' lines")
    for line_no, line in enumerate(io.StringIO(text), start=1):
        entry = line.strip()
        if not entry:
            continue
        if entry.count("/") != 1:
            raise DatasetError(f"{list_file}:{line_no}: expected '<class>/<file>.jpg', got {entry!r}")
        paths.append(folder / "images" / entry)  # kept inside the dataset folder by _split
        classes.append(entry.split("/")[0])
    return paths, classes


def _read_oxford_pets(root: Path, follow_symlinks: bool, seed: int) -> _Read:
    from torchvision.datasets import OxfordIIITPet

    return _two_official_splits(root, "oxford_pets", OxfordIIITPet, "_images", ("trainval", "test"),
                                "annotations/{split}.txt", follow_symlinks)


def _read_caltech101(root: Path, follow_symlinks: bool, seed: int) -> _Read:
    from torchvision.datasets import Caltech101

    folder = _official_folder(root, "caltech101")
    categories_dir = folder / "101_ObjectCategories"
    # checked above: torchvision's Caltech101 would otherwise create its folder (os.makedirs) first
    data = _torchvision("caltech101", root, Caltech101, folder.parent, target_type="category")
    paths = [categories_dir / data.categories[y] / f"image_{i:04d}.jpg" for y, i in zip(data.y, data.index)]
    labels = list(data.y)
    class_names = list(data.categories)
    # torchvision drops the background class; the protocol keeps it (102 classes, 30 x 102 = 3,060
    # training images), as the last class so the 101 object classes keep torchvision's indices
    background = categories_dir / "BACKGROUND_Google"
    if background.is_dir():
        extra = sorted(p for p in background.iterdir() if p.suffix.lower() == ".jpg")
        paths += extra
        labels += [len(class_names)] * len(extra)
        class_names.append("BACKGROUND_Google")
    labels = np.asarray(labels, dtype=np.int64)
    small = [class_names[c] for c in range(len(class_names)) if (labels == c).sum() <= CALTECH_TRAIN_PER_CLASS]
    if small:
        raise DatasetError(f"caltech101: class folder(s) {small} under {categories_dir} hold "
                           f"{CALTECH_TRAIN_PER_CLASS} images or fewer; the protocol trains on "
                           f"{CALTECH_TRAIN_PER_CLASS} per class and tests on the rest")
    rng = np.random.default_rng([seed, _CALTECH_DRAW_TAG])
    train_idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), CALTECH_TRAIN_PER_CLASS,
                                                   replace=False) for c in range(len(class_names))]))
    test_idx = np.setdiff1d(np.arange(len(labels)), train_idx)
    splits = {name: _split(root, name, [paths[i] for i in idx], labels[idx], class_names, categories_dir,
                           follow_symlinks)
              for name, idx in (("train", train_idx), ("test", test_idx))}
    protocol = {"official_splits": f"{CALTECH_TRAIN_PER_CLASS} training images per class drawn with seed {seed}, "
                                   f"the rest for testing",
                "train_draw_seed": seed, "background_class": background.is_dir()}
    return _Read(splits["train"], None, splits["test"], protocol)


def _read_flowers102(root: Path, follow_symlinks: bool, seed: int) -> _Read:
    from torchvision.datasets import Flowers102

    folder = _official_folder(root, "flowers102")
    # MD5 None: torchvision then checks that the .mat files exist, not that they are the originals
    # (which would refuse a synthetic copy); the labels are checked below
    unchecked = type("UncheckedFlowers102", (Flowers102,), {"_file_dict": {
        **Flowers102._file_dict, "label": ("imagelabels.mat", None), "setid": ("setid.mat", None)}})
    read = {split: _torchvision("flowers102", root, unchecked, folder.parent, split=split)
            for split in ("train", "val", "test")}
    n_classes = 1 + max(max(data._labels) for data in read.values())
    if n_classes > len(Flowers102.classes):
        raise DatasetError(f"{folder / 'imagelabels.mat'}: labels reach {n_classes}; Oxford 102 Flowers has "
                           f"{len(Flowers102.classes)} classes")
    class_names = Flowers102.classes[:n_classes]
    splits = {split: _split(root, split, data._image_files, data._labels, class_names, folder / "setid.mat",
                            follow_symlinks) for split, data in read.items()}
    return _Read(splits["train"], splits["val"], splits["test"],
                 {"official_splits": "trnid/valid/tstid of setid.mat"})


def _same_classes(train: ClassificationSplit, test: ClassificationSplit) -> None:
    """torchvision derives some classes from each split's own list: both must agree."""
    if train.class_names != test.class_names:
        only = sorted(set(train.class_names) ^ set(test.class_names))
        raise DatasetError(f"{test.source} and {train.source} name different classes (e.g. {only[:5]}); "
                           f"re-extract the dataset's list files")


_READERS = {
    "food101": _read_food101, "cifar10": _read_cifar("cifar10"), "cifar100": _read_cifar("cifar100"),
    "birdsnap": _read_birdsnap, "sun397": _read_sun397, "stanford_cars": _read_stanford_cars,
    "fgvc_aircraft": _read_fgvc_aircraft, "voc2007": _read_voc2007, "dtd": _read_dtd,
    "oxford_pets": _read_oxford_pets, "caltech101": _read_caltech101, "flowers102": _read_flowers102,
}
