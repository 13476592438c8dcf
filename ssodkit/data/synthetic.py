"""Procedural COCO data sets of coloured shapes, for tests, demos and quick experiments.

Two kinds share one generator (image sizes, object counts, size buckets, clutter, occlusion,
splits) and differ only in what an object of a class looks like:

- `shapes`: what makes semi-supervised detection interesting on real data — long-tailed
  classes, objects in all three COCO size buckets, cluttered backgrounds, occlusion, colour
  that helps but does not decide the class — and learnable by a small detector trained from
  scratch in a few hundred iterations (crisp shapes, decent contrast).
- `fine`: fine-grained classes — every object is the same disc, of the same size and hue
  distributions, and the classes differ only by the holes punched in it (one dot, two dots,
  a bar, …, all of the same total area), so that a teacher finds the objects long before it
  names them: its dominant error is the wrong class on a real object.

Everything is drawn from seeded NumPy generators, one per image, so the same seed gives
identical pixels and JSON, and byte-identical PNGs with the same Pillow/zlib build.
"""

from __future__ import annotations

import colorsys
import math
import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from rich.console import Console
from rich.progress import Progress

from ssodkit.errors import DataError, unknown_name
from ssodkit.io import write_json_atomic

VERSION = 1
SPLITS = ("train", "val", "unlabeled")
# name, share of objects (long tail: 35% … 3%), preferred hue in degrees
CLASSES = (
    ("circle", 0.35, 0),
    ("square", 0.22, 220),
    ("triangle", 0.15, 120),
    ("star", 0.11, 55),
    ("cross", 0.08, 300),
    ("ring", 0.06, 180),
    ("hexagon", 0.03, 30),
)
# COCO buckets by object area (pixels): share of objects and the range areas are drawn from
# (log-uniform), kept clear of the 32² and 96² borders so rasterisation stays in the bucket.
SIZE_BUCKETS = (
    ("small", 0.35, (14**2, 29**2)),
    ("medium", 0.40, (36**2, 90**2)),
    ("large", 0.25, (102**2, 140**2)),
)
IMAGE_SIDE = (256, 320)
OBJECTS_PER_IMAGE = (1, 6)
MAX_HIDDEN = 0.5  # reject a placement that would hide more of an earlier object
PLACEMENT_TRIES = 30
ROTATION_DEG = 15.0
DEFAULT_SIZES = (1000, 200, 1000)  # train, val, unlabeled
PNG_COMPRESS_LEVEL = 3  # speed/size balance; compression does not affect pixels
# fine: the holes of every class cover this share of the disc, so outline and net area match
FINE_HOLE_SHARE = 0.15
FINE_CLASSES = tuple(
    (name, share, None)  # no preferred hue: every class draws its hue uniformly
    for name, (_, share, _) in zip(
        ("dot", "two_dots", "bar", "three_dots", "two_bars", "four_dots", "plus"), CLASSES, strict=True
    )
)


@dataclass(frozen=True)
class SyntheticPaths:
    """Layout of a generated data set: `images/<split>/*.png`, `annotations/<split>.json`."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def train(self) -> Path:
        return self.root / "annotations" / "train.json"

    @property
    def val(self) -> Path:
        return self.root / "annotations" / "val.json"

    @property
    def unlabeled(self) -> Path:
        """Unlabeled pool; its annotations are hidden ground truth for diagnostics."""
        return self.root / "annotations" / "unlabeled.json"

    def exists(self) -> bool:
        return all(p.is_file() for p in (self.train, self.val, self.unlabeled))


@dataclass(frozen=True)
class _Object:
    cls: int
    area: float


# --------------------------------------------------------------------------- shapes
def _circle(n: int = 48, radius: float = 1.0) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _regular(n: int, phase_deg: float) -> np.ndarray:
    t = np.deg2rad(phase_deg + np.arange(n) * 360.0 / n)
    return np.stack([np.cos(t), -np.sin(t)], axis=1)


def _star() -> np.ndarray:
    t = np.deg2rad(90 + np.arange(10) * 36.0)
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return np.stack([r * np.cos(t), -r * np.sin(t)], axis=1)


def _cross(arm: float = 0.36) -> np.ndarray:
    a = arm / 2
    xs = [-a, a, a, 1, 1, a, a, -a, -a, -1, -1, -a]
    ys = [-1, -1, -a, -a, a, a, 1, 1, a, a, -a, -a]
    return np.array([xs, ys], dtype=float).T


def _unit_shape(cls: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Rings of the class's outline around the origin; rings after the first are holes."""
    name = CLASSES[cls][0]
    aspect = rng.uniform(0.85, 1.18)
    stretch = np.array([aspect, 1 / aspect])
    if name == "circle":
        return [_circle() * stretch]
    if name == "square":
        return [np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=float) * stretch]
    if name == "triangle":
        return [_regular(3, 90)]
    if name == "star":
        return [_star()]
    if name == "cross":
        return [_cross()]
    if name == "ring":
        return [_circle(), _circle(radius=0.55)[::-1]]
    return [_regular(6, 0)]  # hexagon


