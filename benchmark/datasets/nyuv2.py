"""Reader for the labelled NYU Depth v2 set with the standard 795 / 654 split and surface normals.

Files, in one folder (``data_root/NYUv2`` by default):

- ``nyu_depth_v2_labeled.mat`` (http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/
  nyu_depth_v2_labeled.mat, 2.8 GB): MATLAB v7.3, i.e. HDF5. MATLAB stores arrays column-major, so
  h5py sees every dimension reversed: ``images`` (N, 3, W, H) uint8 and ``depths`` (N, W, H)
  float (metres, 0 = missing). Pixel (row r, column c) of image i is ``images[i, :, c, r]``.
  Read lazily with h5py, one image at a time.
- ``splits.mat`` (MATLAB v5, read with scipy.io.loadmat): ``trainNdxs`` (795) and ``testNdxs``
  (654), 1-based indices into the N images.
- ground-truth normals, one of
  ``normals: file`` -> ``normals_gt.mat`` (name configurable), HDF5 / MATLAB v7.3 with dataset
  ``normals`` of shape (N, 3, W, H) (MATLAB layout, like ``images``) or (N, H, W, 3) (C layout, as
  written by numpy), float unit vectors in the camera frame of ``normals_from_depth`` (x right, y
  down, z forward, pointing towards the camera; a consistent other frame works too: the metrics
  only compare directions), and optionally ``masks`` (N, W, H) or (N, H, W), non-zero where the
  normal is valid. Pixels whose normal is zero or not finite are invalid too (Ladicky et al.'s
  ground truth marks them so). Convert other distributions (e.g. per-image PNGs) to this layout.
  ``normals: depth`` -> computed from ``depths`` with ``normals_from_depth``.

The camera intrinsics are those of the RGB camera in the NYU Depth v2 toolbox
(``camera_params.m``: fx_rgb 518.857901, fy_rgb 519.469611, cx_rgb 325.582449, cy_rgb
253.736166, for 640 x 480 frames; the labelled depths are registered to that camera). Frames of
another size (the generated data) use them scaled to that size (pixel-centre convention).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .listed import inside_dataset
from ..paths import atomic_output

LABELED_FILE = "nyu_depth_v2_labeled.mat"
SPLITS_FILE = "splits.mat"
NORMALS_FILE = "normals_gt.mat"
NORMALS_SOURCES = ("file", "depth")
SPLITS = ("train", "test")
SPLIT_KEYS = {"train": "trainNdxs", "test": "testNdxs"}
MATLAB_73_HEADER = b"MATLAB 7.3 MAT-file"


# the reader's own normals files (write_normals_from_depth) and the generator's carry the same
# header, so it lives with the format
def mat73_header() -> bytes:
    """The 512-byte user block MATLAB writes in front of a v7.3 file's HDF5 data: 116 bytes of
    text, 8 bytes of subsystem offset, version 0x0200, endian indicator 'IM'. A fixed date keeps
    generated files byte-identical."""
    text = MATLAB_73_HEADER + b", Platform: GLNXA64, Created on: " + \
        time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(0)).encode() + b" HDF5 schema 1.00 ."
    return (text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM").ljust(512, b"\x00")


_DOWNLOAD = (f"download {LABELED_FILE} from http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/{LABELED_FILE} "
             f"and the standard split {SPLITS_FILE} (trainNdxs/testNdxs, e.g. from "
             f"http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat), or generate a small dataset "
             f"in the same formats with: ssl-bench data synth nyuv2 --out DIR")


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics for frames of ``width`` x ``height`` pixels (0-based pixel centres)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def scaled(self, width: int, height: int) -> "Intrinsics":
        """The same camera for a frame resampled to ``width`` x ``height``."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
                          width, height)

    def rays(self) -> np.ndarray:
        """(H, W, 3) float64 ray of each pixel, z = 1."""
        v, u = np.mgrid[0:self.height, 0:self.width].astype(np.float64)
        return np.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy, np.ones_like(u)], axis=-1)


NYU_INTRINSICS = Intrinsics(fx=518.857901, fy=519.469611, cx=325.582449, cy=253.736166, width=640, height=480)


def _box_sum(x: np.ndarray, radius: int) -> np.ndarray:
    """Sum over the (2r+1)^2 window around each pixel (zero outside), via an integral image."""
    padded = np.pad(x, [(radius + 1, radius)] * 2 + [(0, 0)] * (x.ndim - 2))
    integral = padded.cumsum(0).cumsum(1)
    w = 2 * radius + 1
    return integral[w:, w:] - integral[:-w, w:] - integral[w:, :-w] + integral[:-w, :-w]


