"""Drawing shared by the synthetic dataset generators (VOC07 objects, Places205 scene objects): 20
shapes (one per VOC class), 8 fill patterns, colours around a class hue, and anti-aliased sprites
pasted onto an image. Both generators' outputs depend on these exact numbers: changing one changes
every generated dataset."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Point = tuple[float, float]

SUPERSAMPLE = 2  # subpixels per pixel side, for anti-aliased edges and patterns
CANVAS_MARGIN = 1.2  # local canvas spans [-1.2, 1.2] so rotated corners are not clipped
_GOLDEN = 0.6180339887
_HUE_JITTER = 0.05
_STRIPES_PER_UNIT = 1.75  # pattern frequency in local units (the shape spans ~2 units)


# --- shapes: boolean functions of local coordinates (x right, y down, shape within [-1, 1])


def _polygon(vertices: list[Point]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Even-odd point-in-polygon test, vectorised over the coordinate grid."""

    def inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = np.zeros(x.shape, dtype=bool)
        for (x1, y1), (x2, y2) in zip(vertices, vertices[1:] + vertices[:1]):
            if y1 == y2:
                continue
            crosses = (y1 > y) != (y2 > y)
            x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            result ^= crosses & (x < x_cross)
        return result

    return inside


def _regular(n: int, radius: float, start_deg: float, inner: float | None = None) -> list[Point]:
    """Vertices of a regular polygon, or of a star when `inner` (inner radius) is given."""
    radii = [radius, inner] * n if inner else [radius] * n
    angles = [math.radians(start_deg + 360 * k / len(radii)) for k in range(len(radii))]
    return [(r * math.cos(a), r * math.sin(a)) for r, a in zip(radii, angles)]