def _dots(n: int, hole_area: float) -> list[np.ndarray]:
    """n round holes of `hole_area` in all, one in the centre or n around it."""
    radius = math.sqrt(hole_area / n / _polygon_area(_circle()))
    if n == 1:
        return [_circle(radius=radius)]
    t = np.deg2rad(45 * (n == 4) + np.arange(n) * 360.0 / n)
    return [_circle(radius=radius) + 0.42 * np.array([np.cos(t[k]), -np.sin(t[k])]) for k in range(n)]


def _bars(n: int, hole_area: float, length: float = 1.2) -> list[np.ndarray]:
    """n horizontal slots of `hole_area` in all, stacked with a gap of one slot's height."""
    height = hole_area / n / length
    x, y = length / 2, height / 2
    rect = np.array([(-x, -y), (x, -y), (x, y), (-x, y)])
    return [rect + (0.0, 2 * height * (k - (n - 1) / 2)) for k in range(n)]


def _plus(hole_area: float) -> list[np.ndarray]:
    """A plus-shaped hole of `hole_area`, arms reaching 0.5 from the centre."""
    thickness = 1 - math.sqrt(1 - hole_area)  # arms of length 1: area 2t − t²
    return [_cross(arm=2 * thickness) * 0.5]


def _fine_shape(cls: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A disc with the class's holes, their total area the same for every class: the outline,
    its size for a given object area, and the hue are the same for all classes."""
    aspect = rng.uniform(0.85, 1.18)
    stretch = np.array([aspect, 1 / aspect])
    hole_area = FINE_HOLE_SHARE * _polygon_area(_circle())
    name = FINE_CLASSES[cls][0]
    holes = {
        "dot": lambda: _dots(1, hole_area),
        "two_dots": lambda: _dots(2, hole_area),
        "three_dots": lambda: _dots(3, hole_area),
        "four_dots": lambda: _dots(4, hole_area),
        "bar": lambda: _bars(1, hole_area),
        "two_bars": lambda: _bars(2, hole_area),
        "plus": lambda: _plus(hole_area),
    }[name]()
    return [ring * stretch for ring in (_circle(), *holes)]


@dataclass(frozen=True)
class SyntheticKind:
    """One kind of synthetic data: its classes and how an object of a class looks.

    `classes` are (name, share of objects, preferred hue in degrees or None for any hue);
    `rings(cls, rng)` gives the object's outline around the origin, then its holes."""

    name: str
    classes: tuple[tuple[str, float, float | None], ...]
    rings: Callable[[int, np.random.Generator], list[np.ndarray]]
    supercategory: str
    cache_prefix: str  # the cached default-size set is <cache>/<prefix>-v<VERSION>-seed<seed>


SHAPES = SyntheticKind("shapes", CLASSES, _unit_shape, "shape", "synthetic")
FINE = SyntheticKind("fine", FINE_CLASSES, _fine_shape, "disc", "synthetic-fine")
KINDS = {k.name: k for k in (SHAPES, FINE)}


def synthetic_kind(name: str | SyntheticKind) -> SyntheticKind:
    """The kind of that name (`shapes` or `fine`)."""
    if isinstance(name, SyntheticKind):
        return name
    if name not in KINDS:
        raise unknown_name("synthetic data kind", name, KINDS)
    return KINDS[name]


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _shape(
    kind: SyntheticKind, obj: _Object, rng: np.random.Generator, width: int, height: int
) -> list[np.ndarray]:
    """The object's rings, rotated a little and scaled to its area (shrunk if it cannot fit)."""
    rings = kind.rings(obj.cls, rng)
    theta = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    rings = [r @ rot.T for r in rings]
    unit_area = _polygon_area(rings[0]) - sum(_polygon_area(r) for r in rings[1:])
    scale = math.sqrt(obj.area / unit_area)
    pts = np.concatenate(rings)
    extent = pts.max(axis=0) - pts.min(axis=0)
    scale = min(scale, 0.98 * (width - 2) / extent[0], 0.98 * (height - 2) / extent[1])
    return [r * scale for r in rings]


# --------------------------------------------------------------------------- drawing
def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h_deg % 360) / 360, s, v)) * 255


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Dim, desaturated gradient with blotchy texture: both live on a coarse grid that one
    bilinear resize turns into pixels (cheap, and smooth enough for small PNGs)."""
    c0, c1 = (
        _hsv(rng.uniform(0, 360), rng.uniform(0, 0.35), rng.uniform(0.15, 0.5)) for _ in range(2)
    )
    angle = rng.uniform(0, 2 * np.pi)
    cell = int(rng.integers(12, 33))
    rows, cols = height // cell + 2, width // cell + 2
    ramp = np.arange(cols)[None, :] * np.cos(angle) + np.arange(rows)[:, None] * np.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    coarse = (
        c0 + ramp[..., None] * (c1 - c0) + rng.uniform(6, 16) * rng.normal(size=(rows, cols, 3))
    )
    img = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return ImageOps.posterize(img, 6)  # coarse levels keep the PNGs small


def _clutter(img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """Lines and irregular blobs: structure that is not any class, in muted colours."""
    width, height = img.size
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        colour = tuple(
            int(c) for c in _hsv(rng.uniform(0, 360), rng.uniform(0, 0.3), rng.uniform(0.2, 0.7))
        )
        if rng.random() < 0.5:
            pts = rng.uniform([0, 0], [width, height], size=(int(rng.integers(2, 5)), 2))
            draw.line([tuple(p) for p in pts], fill=colour, width=int(rng.integers(1, 5)))
        else:
            n = int(rng.integers(7, 13))
            t = np.sort(rng.uniform(0, 2 * np.pi, n))
            r = rng.uniform(8, 40) * rng.uniform(0.35, 1.0, n)
            centre = rng.uniform([0, 0], [width, height])
            pts = centre + np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
            draw.polygon([tuple(p) for p in pts], fill=colour)
    return np.array(img)


def _object_colour(kind: SyntheticKind, cls: int, rng: np.random.Generator) -> np.ndarray:
    """Bright and saturated; the class's hue most of the time, any hue otherwise (always
    any hue for a class without a preferred one)."""
    preferred = kind.classes[cls][2]
    if preferred is None:
        hue = rng.uniform(0, 360)
    else:
        hue = preferred + rng.normal(0, 12) if rng.random() < 0.8 else rng.uniform(0, 360)
    return _hsv(hue, rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))


def _rasterise(rings: list[np.ndarray], offset: np.ndarray, width: int, height: int) -> np.ndarray:
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for k, ring in enumerate(rings):
        draw.polygon([tuple(p) for p in ring + offset], fill=0 if k else 255)
    return np.asarray(mask) > 0


def _hides_too_much(new: np.ndarray, placed: list[tuple[np.ndarray, np.ndarray]]) -> bool:
    """Would `new` leave an earlier object with less than half of its pixels visible?"""
    for full, visible in placed:
        if np.count_nonzero(visible & ~new) < (1 - MAX_HIDDEN) * np.count_nonzero(full):
            return True
    return False


def _place(
    kind: SyntheticKind,
    obj: _Object,
    rng: np.random.Generator,
    width: int,
    height: int,
    placed: list[tuple[np.ndarray, np.ndarray]],
) -> np.ndarray | None:
    """Mask of the object at a random position fully inside the image, or None if every
    try would hide too much of an earlier object."""
    rings = _shape(kind, obj, rng, width, height)
    pts = np.concatenate(rings)
    low = 1 - pts.min(axis=0)
    high = np.array([width - 1, height - 1]) - pts.max(axis=0)
    for _ in range(PLACEMENT_TRIES):
        mask = _rasterise(rings, rng.uniform(low, high), width, height)
        if mask.any() and not _hides_too_much(mask, placed):
            return mask
    return None


def _paint(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray, tilt: float) -> list[int]:
    """Fill the mask with the colour, lit by a slight vertical gradient; returns its xywh box."""
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    shade = 1 + tilt * np.linspace(-1, 1, y1 - y0)[:, None, None]
    fill = np.broadcast_to(np.clip(colour * shade, 0, 255).astype(np.uint8), (y1 - y0, x1 - x0, 3))
    crop = mask[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1][crop] = fill[crop]
    return [x0, y0, x1 - x0, y1 - y0]


def _render(
    seed_key: list[int], objects: list[_Object], kind: SyntheticKind = SHAPES
) -> tuple[np.ndarray, list[tuple[int, list[int], int]]]:
    """One image and its objects as (class, [x, y, w, h], pixel area), largest first."""
    rng = np.random.default_rng(seed_key)
    width, height = (int(v) for v in rng.integers(IMAGE_SIDE[0], IMAGE_SIDE[1] + 1, size=2))
    canvas = _clutter(_background(rng, width, height), rng)
    placed: list[tuple[np.ndarray, np.ndarray]] = []
    found: list[tuple[int, list[int], int]] = []
    for obj in sorted(objects, key=lambda o: -o.area):
        mask = _place(kind, obj, rng, width, height, placed)
        if mask is None:
            continue
        for _, visible in placed:
            visible &= ~mask
        placed.append((mask, mask.copy()))
        box = _paint(canvas, mask, _object_colour(kind, obj.cls, rng), rng.uniform(-0.12, 0.12))
        found.append((obj.cls, box, int(np.count_nonzero(mask))))
    return canvas, found


# --------------------------------------------------------------------------- splits
def _quota(n: int, shares: list[float]) -> np.ndarray:
    """Counts proportional to `shares` summing to n (largest remainder), at least 1 each
    when n allows, so that even tiny data sets contain every class and size."""
    raw = np.asarray(shares) * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]] += 1
    while n >= len(shares) and (counts == 0).any():
        counts[np.argmax(counts)] -= 1
        counts[np.argmin(counts)] += 1
    return counts


def _plan_split(
    seed: int, split: int, n_images: int, kind: SyntheticKind = SHAPES
) -> list[list[_Object]]:
    """Objects of every image: class and size by quota over the split, then shuffled; the
    sizes never depend on the class."""
    rng = np.random.default_rng([seed, split])
    per_image = rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1, size=n_images)
    total = int(per_image.sum())
    classes = rng.permutation(
        np.repeat(np.arange(len(kind.classes)), _quota(total, [c[1] for c in kind.classes]))
    )
    buckets = rng.permutation(
        np.repeat(np.arange(len(SIZE_BUCKETS)), _quota(total, [b[1] for b in SIZE_BUCKETS]))
    )
    low, high = (np.array([SIZE_BUCKETS[b][2][k] for b in buckets], dtype=float) for k in (0, 1))
    areas = np.exp(rng.uniform(np.log(low), np.log(high)))
    objects = [_Object(int(c), float(a)) for c, a in zip(classes, areas, strict=True)]
    starts = np.concatenate([[0], np.cumsum(per_image)])
    return [objects[starts[i] : starts[i + 1]] for i in range(n_images)]


def _write_split(
    root: Path,
    seed: int,
    split: int,
    n_images: int,
    advance: Callable[[], None],
    kind: SyntheticKind = SHAPES,
) -> dict[str, Any]:
    name = SPLITS[split]
    (root / "images" / name).mkdir(parents=True, exist_ok=True)

    def make(index: int) -> tuple[dict[str, Any], list[tuple[int, list[int], int]]]:
        pixels, found = _render([seed, split, index], plan[index], kind)
        file_name = f"{name}/{index + 1:06d}.png"
        Image.fromarray(pixels).save(root / "images" / file_name, compress_level=PNG_COMPRESS_LEVEL)
        advance()
        image = {
            "id": index + 1,
            "file_name": file_name,
            "width": pixels.shape[1],
            "height": pixels.shape[0],
        }
        return image, found

    plan = _plan_split(seed, split, n_images, kind)
    # Threads, not processes: PNG encoding and NumPy release the GIL, and results keep order.
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        rendered = list(pool.map(make, range(n_images)))
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image, found in rendered:
        images.append(image)
        for cls, bbox, area in found:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": cls + 1,
                    "bbox": bbox,
                    "area": area,
                    "iscrowd": 0,
                }
            )
    return {
        "info": {
            "description": f"ssodkit synthetic {kind.name}",
            "version": VERSION,
            "seed": seed,
            "split": name,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": c[0], "supercategory": kind.supercategory}
            for i, c in enumerate(kind.classes)
        ],
    }


def _generate_into(
    tmp: Path, seed: int, sizes: tuple[int, int, int], kind: SyntheticKind = SHAPES
) -> None:
    console = Console(stderr=True)
    with Progress(console=console, disable=not console.is_terminal, transient=True) as progress:
        task = progress.add_task(f"generating synthetic {kind.name}", total=sum(sizes))
        for split, n_images in enumerate(sizes):
            coco = _write_split(tmp, seed, split, n_images, lambda: progress.advance(task), kind)
            write_json_atomic(tmp / "annotations" / f"{SPLITS[split]}.json", coco, indent=None)


def generate_synthetic(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_train: int = 1000,
    n_val: int = 200,
    n_unlabeled: int = 1000,
    kind: str | SyntheticKind = "shapes",
) -> SyntheticPaths:
    """Write the data set of `kind` (`shapes` or `fine`) to `out_dir` (which must not exist
    or be empty).

    It is built in a temporary folder beside `out_dir` and renamed into place, so `out_dir`
    is either absent or complete, never half written.
    """
    out = Path(out_dir)
    spec = synthetic_kind(kind)
    sizes = (n_train, n_val, n_unlabeled)
    if min(sizes) < 0:
        raise DataError(
            f"image counts must be ≥ 0, got train={n_train} val={n_val} unlabeled={n_unlabeled}"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not an empty folder")
    if not _build_and_rename(out, seed, sizes, spec):
        raise DataError(f"{out}: was created by another process while generating")
    return SyntheticPaths(out)


def _build_and_rename(
    out: Path, seed: int, sizes: tuple[int, int, int], kind: SyntheticKind = SHAPES
) -> bool:
    """True if our build became `out`; False if another process's did first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _generate_into(tmp, seed, sizes, kind)
        os.rename(tmp, out)  # atomic; fails if `out` is a non-empty folder
        return True
    except OSError as exc:
        if SyntheticPaths(out).exists():
            return False
        raise DataError(f"{out}: cannot write the synthetic data set ({exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_cache_dir() -> Path:
    """`$SSODKIT_CACHE_DIR`, else the platform's user cache folder for ssodkit."""
    env = os.environ.get("SSODKIT_CACHE_DIR")
    if env:
        return Path(env)
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # platformdirs is a declared dependency; this covers bare checkouts
        return Path.home() / ".cache" / "ssodkit"
    return Path(user_cache_dir("ssodkit"))


def ensure_synthetic(
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    kind: str | SyntheticKind = "shapes",
) -> SyntheticPaths:
    """The default-size data set of `kind` for `seed`, generated on first use and reused
    afterwards (`<cache>/synthetic-v1-seed0`, `<cache>/synthetic-fine-v1-seed0`, …).

    Concurrent callers may both generate; the first rename wins and the others discard
    their copy.
    """
    spec = synthetic_kind(kind)
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    paths = SyntheticPaths(base / f"{spec.cache_prefix}-v{VERSION}-seed{seed}")
    if not paths.exists():
        _build_and_rename(paths.root, seed, DEFAULT_SIZES, spec)
    return paths
