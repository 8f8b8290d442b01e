"""Generator of a small NYUv2-format dataset of rendered rooms with exact depth and normals.

The real labelled NYU Depth v2 set is 2.8 GB behind a download; tests, demos and smoke runs need
something that exercises the same reader and protocol in seconds, with a ground truth that is
known exactly. Each image is a room seen by the NYU RGB camera (its intrinsics scaled to the
generated frame size) from a random height, pitch, yaw and roll: floor, ceiling, back and side
walls, one to three boxes standing on the floor (rotated about the vertical) and up to two
spheres. Depth is ray-cast per pixel (the camera-frame z of the first hit); normals are the
analytic surface normals in the camera frame (x right, y down, z forward), oriented towards the
camera. Colours are Lambertian shading of per-surface albedos (a checkered floor, striped walls)
under a light from above plus an ambient term, with noise, so the pixels carry information about
surface orientation. A few rectangles per image have no depth (as Kinect shadows do): depth 0 and
invalid normals there.

Files (the formats of benchmark.datasets.nyuv2, MATLAB's transposed layout included):
``NYUv2/nyu_depth_v2_labeled.mat`` (HDF5 with the MATLAB v7.3 512-byte header: ``images``
(N, 3, W, H) uint8, ``depths`` (N, W, H) float32), ``NYUv2/splits.mat`` (MATLAB v5, 1-based
``trainNdxs``/``testNdxs``, 55 % / 45 % as 795 / 654) and ``NYUv2/normals_gt.mat`` (``normals``
(N, 3, W, H) float32, ``masks`` (N, W, H) uint8).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..paths import atomic_output
from .nyuv2 import LABELED_FILE, NORMALS_FILE, NYU_INTRINSICS, SPLITS_FILE, mat73_header

TRAIN_FRACTION = 795 / 1449  # the standard split's proportion
_LIGHT = np.array([0.3, 1.0, -0.45]) / np.linalg.norm([0.3, 1.0, -0.45])  # world, y up; towards the light
_AMBIENT = 0.3
_NOISE_STD = 3.0
_FAR = 1e9


def synth_nyuv2(out: str | Path, n_images: int = 200, seed: int = 0, width: int = 80, height: int = 60) -> Path:
    """Write ``out/NYUv2/`` (see the module docstring) and return that folder. Output is identical
    for a given seed; existing files are replaced atomically."""
    if n_images < 4:
        raise DatasetError(f"n_images is {n_images}; expected at least 4 (both splits need two images)")
    if not (16 <= width <= 640 and 12 <= height <= 480):
        raise DatasetError(f"frame {width} x {height}; expected 16..640 x 12..480 pixels")
    root = Path(out).expanduser() / "NYUv2"
    root.mkdir(parents=True, exist_ok=True)
    camera = NYU_INTRINSICS.scaled(width, height)
    rays = camera.rays()
    images = np.zeros((n_images, 3, width, height), np.uint8)
    depths = np.zeros((n_images, width, height), np.float32)
    normals = np.zeros((n_images, 3, width, height), np.float32)
    masks = np.zeros((n_images, width, height), np.uint8)
    for i in range(n_images):
        image, depth, normal, mask = render_room(np.random.default_rng((seed, i)), rays)
        images[i], depths[i] = image.transpose(2, 1, 0), depth.T
        normals[i], masks[i] = normal.transpose(2, 1, 0), mask.T
    order = np.random.default_rng((seed, 0x5B17)).permutation(n_images)
    n_train = min(max(2, round(TRAIN_FRACTION * n_images)), n_images - 2)
    train, test = np.sort(order[:n_train]) + 1, np.sort(order[n_train:]) + 1
    write_mat73(root / LABELED_FILE, {"images": (images, "uint8"), "depths": (depths, "single")})
    write_mat73(root / NORMALS_FILE, {"normals": (normals, "single"), "masks": (masks, "uint8")})
    _write_splits(root / SPLITS_FILE, train, test)
    return root


def write_mat73(path: Path, datasets: dict[str, tuple[np.ndarray, str]]) -> None:
    """An HDF5 file with MATLAB v7.3's 512-byte user block header and MATLAB_class attributes,
    written to a temporary name and renamed into place. Arrays are given as h5py sees them (MATLAB's
    dimensions reversed)."""
    import h5py

    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w", userblock_size=512) as handle:
            for name, (array, matlab_class) in datasets.items():
                dataset = handle.create_dataset(name, data=array, chunks=(1, *array.shape[1:]))
                dataset.attrs["MATLAB_class"] = np.bytes_(matlab_class)
        with open(tmp, "r+b") as handle:
            handle.write(mat73_header())


def _write_splits(path: Path, train: np.ndarray, test: np.ndarray) -> None:
    import scipy.io

    with atomic_output(path, keep_suffix=True) as tmp:
        scipy.io.savemat(tmp, {"trainNdxs": train.astype(np.float64)[:, None],
                               "testNdxs": test.astype(np.float64)[:, None]})
        with open(tmp, "r+b") as handle:  # the v5 header's 116 bytes of text carry the time: make them fixed
            handle.write(b"MATLAB 5.0 MAT-file, written by ssl-bench data synth nyuv2".ljust(116, b" "))


# --- rendering -------------------------------------------------------------------------------


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation; world: x right, y up, z forward; camera: x right, y down, z forward."""
    flip = np.diag([1.0, -1.0, 1.0])  # camera y points down
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])  # positive pitch looks down
    r_roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return r_yaw @ r_pitch @ r_roll @ flip