def normals_from_depth(depth: np.ndarray, intrinsics: Intrinsics, window: int = 5,
                       min_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Surface normals of a depth map (metres, 0 or non-finite = missing) by local plane fits.

    Every valid pixel is back-projected to P = depth * ((u - cx) / fx, (v - cy) / fy, 1). At each
    pixel a plane is fitted by least squares (total least squares: PCA) to the valid points of the
    ``window`` x ``window`` neighbourhood; the normal is the eigenvector of the points' covariance
    with the smallest eigenvalue, oriented towards the camera (n . P < 0). A pixel is invalid when
    its own depth is missing, fewer than ``min_fraction`` of its window is valid, or the window's
    points are collinear. Exact for planes (tests: a tilted plane under the NYU intrinsics);
    windows that straddle a depth discontinuity mix the two surfaces.

    Returns (H, W, 3) float32 unit normals (0 where invalid) and the (H, W) bool mask.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.shape != (intrinsics.height, intrinsics.width):  # a resampled frame: the same camera, scaled
        intrinsics = intrinsics.scaled(depth.shape[1], depth.shape[0])
    if window < 3 or window % 2 == 0:
        raise ValueError(f"window must be an odd number >= 3, got {window}")
    valid = np.isfinite(depth) & (depth > 0)
    points = np.where(valid[..., None], intrinsics.rays() * np.where(valid, depth, 0.0)[..., None], 0.0)
    radius = window // 2
    count = _box_sum(valid.astype(np.float64), radius)
    mean = _box_sum(points, radius) / np.maximum(count, 1)[..., None]
    outer = points[..., :, None] * points[..., None, :]
    second = (_box_sum(outer.reshape(*outer.shape[:2], 9), radius).reshape(outer.shape)
              / np.maximum(count, 1)[..., None, None])
    covariance = second - mean[..., :, None] * mean[..., None, :]
    values, vectors = np.linalg.eigh(covariance)
    normals = vectors[..., :, 0]
    towards = np.einsum("hwc,hwc->hw", normals, points) > 0
    normals = np.where(towards[..., None], -normals, normals)
    spread = values[..., 2]
    mask = (valid & (count >= max(3, min_fraction * window * window))
            & (values[..., 1] > 1e-12 * np.maximum(spread, 1e-300)))
    return np.where(mask[..., None], normals, 0.0).astype(np.float32), mask


# --- files ----------------------------------------------------------------------------------


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"NYUv2 {what} {path} does not exist; {_DOWNLOAD}")
    return path


def _open_hdf5(path: Path, what: str):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"NYUv2 {what} {path} is not a MATLAB v7.3 (HDF5) file h5py can read ({exc}); "
                           f"re-download it, or save it in MATLAB with save(..., '-v7.3')") from exc


def read_split_indices(path: Path) -> dict[str, np.ndarray]:
    """{'train': ..., 'test': ...} 0-based int64 indices from splits.mat (1-based in the file)."""
    import scipy.io

    _require(path, "split file")
    try:
        data = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several types for a bad or v7.3 file
        raise DatasetError(f"NYUv2 split file {path} cannot be read with scipy.io.loadmat ({exc}); expected a "
                           f"MATLAB v5 .mat with trainNdxs and testNdxs") from exc
    out = {}
    for split, key in SPLIT_KEYS.items():
        if key not in data:
            raise DatasetError(f"NYUv2 split file {path} has no variable '{key}' (it has "
                               f"{sorted(k for k in data if not k.startswith('__'))}); expected trainNdxs and testNdxs")
        values = np.asarray(data[key]).ravel()
        if values.size == 0 or not np.all(values == np.round(values)) or values.min() < 1:
            raise DatasetError(f"NYUv2 split file {path}: {key} must hold 1-based image indices (integers >= 1)")
        out[split] = values.astype(np.int64) - 1
    return out


@dataclass
class _Handles:
    """h5py files opened lazily, once per process (h5py handles do not survive a fork)."""

    paths: dict[str, Path]
    pid: int = -1
    files: dict = field(default_factory=dict)

    def get(self, name: str):
        if self.pid != os.getpid():
            self.files, self.pid = {}, os.getpid()
        if name not in self.files:
            self.files[name] = _open_hdf5(self.paths[name], name)
        return self.files[name]

    def __getstate__(self):
        return {"paths": self.paths, "pid": -1, "files": {}}