def _heart(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    hx, hy = 1.3 * x, 0.15 - 1.3 * y
    return (hx**2 + hy**2 - 1) ** 3 - hx**2 * hy**3 < 0


def _chebyshev(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance whose level sets are axis-aligned squares."""
    return np.maximum(abs(x), abs(y))


_ARROW: list[Point] = [
    (-0.9, -0.22), (0.15, -0.22), (0.15, -0.6), (0.9, 0.0), (0.15, 0.6), (0.15, 0.22), (-0.9, 0.22)
]


def _box(x: np.ndarray, y: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


SHAPES: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    lambda x, y: x**2 + y**2 < 0.85**2,  # aeroplane: circle
    lambda x, y: _chebyshev(x, y) < 0.72,  # bicycle: square
    _polygon([(0.0, -0.9), (0.9, 0.75), (-0.9, 0.75)]),  # bird: triangle
    lambda x, y: abs(x) + abs(y) < 0.95,  # boat: diamond
    _polygon(_regular(5, 0.95, -90, inner=0.4)),  # bottle: 5-point star
    lambda x, y: _box(x, y, -0.28, 0.28, -0.9, 0.9) | _box(x, y, -0.9, 0.9, -0.28, 0.28),  # bus: plus
    lambda x, y: (x**2 + y**2 < 0.9**2) & (x**2 + y**2 > 0.5**2),  # car: ring
    _polygon(_regular(6, 0.9, 0)),  # cat: hexagon
    _polygon(_regular(5, 0.9, -90)),  # chair: pentagon
    lambda x, y: (x / 0.95) ** 2 + (y / 0.5) ** 2 < 1,  # cow: horizontal ellipse
    lambda x, y: (x**2 + y**2 < 0.9**2) & ((x - 0.45) ** 2 + y**2 > 0.7**2),  # diningtable: crescent
    _polygon(_ARROW),  # dog: arrow
    lambda x, y: ((abs(x - y) < 0.38) | (abs(x + y) < 0.38)) & (_chebyshev(x, y) < 0.8),  # horse: X
    lambda x, y: _box(x, y, -0.9, 0.9, -0.9, -0.45) | _box(x, y, -0.22, 0.22, -0.9, 0.9),  # motorbike: T
    lambda x, y: _box(x, y, -0.75, -0.3, -0.9, 0.9) | _box(x, y, -0.75, 0.75, 0.45, 0.9),  # person: L
    lambda x, y: (x**2 + (y + 0.4) ** 2 < 0.95**2) & (y > -0.4),  # pottedplant: half-disc
    lambda x, y: (abs(x) < 0.08 + 0.8 * abs(y)) & (abs(y) < 0.9),  # sheep: hourglass
    lambda x, y: (_chebyshev(x, y) < 0.82) & (_chebyshev(x, y) > 0.52),  # sofa: frame
    _heart,  # train: heart
    _polygon([(-0.45, -0.6), (0.45, -0.6), (0.9, 0.6), (-0.9, 0.6)]),  # tvmonitor: trapezoid
)


# --- fill patterns: True where the secondary colour is used


def _stripe(v: np.ndarray) -> np.ndarray:
    return np.floor(v * _STRIPES_PER_UNIT * 2) % 2 == 1


def _cell(v: np.ndarray) -> np.ndarray:
    """Position within the current pattern period, in [0, 1)."""
    return (v * _STRIPES_PER_UNIT * 2) % 1


_PATTERNS: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    lambda x, y: np.zeros(x.shape, dtype=bool),  # solid
    lambda x, y: _stripe(y),  # horizontal stripes
    lambda x, y: _stripe(x),  # vertical stripes
    lambda x, y: _stripe((x + y) / math.sqrt(2)),  # diagonal stripes
    lambda x, y: _stripe(x) ^ _stripe(y),  # checker
    lambda x, y: (_cell(x) - 0.5) ** 2 + (_cell(y) - 0.5) ** 2 < 0.09,  # dots
    lambda x, y: (_cell(x) < 0.3) | (_cell(y) < 0.3),  # grid
    lambda x, y: _stripe(np.sqrt(x**2 + y**2)),  # concentric rings
)


def _class_pattern(cls: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return _PATTERNS[cls % len(_PATTERNS)]


@dataclass
class Sprite:
    """A rendered object on its own canvas: coverage in [0, 1] and premultiplied colour."""

    alpha: np.ndarray  # (s, s)
    colour: np.ndarray  # (s, s, 3), already multiplied by alpha


def render_sprite(cls: int, side: int, angle: float, colour: np.ndarray, shade: np.ndarray) -> Sprite:
    """Draw class `cls` rotated by `angle`, supersampled so small objects keep their shape."""
    n = side * SUPERSAMPLE
    u = (np.arange(n) + 0.5) / n * 2 * CANVAS_MARGIN - CANVAS_MARGIN
    uu, vv = np.meshgrid(u, u)
    cos, sin = math.cos(angle), math.sin(angle)
    x, y = cos * uu + sin * vv, -sin * uu + cos * vv
    mask = SHAPES[cls](x, y).astype(np.float32)
    secondary = _class_pattern(cls)(x, y)[..., None]
    premultiplied = np.where(secondary, shade, colour) * mask[..., None]
    return Sprite(
        alpha=mask.reshape(side, SUPERSAMPLE, side, SUPERSAMPLE).mean(axis=(1, 3)),
        colour=premultiplied.reshape(side, SUPERSAMPLE, side, SUPERSAMPLE, 3).mean(axis=(1, 3)),
    )


def pattern_colours(
    rng: np.random.Generator, background: tuple[np.ndarray, np.ndarray], cls: int
) -> tuple[np.ndarray, np.ndarray]:
    """Object colour around a class hue (as real categories have colour statistics) with random
    saturation and value, far from the background; and a contrasting shade for the pattern."""
    base_hue = (cls * _GOLDEN) % 1.0  # neighbouring class indices get distant hues
    for _ in range(50):
        hue = (base_hue + rng.uniform(-_HUE_JITTER, _HUE_JITTER)) % 1.0
        fg = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.45, 1.0))) * 255
        if min(np.linalg.norm(fg - b) for b in background) > 110:
            break
    shade = fg * 0.3 if fg.mean() > 110 else fg + (255 - fg) * 0.65
    return fg.astype(np.float32), shade.astype(np.float32)


def paste(image: np.ndarray, sprite: Sprite, left: int, top: int) -> None:
    height, width = image.shape[:2]
    side = sprite.alpha.shape[0]
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(height, top + side), min(width, left + side)
    alpha = sprite.alpha[y0 - top : y1 - top, x0 - left : x1 - left, None]
    colour = sprite.colour[y0 - top : y1 - top, x0 - left : x1 - left]
    image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1 - alpha) + colour