class _Hits:
    """Nearest hit so far per ray: distance, world normal and surface id."""

    def __init__(self, shape):
        self.t = np.full(shape, _FAR)
        self.normal = np.zeros((*shape, 3))
        self.surface = np.full(shape, -1)

    def offer(self, t: np.ndarray, normal: np.ndarray, surface: int) -> None:
        closer = (t > 1e-6) & (t < self.t)
        self.t = np.where(closer, t, self.t)
        self.normal = np.where(closer[..., None], np.broadcast_to(normal, self.normal.shape), self.normal)
        self.surface = np.where(closer, surface, self.surface)


def _plane(hits: _Hits, origin, dirs, normal, offset: float, surface: int) -> None:
    """The plane normal . X = offset."""
    normal = np.asarray(normal, dtype=np.float64)
    denominator = dirs @ normal
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (offset - origin @ normal) / denominator
    hits.offer(np.where(np.abs(denominator) > 1e-12, t, -1.0), normal, surface)


def _box(hits: _Hits, origin, dirs, centre, half, angle: float, surface: int) -> None:
    """An oriented box (rotated by ``angle`` about the vertical), slab intersection in its frame."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])  # box to world
    o, d = (origin - centre) @ rot, dirs @ rot
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - o) / d, (half - o) / d
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    near = np.where(np.isnan(near), -np.inf, near)
    far = np.where(np.isnan(far), np.inf, far)
    t_in, axis = near.max(-1), near.argmax(-1)
    hit = (t_in <= far.min(-1)) & (t_in > 1e-6)
    sign = -np.sign(np.take_along_axis(d, axis[..., None], -1)[..., 0])
    local = np.zeros((*t_in.shape, 3))
    np.put_along_axis(local, axis[..., None], sign[..., None], -1)
    hits.offer(np.where(hit, t_in, -1.0), local @ rot.T, surface)


def _sphere(hits: _Hits, origin, dirs, centre, radius: float, surface: int) -> None:
    oc = origin - centre
    a = np.einsum("...i,...i->...", dirs, dirs)
    b = 2 * dirs @ oc
    disc = b * b - 4 * a * (oc @ oc - radius * radius)
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    t = np.where(disc > 0, t, -1.0)
    normal = (origin + t[..., None] * dirs - centre) / radius
    hits.offer(t, normal, surface)


def render_room(rng: np.random.Generator, rays: np.ndarray):
    """One room seen through ``rays`` (H, W, 3, camera frame, z = 1): (H, W, 3) uint8 image,
    (H, W) float32 depth (0 = missing), (H, W, 3) float32 camera-frame normals, (H, W) uint8 mask."""
    height = rng.uniform(1.1, 1.7)
    rotation = _rotation(math.radians(rng.uniform(-30, 30)), math.radians(rng.uniform(5, 30)),
                         math.radians(rng.uniform(-4, 4)))
    origin = np.array([0.0, height, 0.0])
    dirs = rays @ rotation.T
    hits = _Hits(rays.shape[:2])
    # drawn in this order: the scenes of a seed stay the same
    ceiling, back = rng.uniform(2.5, 3.2), rng.uniform(3.5, 7.0)
    left, right = rng.uniform(1.5, 3.5), rng.uniform(1.5, 3.5)
    _plane(hits, origin, dirs, [0, 1, 0], 0.0, 0)  # floor
    _plane(hits, origin, dirs, [0, -1, 0], -ceiling, 1)
    _plane(hits, origin, dirs, [0, 0, -1], -back, 2)
    _plane(hits, origin, dirs, [1, 0, 0], -left, 3)
    _plane(hits, origin, dirs, [-1, 0, 0], -right, 4)
    _plane(hits, origin, dirs, [0, 0, 1], -2.0, 5)  # behind the camera: every ray hits something
    surfaces = 6
    for _ in range(int(rng.integers(1, 4))):
        half = rng.uniform([0.2, 0.2, 0.2], [0.7, 0.6, 0.7])
        centre = np.array([rng.uniform(-left + 0.8, right - 0.8), half[1], rng.uniform(1.5, back - 0.8)])
        _box(hits, origin, dirs, centre, half, rng.uniform(0, math.pi / 2), surfaces)
        surfaces += 1
    for _ in range(int(rng.integers(0, 3))):
        radius = rng.uniform(0.2, 0.5)
        centre = np.array([rng.uniform(-left + 0.6, right - 0.6), radius, rng.uniform(1.5, back - 0.6)])
        _sphere(hits, origin, dirs, centre, radius, surfaces)
        surfaces += 1

    point = origin + hits.t[..., None] * dirs
    albedo = rng.uniform(60, 230, (surfaces, 3))
    colour = albedo[hits.surface]
    floor = hits.surface == 0
    checker = ((np.floor(point[..., 0] / 0.5) + np.floor(point[..., 2] / 0.5)) % 2 == 0)
    colour = np.where((floor & checker)[..., None], colour * 0.55, colour)
    walls = (hits.surface >= 2) & (hits.surface <= 4)
    stripes = np.sin(2 * math.pi * (point[..., 0] + point[..., 2]) / rng.uniform(0.3, 0.8)) > 0.6
    colour = np.where((walls & stripes)[..., None], colour * 0.75, colour)
    shading = _AMBIENT + (1 - _AMBIENT) * np.clip(hits.normal @ _LIGHT, 0, None)
    image = colour * shading[..., None] + rng.normal(0, _NOISE_STD, colour.shape)

    normal_cam = hits.normal @ rotation  # world -> camera (rotation is orthonormal)
    towards = np.einsum("hwc,hwc->hw", normal_cam, rays) > 0
    normal_cam = np.where(towards[..., None], -normal_cam, normal_cam)
    depth = hits.t  # rays have z = 1 in the camera frame, so the distance along them is the depth
    valid = hits.t < _FAR
    h, w = valid.shape
    for _ in range(int(rng.integers(0, 4))):  # depth shadows
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        valid[y0:y0 + int(rng.integers(2, max(3, h // 6))), x0:x0 + int(rng.integers(2, max(3, w // 10)))] = False
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return (pixels, np.where(valid, depth, 0).astype(np.float32),
            np.where(valid[..., None], normal_cam, 0).astype(np.float32), valid.astype(np.uint8))