@dataclass
class NYUv2Split:
    """One split: item ``j`` is image ``indices[j]`` (0-based) of the labelled file."""

    root: Path
    split: str
    indices: np.ndarray
    num_images: int
    height: int
    width: int
    normals_source: str
    normals_layout: str  # "matlab" (N, 3, W, H) | "c" (N, H, W, 3) | "" (from depth)
    depth_window: int
    files: dict[str, Path]
    _handles: _Handles = None  # type: ignore[assignment]

    def __post_init__(self):
        self._handles = _Handles(dict(self.files))

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def intrinsics(self) -> Intrinsics:
        return NYU_INTRINSICS.scaled(self.width, self.height)

    def image(self, j: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        return np.ascontiguousarray(self._handles.get("labeled")["images"][int(self.indices[j])].transpose(2, 1, 0))

    def depth(self, j: int) -> np.ndarray:
        """(H, W) float32 metres, 0 = missing."""
        return np.ascontiguousarray(self._handles.get("labeled")["depths"][int(self.indices[j])].T).astype(np.float32)

    def normals(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) float32 unit normals and the (H, W) bool validity mask."""
        if self.normals_source == "depth":
            return normals_from_depth(self.depth(j), self.intrinsics, self.depth_window)
        handle = self._handles.get("normals")
        index = int(self.indices[j])
        normals = handle["normals"][index]
        normals = normals.transpose(2, 1, 0) if self.normals_layout == "matlab" else normals
        normals = np.ascontiguousarray(normals, dtype=np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            length = np.linalg.norm(normals, axis=-1)
        mask = np.isfinite(length) & (length > 0)
        if "masks" in handle:
            given = handle["masks"][index]
            mask &= np.asarray(given.T if self.normals_layout == "matlab" else given) != 0
        normals = np.where(mask[..., None], normals / np.where(mask, length, 1.0)[..., None], 0.0)
        return normals.astype(np.float32), mask

    def fingerprint(self) -> str:
        """Identity of the split's data: file sizes, indices, shapes, the normals source, and the
        bytes of up to 8 evenly spaced images' normals and pixels (generated datasets of another
        seed have the same file sizes)."""
        digest = hashlib.sha256(f"{self.split} {self.normals_source} {self.depth_window} "
                                f"{self.num_images} {self.height}x{self.width}\n".encode())
        for name in sorted(self.files):
            digest.update(f"{name} {self.files[name].stat().st_size}\n".encode())
        digest.update(self.indices.astype(np.int64).tobytes())
        for j in np.unique(np.linspace(0, len(self) - 1, min(8, len(self))).round().astype(int)):
            normals, mask = self.normals(int(j))
            digest.update(normals.tobytes())
            digest.update(mask.tobytes())
            digest.update(self.image(int(j)).tobytes())
        return digest.hexdigest()


def load_nyuv2(root: str | Path, split: str, *, normals: str = "file", normals_file: str = NORMALS_FILE,
               labeled_file: str = LABELED_FILE, splits_file: str = SPLITS_FILE, depth_window: int = 5) -> NYUv2Split:
    """Split ``train`` or ``test`` of NYUv2 in ``root`` (see the module docstring), checked: files
    present and readable, shapes consistent, indices in range. No image is read."""
    if split not in SPLITS:
        raise DatasetError(f"unknown NYUv2 split {split!r}; expected one of {', '.join(SPLITS)}")
    if normals not in NORMALS_SOURCES:
        raise DatasetError(f"unknown NYUv2 normals source {normals!r}; expected one of {', '.join(NORMALS_SOURCES)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"NYUv2 folder {root} does not exist; it should hold {LABELED_FILE}, {SPLITS_FILE} "
                           f"and {normals_file}; {_DOWNLOAD}")
    # the file options name files of the folder (a symlink to a big .mat kept elsewhere is fine)
    labeled_path, splits_path, normals_path = (inside_dataset(root, name, f"NYUv2 option {key}", follow_symlinks=True)
                                               for key, name in (("labeled_file", labeled_file),
                                                                 ("splits_file", splits_file),
                                                                 ("normals_file", normals_file)))
    files = {"labeled": _require(labeled_path, "labelled dataset")}
    indices = read_split_indices(splits_path)
    with _open_hdf5(files["labeled"], "labelled dataset") as handle:
        for key in ("images", "depths"):
            if key not in handle:
                raise DatasetError(f"NYUv2 labelled dataset {files['labeled']} has no '{key}' dataset (it has "
                                   f"{sorted(handle)}); expected the official {LABELED_FILE}")
        shape = handle["images"].shape
        if len(shape) != 4 or shape[1] != 3:
            raise DatasetError(f"NYUv2 {files['labeled']}: 'images' has shape {shape}; expected (N, 3, W, H) "
                               f"as MATLAB v7.3 stores an H x W x 3 x N array")
        num, width, height = shape[0], shape[2], shape[3]
        if handle["depths"].shape != (num, width, height):
            raise DatasetError(f"NYUv2 {files['labeled']}: 'depths' has shape {handle['depths'].shape}; expected "
                               f"{(num, width, height)} to match 'images' {shape}")
    for name, idx in indices.items():
        if idx.max() >= num:
            raise DatasetError(f"NYUv2 split file {root / splits_file}: {SPLIT_KEYS[name]} refers to image "
                               f"{idx.max() + 1} but {files['labeled']} holds {num} images")
    layout = ""
    if normals == "file":
        path = normals_path
        if not path.is_file():
            raise DatasetError(
                f"NYUv2 ground-truth normals {path} do not exist; provide them as HDF5/MATLAB v7.3 with "
                f"'normals' (N, 3, W, H) or (N, H, W, 3) and optionally 'masks' (see benchmark/datasets/nyuv2.py), "
                f"e.g. converted from Ladicky et al.'s ground truth, or set the task option normals: depth to "
                f"compute them from the depth maps")
        files["normals"] = path
        layout = _normals_layout(path, num, width, height)
    return NYUv2Split(root, split, indices[split], num, height, width, normals, layout, depth_window, files)


def _normals_layout(path: Path, num: int, width: int, height: int) -> str:
    with _open_hdf5(path, "normals file") as handle:
        if "normals" not in handle:
            raise DatasetError(f"NYUv2 normals file {path} has no 'normals' dataset (it has {sorted(handle)})")
        shape = handle["normals"].shape
        if shape == (num, 3, width, height):
            layout, mask_shape = "matlab", (num, width, height)
        elif shape == (num, height, width, 3):
            layout, mask_shape = "c", (num, height, width)
        else:
            raise DatasetError(f"NYUv2 normals file {path}: 'normals' has shape {shape}; expected "
                               f"{(num, 3, width, height)} (MATLAB layout) or {(num, height, width, 3)} (C layout) "
                               f"for the {num} images of {width} x {height} pixels in the labelled dataset")
        if "masks" in handle and handle["masks"].shape != mask_shape:
            raise DatasetError(f"NYUv2 normals file {path}: 'masks' has shape {handle['masks'].shape}; expected "
                               f"{mask_shape} to match 'normals' {shape}")
    return layout


def write_normals_from_depth(root: str | Path, out_name: str = NORMALS_FILE, *, labeled_file: str = LABELED_FILE,
                             depth_window: int = 5) -> Path:
    """Compute ``normals_from_depth`` for every image of the labelled file once and write them as a
    normals file (MATLAB layout ``normals`` (N, 3, W, H) float32, ``masks`` (N, W, H) uint8, with
    the MATLAB v7.3 header), so training reads them instead of recomputing them (about 0.9 s per
    640 x 480 frame) in every DataLoader item. One image at a time; atomic (temporary file + rename)."""
    import h5py

    root = Path(root).expanduser()
    source = _require(inside_dataset(root, labeled_file, "NYUv2 option labeled_file", follow_symlinks=True),
                      "labelled dataset")
    out = inside_dataset(root, out_name, "NYUv2 normals file to write", follow_symlinks=True)
    with atomic_output(out) as tmp:
        with _open_hdf5(source, "labelled dataset") as labeled, h5py.File(tmp, "w", userblock_size=512) as handle:
            depths = labeled["depths"]
            num, width, height = depths.shape
            camera = NYU_INTRINSICS.scaled(width, height)
            normals = handle.create_dataset("normals", (num, 3, width, height), np.float32,
                                            chunks=(1, 3, width, height))
            masks = handle.create_dataset("masks", (num, width, height), np.uint8, chunks=(1, width, height))
            normals.attrs["MATLAB_class"], masks.attrs["MATLAB_class"] = np.bytes_("single"), np.bytes_("uint8")
            for i in range(num):
                n, m = normals_from_depth(depths[i].T, camera, depth_window)
                normals[i], masks[i] = n.transpose(2, 1, 0), m.T
        with open(tmp, "r+b") as handle:
            handle.write(mat73_header())
    return out
