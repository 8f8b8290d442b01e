"""Tiny copies of the twelve transfer datasets, each in exactly its official on-disk format.

A few classes x a few images, drawn by ``synth_classification.class_image`` (the class's shape
on a textured background), so a classifier can learn them; the files around the images are those
of the official downloads: CIFAR's pickled batches, Stanford Cars' and Flowers' .mat files,
Food-101's JSON lists, Aircraft's variant lists, and so on (``benchmark.datasets.transfer`` lists
each layout). ``synth_transfer(out, name)`` writes ``out/<name>/`` and returns it: the folder the
option ``dataset`` names under the data root. The images and lists are byte-identical for a
given seed and size (the .mat files' headers carry their creation time).

``per_class`` sets the training images per class (4 by default: the readers' tests); val and test
get half as many (at least 2). The mini suite uses 30, so that its accuracies move in steps of a
few points and the significance intervals mean something. Caltech-101's 30 training images per
class are the protocol's, so its size does not change.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from benchmark.datasets.synth_classification import class_image
from benchmark.datasets.transfer import TRANSFER_LAYOUTS
from benchmark.errors import DatasetError

_JPEG_QUALITY = 90
_SIDES = (40, 56)  # small images: the whole set of twelve is written in a few seconds
NUM_CLASSES = 3
# images per class of each split written (Caltech-101: per class in all; 30 of them train)
TRAIN_PER_CLASS = 4
MIN_HELD_OUT_PER_CLASS = 2  # val and test images per class at the smallest size
CALTECH_PER_CLASS = 32


def synth_transfer(out: str | Path, name: str, *, seed: int = 0, per_class: int = TRAIN_PER_CLASS) -> Path:
    """Write a small ``name`` (one of the twelve layouts) to ``out/name`` and return that folder."""
    if name not in TRANSFER_LAYOUTS:
        raise DatasetError(f"unknown transfer dataset {name!r}; expected one of {', '.join(TRANSFER_LAYOUTS)}")
    if not isinstance(per_class, int) or per_class < 2:
        raise DatasetError(f"per_class (--per-class) must be an integer >= 2, got {per_class!r}")
    root = Path(out).expanduser() / name
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, TRANSFER_LAYOUTS.index(name)])
    held_out = max(MIN_HELD_OUT_PER_CLASS, per_class // 2)
    counts = {"train": per_class, "val": held_out, "test": held_out, "trainval": per_class + held_out}
    _WRITERS[name](root, rng, counts)
    return root


def _save(rng: np.random.Generator, cls: int, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    class_image(rng, cls, *_SIDES).save(path, quality=_JPEG_QUALITY)


def _per_split(counts: dict[str, int], *splits: str) -> dict[str, int]:
    return {s: counts[s] for s in splits}


def _write_food101(root: Path, rng: np.random.Generator, counts: dict[str, int]) -> None:
    folder = root / "food-101"
    classes = ["apple_pie", "baby_back_ribs", "baklava"][:NUM_CLASSES]
    lists = {"train": {c: [] for c in classes}, "test": {c: [] for c in classes}}
    number = 1000
    for split, count in _per_split(counts, "train", "test").items():
        for cls, name in enumerate(classes):
            for _ in range(count):
                number += 17
                _save(rng, cls, folder / "images" / name / f"{number}.jpg")
                lists[split][name].append(f"{name}/{number}")
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    for split, entries in lists.items():
        (folder / "meta" / f"{split}.json").write_text(json.dumps(entries))
        (folder / "meta" / f"{split}.txt").write_text("".join(f"{e}\n" for v in entries.values() for e in v))
    (folder / "meta" / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    (folder / "meta" / "labels.txt").write_text("".join(f"{c.replace('_', ' ').capitalize()}\n" for c in classes))


def _cifar_pixels(rng: np.random.Generator, labels: list[int]) -> np.ndarray:
    """(n, 3072) uint8 rows: the 1024 red, then green, then blue values of a 32x32 image."""
    rows = []
    for cls in labels:
        image = np.asarray(class_image(rng, cls, 32, 32).convert("RGB"), dtype=np.uint8)
        rows.append(image.transpose(2, 0, 1).reshape(-1))
    return np.stack(rows)


def _pickle(path: Path, content: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=2)


def _write_cifar10(root: Path, rng: np.random.Generator, counts: dict[str, int]) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    classes = list(range(NUM_CLASSES))
    # five training batches (a fifth of each class's images in each) and the test batch, as in the archive
    per_batch = -(-counts["train"] // 5)
    for batch, count in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", counts["test"])]:
        labels = [c for c in classes for _ in range(count)]
        label = "testing batch 1 of 1" if batch == "test_batch" else f"training batch {batch[-1]} of 5"
        _pickle(folder / batch, {"batch_label": label, "labels": labels, "data": _cifar_pixels(rng, labels),
                                 "filenames": [f"{names[c]}_s_{i:06d}.png" for i, c in enumerate(labels)]})
    _pickle(folder / "batches.meta", {"num_cases_per_batch": NUM_CLASSES, "label_names": names[:NUM_CLASSES],
                                      "num_vis": 3072})


def _write_cifar100(root: Path, rng: np.random.Generator, counts: dict[str, int]) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    fine = ["apple", "aquarium_fish", "baby"][:NUM_CLASSES]
    coarse = ["fruit_and_vegetables", "fish", "people"][:NUM_CLASSES]
    for split, count in (("train", 5 * -(-counts["train"] // 5)), ("test", counts["test"])):  # as CIFAR-10
        labels = [c for c in range(NUM_CLASSES) for _ in range(count)]
        _pickle(folder / split, {"filenames": [f"{fine[c]}_s_{i:06d}.png" for i, c in enumerate(labels)],
                                 "batch_label": f"{split}ing batch 1 of 1", "fine_labels": labels,
                                 "coarse_labels": labels, "data": _cifar_pixels(rng, labels)})
    _pickle(folder / "meta", {"fine_label_names": fine, "coarse_label_names": coarse})


_BIRDSNAP_PARTS = ["back", "beak", "belly", "breast", "crown", "forehead", "left_cheek", "left_eye", "left_leg",
                   "left_wing", "nape", "right_cheek", "right_eye", "right_leg", "right_wing", "tail", "throat"]


def _write_birdsnap(root: Path, rng: np.random.Generator, counts: dict[str, int]) -> None:
    species = [("Acadian Flycatcher", "Empidonax virescens"), ("Acorn Woodpecker", "Melanerpes formicivorus"),
               ("Alder Flycatcher", "Empidonax alnorum")][:NUM_CLASSES]
    dirs = [common.replace(" ", "_") for common, _ in species]
    (root / "species.txt").write_text("id\tcommon\tscientific\tdir\n" + "".join(
        f"{i + 1}\t{common}\t{latin}\t{d}\n" for i, ((common, latin), d) in enumerate(zip(species, dirs))))
    header = ["url", "md5", "path", "species_id", "bb_x1", "bb_y1", "bb_x2", "bb_y2"]
    header += [f"{part}_{axis}" for part in _BIRDSNAP_PARTS for axis in ("x", "y")]
    rows, tests = [], []
    number = 0
    for cls, directory in enumerate(dirs):
        for position in range(counts["train"] + counts["test"] + 1):
            number += 1
            relative = f"{directory}/{number:04d}.jpg"
            # the last image of the first species is listed but was never downloaded (a dead
            # Flickr link, as in every real copy): the reader counts it as missing
            if not (cls == 0 and position == counts["train"] + counts["test"]):
                _save(rng, cls, root / "download" / "images" / relative)
            if counts["train"] <= position < counts["train"] + counts["test"]:
                tests.append(relative)
            coordinates = [str(int(v)) for v in rng.integers(0, 40, 4 + 2 * len(_BIRDSNAP_PARTS))]
            rows.append([f"http://farm1.staticflickr.com/{number}/{number}_x.jpg", f"{number:032x}", relative,
                         str(cls + 1)] + coordinates)
    (root / "images.txt").write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    (root / "test_images.txt").write_text("path\n" + "".join(f"{t}\n" for t in tests))


def _write_sun397(root: Path, rng: np.random.Generator, counts: dict[str, int]) -> None:
    folder = root / "SUN397"
    classes = ["/a/abbey", "/b/bakery/shop", "/c/canyon"][:NUM_CLASSES]  # a nested class as in the real set
    (folder).mkdir(parents=True, exist_ok=True)
    (folder / "ClassName.txt").write_text("".join(f"{c}\n" for c in classes))
    partitions = {"Training_01.txt": [], "Testing_01.txt": []}
    for cls, name in enumerate(classes):
        # one more image than partition 1 uses: the partitions draw from all of a class's images
        for position in range(counts["train"] + counts["test"] + 1):
            relative = f"{name}/sun_{''.join(rng.choice(list('abcdefghijklmnopqrstuvwxyz'), 16))}.jpg"
            _save(rng, cls, folder / relative.lstrip("/"))
            if position < counts["train"]:
                partitions["Training_01.txt"].append(relative)
            elif position < counts["train"] + counts["test"]:
                partitions["Testing_01.txt"].append(relative)
    # Partitions.zip is a separate download; extracted beside SUN397/ it gives Partitions/
    (root / "Partitions").mkdir(exist_ok=True)
    for list_name, entries in partitions.items():
        (root / "Partitions" / list_name).write_text("".join(f"{e}\n" for e in entries))
    (root / "Partitions" / "ClassName.txt").write_text("".join(f"{c}\n" for c in classes))


def _mat_struct_array(records: list[dict]) -> np.ndarray:
    """A 1 x n MATLAB struct array for scipy.io.savemat."""
    fields = list(records[0])
    array = np.zeros((1, len(records)), dtype=[(f, object) for f in fields])
    for i, record in enumerate(records):
        for f in fields:
            array[0, i][f] = record[f]
    return array


def _write_stanford_cars(root: Path, rng: np.random.Generator, counts: dict[str, int]) -> None:
    from scipy.io import savemat

    folder = root / "stanford_cars"
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"][:NUM_CLASSES]
    (folder / "devkit").mkdir(parents=True, exist_ok=True)
    savemat(folder / "devkit" / "cars_meta.mat", {"class_names": np.array([names], dtype=object)})
    for split, annotation_file in (("train", folder / "devkit" / "cars_train_annos.mat"),
                               ("test", folder / "cars_test_annos_withlabels.mat")):
        records = []
        count = counts[split]
        for index, cls in enumerate(c for c in range(NUM_CLASSES) for _ in range(count)):
            fname = f"{index + 1:05d}.jpg"
            _save(rng, cls, folder / f"cars_{split}" / fname)
            box = [int(v) for v in rng.integers(1, 40, 4)]
            records.append({"bbox_x1": np.uint8(box[0]), "bbox_y1": np.uint8(box[1]), "bbox_x2": np.uint8(box[2]),
                            "bbox_y2": np.uint8(box[3]), "class": np.uint8(cls + 1), "fname": fname})
        savemat(annotation_file, {"annotations": _mat_struct_array(records)})


def _write_fgvc_aircraft(root: Path, rng: np.random.Generator, counts: dict[str, int]) -> None:
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "727-200", "A300B4"][:NUM_CLASSES]
    families = ["Boeing 707", "Boeing 727", "A300"][:NUM_CLASSES]
    manufacturers = ["Boeing", "Boeing", "Airbus"][:NUM_CLASSES]
    (data / "images").mkdir(parents=True, exist_ok=True)
    (data / "variants.txt").write_text("".join(f"{v}\n" for v in variants))
    (data / "families.txt").write_text("".join(f"{f}\n" for f in families))
    (data / "manufacturers.txt").write_text("".join(f"{m}\n" for m in dict.fromkeys(manufacturers)))
    number = 1000000
    lists: dict[str, list[tuple[str, int]]] = {}
    for split, count in _per_split(counts, "train", "val", "test").items():
        lists[split] = []
        for cls in range(NUM_CLASSES):
            for _ in range(count):
                number += 37
                _save(rng, cls, data / "images" / f"{number:07d}.jpg")
                lists[split].append((f"{number:07d}", cls))
    lists["trainval"] = lists["train"] + lists["val"]
    for split, entries in lists.items():
        (data / f"images_{split}.txt").write_text("".join(f"{i}\n" for i, _ in entries))
        for level, names in (("variant", variants), ("family", families), ("manufacturer", manufacturers)):
            (data / f"images_{level}_{split}.txt").write_text("".join(f"{i} {names[c]}\n" for i, c in entries))


def _write_voc2007(root: Path, rng: np.random.Generator, counts: dict[str, int]) -> None:
    from benchmark.datasets.synth_voc import synth_voc07

    synth_voc07(root, n_images=6 * counts["train"], seed=int(rng.integers(1 << 31)), min_side=40, max_side=56)


def _write_dtd(root: Path, rng: np.random.Generator, counts: dict[str, int]) -> None:
    folder = root / "dtd"  # the archive's top folder
    classes = ["banded", "blotchy", "braided"][:NUM_CLASSES]
    lists: dict[str, list[str]] = {s: [] for s in ("train", "val", "test")}
    for cls, name in enumerate(classes):
        number = 0
        for split, count in _per_split(counts, "train", "val", "test").items():
            for _ in range(count):
                number += 1
                relative = f"{name}/{name}_{number:04d}.jpg"
                _save(rng, cls, folder / "images" / relative)
                lists[split].append(relative)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    (folder / "imdb").mkdir(exist_ok=True)
    for split, entries in lists.items():
        (folder / "labels" / f"{split}1.txt").write_text("".join(f"{e}\n" for e in entries))
    (folder / "labels" / "labels_joint_anno.txt").write_text(
        "".join(f"{e} {e.split('/')[0]} \n" for entries in lists.values() for e in entries))


def _write_oxford_pets(root: Path, rng: np.random.Generator, counts: dict[str, int]) -> None:
    folder = root / "oxford-iiit-pet"
    # cat breeds are capitalised, dog breeds not: the species column says which (1 cat, 2 dog)
    breeds = [("Abyssinian", 1, 1), ("american_bulldog", 2, 1), ("Bengal", 1, 2)][:NUM_CLASSES]
    lists: dict[str, list[str]] = {"trainval": [], "test": []}
    for cls, (breed, species, breed_id) in enumerate(breeds):
        number = 0
        for split, count in _per_split(counts, "trainval", "test").items():
            for _ in range(count):
                number += 1
                image_id = f"{breed}_{number}"
                _save(rng, cls, folder / "images" / f"{image_id}.jpg")
                lists[split].append(f"{image_id} {cls + 1} {species} {breed_id}")
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    for split, lines in lists.items():
        (folder / "annotations" / f"{split}.txt").write_text("".join(f"{line}\n" for line in lines))
    (folder / "annotations" / "list.txt").write_text(
        "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n#BREED ID: 1-25:Cat 1:12:Dog\n"
        + "".join(f"{line}\n" for lines in lists.values() for line in lines))


def _write_caltech101(root: Path, rng: np.random.Generator, counts: dict[str, int]) -> None:
    categories = root / "caltech101" / "101_ObjectCategories"
    # the background clutter class too, drawn as one more class
    names = ["Faces", "accordion", "airplanes"][:NUM_CLASSES] + ["BACKGROUND_Google"]
    for cls, name in enumerate(names):
        for number in range(1, CALTECH_PER_CLASS + 1 + cls % 2):  # 32 or 33 images: unequal test counts
            _save(rng, cls, categories / name / f"image_{number:04d}.jpg")


def _write_flowers102(root: Path, rng: np.random.Generator, counts: dict[str, int]) -> None:
    from scipy.io import savemat

    folder = root / "flowers-102"
    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    image_id = 0
    for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        for cls in range(NUM_CLASSES):
            for _ in range(counts[split]):
                image_id += 1
                _save(rng, cls, folder / "jpg" / f"image_{image_id:05d}.jpg")
                labels.append(cls + 1)
                ids[key].append(image_id)
    savemat(folder / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    savemat(folder / "setid.mat", {key: np.array([v], dtype=np.uint16) for key, v in ids.items()})


_WRITERS = {
    "food101": _write_food101, "cifar10": _write_cifar10, "cifar100": _write_cifar100,
    "birdsnap": _write_birdsnap, "sun397": _write_sun397, "stanford_cars": _write_stanford_cars,
    "fgvc_aircraft": _write_fgvc_aircraft, "voc2007": _write_voc2007, "dtd": _write_dtd,
    "oxford_pets": _write_oxford_pets, "caltech101": _write_caltech101, "flowers102": _write_flowers102,
}
