"""Generator of small synthetic scene datasets in the official Places205 layout.

Places205 is 2.5M images behind a licence form; tests, demos and smoke runs need something
that exercises the same reader and protocol in seconds.  Each scene class has its own
layout: horizon height and profile (flat, sloped, hills, peaks), a background texture
(stripes, grid, dots, waves, checker, bricks) with a class-specific frequency, orientation
and region (ground, sky or both), and a few class-specific objects (the VOC generator's
shapes and fill patterns) in colours around a class hue.  Sky and ground colours are random
greyish tints, and every image jitters all parameters, so a trained network separates the
scenes far better than a random one while the mean colour alone says little.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.datasets.places import LIST_DIR, PLACES205_NUM_CLASSES
from benchmark.datasets.synth_shapes import CANVAS_MARGIN, SHAPES, paste, pattern_colours, render_sprite
from benchmark.errors import DatasetError

# real Places205 category names (nested ones keep their "/"); beyond them scene_NNN
PLACES205_SCENES: tuple[str, ...] = (
    "abbey", "airport_terminal", "alley", "amphitheater", "amusement_park", "aquarium",
    "aqueduct", "arch", "art_gallery", "art_studio", "assembly_line", "attic", "auditorium",
    "apartment_building/outdoor", "badlands", "ballroom", "bamboo_forest", "banquet_hall", "bar",
    "baseball_field", "basement", "basilica", "bayou", "beauty_salon", "bedroom", "boardwalk",
    "boat_deck", "bookstore", "botanical_garden", "bowling_alley", "boxing_ring", "bridge",
    "building_facade", "bus_interior", "butchers_shop", "butte", "cafeteria", "campsite",
    "candy_store", "canyon",
)  # fmt: skip

_JPEG_QUALITY = 90
_STYLE_SEED = 0x5CE4E  # class styles depend on the class index only, not on `seed`
_SQRT2_FRAC = math.sqrt(2) - 1  # low-discrepancy steps: neighbouring classes differ a lot
_SQRT3_FRAC = math.sqrt(3) - 1
_HORIZON_RANGE = (0.22, 0.78)  # fraction of the image height
_HORIZON_JITTER = 0.05
_FREQ_CHOICES = (3.0, 5.0, 8.0, 12.0)  # texture periods across the short image side
_FREQ_JITTER = 0.12  # relative
_ANGLE_JITTER_DEG = 10.0
_SCALE_JITTER = (0.8, 1.2)
_NOISE_STD = 5.0


def scene_names(num_classes: int) -> list[str]:
    """Scene name of each class: real Places205 names first, then scene_040, scene_041..."""
    return [
        PLACES205_SCENES[c] if c < len(PLACES205_SCENES) else f"scene_{c:03d}"
        for c in range(num_classes)
    ]


def synth_places205(
    out: str | Path,
    num_classes: int = 10,
    train_per_class: int = 30,
    val_per_class: int = 10,
    seed: int = 0,
    min_side: int = 80,
    max_side: int = 128,
) -> Path:
    """Write `out/Places205/` in the official layout and return that root.

    Images go to `images/<first letter>/<scene>/<8 digits>.jpg`, train ones numbered first
    and val ones after them in the same folder; the lists to
    `trainvalsplit_places205/{train,val}_places205.csv`, one `path label` line per image in
    class order.  Output is byte-identical for a given seed.  Existing files with the same
    names are overwritten.
    """
    _check_args(num_classes, train_per_class, val_per_class, min_side, max_side)
    root = Path(out).expanduser() / "Places205"
    (root / LIST_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for cls, name in enumerate(scene_names(num_classes)):
        style = _class_style(cls)
        folder = root / "images" / name[0] / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(train_per_class + val_per_class):
            relative = f"{name[0]}/{name}/{index + 1:08d}.jpg"
            image = _synth_image(rng, style, cls, min_side, max_side)
            image.save(root / "images" / relative, quality=_JPEG_QUALITY)
            split = "train" if index < train_per_class else "val"
            lines[split].append(f"{relative} {cls}\n")
    for split, split_lines in lines.items():
        (root / LIST_DIR / f"{split}_places205.csv").write_text("".join(split_lines))
    return root


def _check_args(
    num_classes: int, train_per_class: int, val_per_class: int, min_side: int, max_side: int
) -> None:
    if not 2 <= num_classes <= PLACES205_NUM_CLASSES:
        raise DatasetError(
            f"num_classes is {num_classes}; expected 2..{PLACES205_NUM_CLASSES} (as in Places205)"
        )
    if train_per_class < 1 or val_per_class < 1:
        raise DatasetError(
            f"train_per_class is {train_per_class} and val_per_class is {val_per_class}; expected "
            "at least 1 each so both lists are non-empty"
        )
    if not 32 <= min_side <= max_side:
        raise DatasetError(
            f"image sides are {min_side}..{max_side}; expected 32 <= min_side <= max_side"
        )


# --- class styles


@dataclass(frozen=True)
class _Style:
    horizon: float  # mean horizon height, fraction of the image height from the top
    profile: int  # index into _PROFILES
    profile_amp: float
    profile_freq: float
    texture: int  # index into _TEXTURES
    region: int  # where the texture is: 0 ground, 1 sky, 2 both
    frequency: float  # texture periods across the short image side
    angle: float  # texture orientation, radians
    contrast: float  # texture strength, fraction of the region colour
    shapes: tuple[int, int]  # indices into the VOC generator's shapes
    n_objects: tuple[int, int]  # inclusive range
    object_scale: float  # object side / short image side
    placement: int  # 0 standing on the horizon, 1 in the sky, 2 on the ground


def _class_style(cls: int) -> _Style:
    """Discrete features cycle with coprime periods so the first classes all differ; the
    continuous ones are spread by low-discrepancy steps plus a class-seeded draw."""
    rng = np.random.default_rng((_STYLE_SEED, cls))
    low, high = _HORIZON_RANGE
    n_shapes = len(SHAPES)
    return _Style(
        horizon=low + (high - low) * ((0.5 + cls * _SQRT2_FRAC) % 1.0),
        profile=cls % len(_PROFILES),
        profile_amp=float(rng.uniform(0.05, 0.12)),
        profile_freq=float(rng.uniform(1.0, 2.5)),
        texture=cls % len(_TEXTURES),
        region=(cls // len(_TEXTURES)) % 3 if cls % 7 else 2,
        frequency=_FREQ_CHOICES[(cls * 3 + cls // 4) % len(_FREQ_CHOICES)],
        angle=math.pi * ((0.1 + cls * _SQRT3_FRAC) % 1.0),
        contrast=float(rng.uniform(0.3, 0.5)),
        shapes=(cls % n_shapes, (cls * 7 + 3 + cls // n_shapes) % n_shapes),
        n_objects=((1, 1), (1, 2), (2, 3))[cls % 3],
        object_scale=float(rng.uniform(0.2, 0.4)),
        placement=(cls + cls // 3) % 3,
    )


# --- horizon profiles: offset (fraction of height, + is down) as a function of x in [0, 1]

_PROFILES: tuple[Callable[[np.ndarray, float, float, float], np.ndarray], ...] = (
    lambda x, amp, freq, phase: np.zeros_like(x),  # flat
    lambda x, amp, freq, phase: 2.5 * amp * (x - 0.5) * math.copysign(1, phase - math.pi),  # slope
    lambda x, amp, freq, phase: amp * np.sin(2 * math.pi * freq * x + phase),  # hills
    lambda x, amp, freq, phase: amp * (4 * np.abs((freq * x + phase / 6.3) % 1 - 0.5) - 1),  # peaks
)


# --- textures of (u, v) in periods: True where the texture colour is used


def _frac(v: np.ndarray) -> np.ndarray:
    return v - np.floor(v)


_TEXTURES: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    lambda u, v: _frac(u) < 0.5,  # stripes
    lambda u, v: (_frac(u) < 0.22) | (_frac(v) < 0.22),  # grid
    lambda u, v: (_frac(u) - 0.5) ** 2 + (_frac(v) - 0.5) ** 2 < 0.07,  # dots
    lambda u, v: _frac(u + 0.3 * np.sin(2 * math.pi * v / 2)) < 0.5,  # waves
    lambda u, v: (_frac(u) < 0.5) ^ (_frac(v) < 0.5),  # checker
    lambda u, v: (_frac(v) < 0.2) | (_frac(u + 0.5 * (_frac(v / 2) < 0.5)) < 0.12),  # bricks
)


# --- image synthesis


def _tint(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """A greyish colour: random grey level with a mild random tint."""
    return (rng.uniform(low, high) + rng.uniform(-22, 22, 3)).astype(np.float32)


def _synth_image(
    rng: np.random.Generator, style: _Style, cls: int, min_side: int, max_side: int
) -> Image.Image:
    width, height = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
    short = min(width, height)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    # sky above a (class-shaped) horizon, ground below; sky usually the lighter one
    sky_top, sky_low, ground = _tint(rng, 130, 225), _tint(rng, 130, 225), _tint(rng, 45, 150)
    horizon_mean = style.horizon + rng.uniform(-_HORIZON_JITTER, _HORIZON_JITTER)
    x_fraction = xx[0] / max(width - 1, 1)
    phase = rng.uniform(0, 2 * math.pi)
    profile = _PROFILES[style.profile](x_fraction, style.profile_amp, style.profile_freq, phase)
    horizon = (horizon_mean + profile) * height  # (width,) in pixels
    is_sky = yy < horizon[None, :]
    t = np.clip(yy / np.maximum(horizon[None, :], 1.0), 0.0, 1.0)[..., None]
    image = np.where(is_sky[..., None], sky_top + t * (sky_low - sky_top), ground)

    # class texture, in the class's region, at the class's frequency and orientation
    freq = style.frequency * (1 + rng.uniform(-_FREQ_JITTER, _FREQ_JITTER)) / short
    angle = style.angle + math.radians(rng.uniform(-_ANGLE_JITTER_DEG, _ANGLE_JITTER_DEG))
    cos, sin = math.cos(angle), math.sin(angle)
    u = freq * (xx * cos + yy * sin) + rng.uniform(0, 1)
    v = freq * (-xx * sin + yy * cos) + rng.uniform(0, 1)
    region = (~is_sky, is_sky, np.ones_like(is_sky))[style.region]
    marked = (_TEXTURES[style.texture](u, v) & region)[..., None]
    lighten = rng.random() < 0.5
    target = 255.0 if lighten else 0.0
    contrast = style.contrast * rng.uniform(0.8, 1.2)
    image = np.where(marked, image + (target - image) * contrast, image)

    # class objects around the class hue, standing on the horizon, in the sky or on the ground
    background = (0.5 * (sky_top + sky_low), ground)
    for _ in range(int(rng.integers(style.n_objects[0], style.n_objects[1] + 1))):
        shape = style.shapes[int(rng.integers(2))]
        scale = style.object_scale * rng.uniform(*_SCALE_JITTER)
        side = max(6, round(scale * short * CANVAS_MARGIN))
        angle = math.radians(rng.uniform(-12, 12))
        sprite = render_sprite(shape, side, angle, *pattern_colours(rng, background, cls))
        left = int(rng.integers(-side // 4, max(width - 3 * side // 4, -side // 4 + 1)))
        column = int(np.clip(left + side // 2, 0, width - 1))
        ground_y = float(horizon[column])
        if style.placement == 0:  # shape spans ~[-1, 1] of the canvas' [-1.2, 1.2]: bottom on it
            centre = ground_y - side / (2 * CANVAS_MARGIN) + rng.uniform(-0.05, 0.05) * short
        elif style.placement == 1:
            centre = rng.uniform(0.1 * height, max(ground_y - 0.3 * side, 0.1 * height + 1))
        else:
            centre = rng.uniform(min(ground_y + 0.3 * side, 0.9 * height - 1), 0.9 * height)
        paste(image, sprite, left, int(round(centre - side / 2)))

    image = image + rng.normal(0, _NOISE_STD, image.shape)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)
