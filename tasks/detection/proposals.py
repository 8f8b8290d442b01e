"""Object proposals: Detectron-format files, Selective Search, and the on-disk proposal cache.

File format (Detectron's ``PROPOSAL_FILES``, the reference's Selective Search pickles): a pickled
dict with ``boxes`` (list of (n, 4) float arrays, x1 y1 x2 y2 in pixels of the original image,
Detectron's inclusive-pixel convention: x2 = x1 + width - 1), ``scores`` (list of (n,) arrays)
and ``indexes`` or ``ids`` (the image ids, in the same order). Files are read with an Unpickler
that only reconstructs numpy arrays, dtypes and scalars: a file naming any other class is
refused, so a proposal file cannot run code.

Inside ssl-bench boxes are continuous 0-based coordinates (see ``evaluate``): a file box
(x1, y1, x2, y2) is [x1, y1, x2 + 1, y2 + 1]; ``to_continuous`` / ``to_inclusive`` convert.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
from pathlib import Path

import numpy as np

from benchmark.errors import ConfigError, DatasetError
from benchmark.paths import atomic_write, inside

logger = logging.getLogger(__name__)

# the only globals a proposal pickle may name: numpy array / dtype / scalar reconstruction
# (numpy 1.x pickles say numpy.core, numpy 2.x numpy._core)
_ALLOWED_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"),
       ("_codecs", "encode")}  # protocol-2 pickles written by Python 3 store array bytes through it


class _Refused(pickle.UnpicklingError):
    pass


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise _Refused(f"global '{module}.{name}' is not allowed")


def to_continuous(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, 2:] += 1
    return boxes


def to_inclusive(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, 2:] -= 1
    return boxes


def write_proposals(path: str | Path, ids: list[str], boxes: list[np.ndarray], scores: list[np.ndarray]) -> Path:
    """Write a Detectron-format proposal file (inclusive-pixel boxes) atomically."""
    if not len(ids) == len(boxes) == len(scores):
        raise ValueError(f"{len(ids)} ids, {len(boxes)} box arrays and {len(scores)} score arrays")
    content = {"boxes": [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes],
               "scores": [np.asarray(s, dtype=np.float32).reshape(-1) for s in scores],
               "indexes": [str(i) for i in ids]}
    path = Path(path)
    atomic_write(path, pickle.dumps(content, protocol=4))
    return path


def read_proposals(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{image id: (boxes (n, 4) float32 inclusive pixels, scores (n,) float32)} from a file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"proposal file {path} does not exist (set 'proposals' to a Detectron-format "
                           f".pkl, or to selective_search / rpn to generate them)")
    try:
        with open(path, "rb") as handle:
            content = _ArraysOnly(io.BytesIO(handle.read()), encoding="latin1").load()
    except _Refused as exc:
        raise DatasetError(f"proposal file {path} is refused: {exc}. Proposal files may only hold numpy "
                           f"arrays and plain lists/dicts (Detectron format: boxes, scores, indexes)") from exc
    except Exception as exc:  # truncated or not a pickle at all
        raise DatasetError(f"proposal file {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(content, dict) or "boxes" not in content:
        raise DatasetError(f"proposal file {path} is not in the Detectron format: expected a dict with "
                           f"'boxes', 'scores' and 'indexes' (or 'ids')")
    ids = content.get("indexes", content.get("ids"))
    if ids is None:
        raise DatasetError(f"proposal file {path} has no 'indexes' or 'ids' (the image ids of its boxes)")
    boxes, scores = list(content["boxes"]), content.get("scores")
    scores = list(scores) if scores is not None else [np.zeros(len(b), np.float32) for b in boxes]
    if not len(ids) == len(boxes) == len(scores):
        raise DatasetError(f"proposal file {path}: {len(ids)} ids, {len(boxes)} box arrays, {len(scores)} score arrays")
    out = {}
    for image_id, b, s in zip(ids, boxes, scores):
        b = np.asarray(b, dtype=np.float32)
        if b.size and (b.ndim != 2 or b.shape[1] != 4):
            raise DatasetError(f"proposal file {path}: boxes of image {image_id!r} have shape {b.shape}, "
                               f"expected (n, 4)")
        key = _id_text(image_id)
        out[key] = (b.reshape(-1, 4), np.asarray(s, dtype=np.float32).reshape(-1))
    return out


def _id_text(image_id) -> str:
    """VOC ids are '000005' / '2008_000001'; Detectron files may hold them as ints."""
    if isinstance(image_id, bytes):
        image_id = image_id.decode()
    if isinstance(image_id, (int, np.integer)):
        return f"{int(image_id):06d}"
    return str(image_id)


def proposals_for(table: dict[str, tuple[np.ndarray, np.ndarray]], ids: list[str], source: str):
    """Boxes and scores in the order of ``ids``; an image without an entry is an error."""
    missing = [i for i in ids if i not in table]
    if missing:
        raise DatasetError(f"{source} has no proposals for {len(missing)} image(s), e.g. {missing[:5]}; "
                           f"it must cover every image of the split")
    return [table[i][0] for i in ids], [table[i][1] for i in ids]


def clean_proposals(boxes: np.ndarray, scores: np.ndarray, width: int, height: int, limit: int,
                    min_size: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Detectron's treatment of file proposals: clip to the image, drop duplicates and boxes
    smaller than ``min_size`` pixels, keep the first ``limit`` (file order, best first).
    Input and output in inclusive pixels."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width - 1)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height - 1)
    # Detectron's unique_boxes: boxes equal after rounding to whole pixels are duplicates
    _, first = np.unique(np.round(boxes.astype(np.float64)) @ np.array([1, 1e3, 1e6, 1e9]), return_index=True)
    keep = np.sort(first)
    boxes, scores = boxes[keep], scores[keep]
    keep = ((boxes[:, 2] - boxes[:, 0] + 1) >= min_size) & ((boxes[:, 3] - boxes[:, 1] + 1) >= min_size)
    boxes, scores = boxes[keep], scores[keep]
    return boxes[:limit], scores[:limit]


# --- generators and the cache --------------------------------------------------------------------


def selective_search_available() -> bool:
    try:
        import cv2

        return hasattr(cv2, "ximgproc") and hasattr(cv2.ximgproc, "segmentation")
    except ImportError:
        return False


SS_INSTALL = ("Selective Search needs opencv-contrib: pip install 'ssl-bench[selective-search]' "
              "(opencv-contrib-python-headless)")


def selective_search(path: Path, mode: str = "fast", max_proposals: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Selective Search (Uijlings et al.) of one image with opencv-contrib: inclusive-pixel boxes
    in the algorithm's order (hierarchical grouping, best first) and scores decreasing with rank."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"image {path} cannot be read by OpenCV; replace or re-extract it")
    cv2.setNumThreads(1)
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(image)
    if mode == "fast":
        search.switchToSelectiveSearchFast()
    elif mode == "quality":
        search.switchToSelectiveSearchQuality()
    else:
        raise ConfigError(f"selective_search_mode must be 'fast' or 'quality', got {mode!r}")
    rects = np.asarray(search.process(), dtype=np.float32).reshape(-1, 4)[:max_proposals]
    boxes = np.stack([rects[:, 0], rects[:, 1], rects[:, 0] + rects[:, 2] - 1, rects[:, 1] + rects[:, 3] - 1], 1)
    scores = 1.0 - np.arange(len(boxes), dtype=np.float32) / max(len(boxes), 1)
    return boxes, scores


def cache_path(cache_root: Path, identity: dict) -> Path:
    """Where generated proposals of one (dataset split, generator, settings[, weights]) live."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return inside(cache_root, "proposals", f"{identity.get('generator', 'proposals')}-{digest}.pkl")


def cached_proposals(path: Path, ids: list[str], generate) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read ``path`` when it exists; otherwise ``generate()`` -> (boxes, scores) lists, written
    atomically with its identity next to it, so a second run (or another task) reuses them."""
    content = None
    if path.exists():
        try:
            content = read_proposals(path)
        except DatasetError as exc:  # a damaged cache file: generated again and replaced
            logger.warning(f"ssl-bench: warning: {exc}; generating the proposals again")
    if content is None:
        boxes, scores = generate()
        write_proposals(path, ids, boxes, scores)
        content = read_proposals(path)
    return proposals_for(content, ids, f"proposal cache {path}")
