"""MixPL's Pseudo Mixup / Pseudo Mosaic, offline: mix images with their pseudo labels and save
them, to look at what the student sees during training.

`mix_to_disk()` does all of `ssodkit mix`; its steps serve a Python user on their own:
`load_mix_inputs()` reads the images and validates the pseudo labels against them,
`make_mixes()` mixes random distinct images with `ssodkit.mixing` (the same code the MixPL
method trains with) and `write_mixes()` saves the PNGs and a COCO data set of the kept boxes.
"""

from __future__ import annotations

import colorsys
import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ssodkit.data.coco import (
    CHECK_REMEDY,
    CocoCategory,
    CocoDataset,
    load_results,
    load_unlabeled,
    read_json,
)
from ssodkit.data.images import load_image
from ssodkit.errors import DataError, SsodkitError, unknown_name
from ssodkit.io import write_json_atomic
from ssodkit.mixing import MixItem, filter_scores, pseudo_mixup, pseudo_mosaic
from ssodkit.rng import seeded_generator

MODES = {"mixup": 2, "mosaic": 4}  # mode → images per mix
IMAGE_CACHE_SIZE = 32
PNG_COMPRESS_LEVEL = 3
JSON_DECIMALS = 3

Targets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # boxes xyxy, labels, scores


# --------------------------------------------------------------------------- checks


def check_options(
    *, mode: str, n: int, score_thr: float, mosaic_size: tuple[int, int] | None, out: Path
) -> None:
    """Refuse bad flags in one line, before any file is read."""
    if mode not in MODES:
        raise unknown_name("mode", mode, MODES)
    if n < 1:
        raise SsodkitError(f"--n must be at least 1, got {n}")
    if not 0.0 <= score_thr <= 1.0:
        raise SsodkitError(f"--score-thr must be in [0, 1], got {score_thr:g}")
    if mosaic_size is not None and not 1 <= mosaic_size[0] <= mosaic_size[1]:
        raise SsodkitError(f"--mosaic-size needs 1 <= MIN <= MAX, got {mosaic_size[0]} {mosaic_size[1]}")
    if out.exists() and not out.is_dir():
        raise SsodkitError(f"--out {out}: is a file; give a folder")


# --------------------------------------------------------------------------- inputs


@dataclass
class MixInputs:
    """Images, their pseudo labels as tensors and the categories they refer to."""

    coco: CocoDataset  # images + resolved categories (no annotations)
    targets: dict[int, Targets]  # image id → boxes, labels, scores
    pseudo_path: Path
    category_source: str

    def __post_init__(self) -> None:
        self._load = lru_cache(maxsize=IMAGE_CACHE_SIZE)(self._read)

    def _read(self, image_id: int) -> torch.Tensor:
        array = load_image(self.coco.image_path(image_id))
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()

    def item(self, image_id: int) -> MixItem:
        """One input image (uint8 [3, H, W]) with all its pseudo boxes (no threshold yet)."""
        boxes, labels, scores = self.targets.get(image_id, _no_targets())
        return MixItem(self._load(image_id), boxes, labels, scores)

    @property
    def n_boxes(self) -> int:
        return sum(int(t[0].shape[0]) for t in self.targets.values())

    def check_usable(self, mode: str, score_thr: float) -> None:
        """One-line errors for inputs that cannot make a meaningful mix."""
        need, have = MODES[mode], len(self.coco.images)
        if have < need:
            raise SsodkitError(
                f"--mode {mode} mixes {need} different images; {self.coco.source} has {have}"
            )
        if self.n_boxes == 0:
            raise SsodkitError(f"{self.pseudo_path}: no pseudo boxes at all")
        best = max(float(t[2].max()) for t in self.targets.values() if t[2].numel())
        if best <= score_thr:
            raise SsodkitError(
                f"{self.pseudo_path}: no pseudo box has score > {score_thr:g} "
                f"(highest {best:g}); lower --score-thr"
            )


def _no_targets() -> Targets:
    return (
        torch.zeros((0, 4), dtype=torch.float32),
        torch.zeros((0,), dtype=torch.int64),
        torch.zeros((0,), dtype=torch.float32),
    )


def _read_categories(path: Path) -> list[CocoCategory]:
    raw = read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("categories"), list):
        raise DataError(f"{path}: expected a COCO JSON object with a 'categories' list")
    try:
        return [CocoCategory.model_validate(c) for c in raw["categories"]]
    except Exception as exc:  # pydantic's ValidationError, or a non-object entry
        first = str(exc).splitlines()[0]
        raise DataError(f"{path}: invalid category ({first})") from None


def _result_category_ids(path: Path) -> list[int]:
    """Category ids used in a results file (only well-formed entries; the rest are reported
    by `load_results`)."""
    raw = read_json(path)
    if not isinstance(raw, list):
        return []
    ids = {e.get("category_id") for e in raw if isinstance(e, dict)}
    return sorted(i for i in ids if isinstance(i, int) and not isinstance(i, bool))


def _resolve_categories(
    images: CocoDataset, pseudo: Path, categories: Path | None
) -> tuple[list[CocoCategory], str]:
    """Categories and where they came from: --categories, --images' JSON, else the results."""
    if categories is not None:
        return _read_categories(categories), str(categories)
    if images.categories:
        return list(images.categories), str(images.source)
    ids = _result_category_ids(pseudo)
    return [CocoCategory(id=i, name=f"class_{i}") for i in ids], f"ids in {pseudo.name} (class_<id>)"


def load_mix_inputs(
    images: Path,
    pseudo: Path,
    *,
    categories: Path | None = None,
    image_root: Path | None = None,
) -> MixInputs:
    """Read the images (folder or COCO JSON) and validate the pseudo labels against them."""
    pool = load_unlabeled(images, image_root, remedy=CHECK_REMEDY)
    cats, category_source = _resolve_categories(pool, pseudo, categories)
    coco = CocoDataset(pool.images, [], cats, pool.source, pool.image_root)
    results = load_results(pseudo, coco)
    grouped: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        grouped.setdefault(r["image_id"], []).append(r)
    targets = {i: _to_tensors(rs, coco.cat_id_to_index) for i, rs in grouped.items()}
    return MixInputs(coco, targets, pseudo, category_source)


def _to_tensors(results: list[dict[str, Any]], cat_id_to_index: dict[int, int]) -> Targets:
    boxes = torch.tensor([r["bbox"] for r in results], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    labels = torch.tensor([cat_id_to_index[r["category_id"]] for r in results], dtype=torch.int64)
    scores = torch.tensor([r["score"] for r in results], dtype=torch.float32)
    return boxes, labels, scores


# --------------------------------------------------------------------------- mixing


@dataclass
class Mixed:
    """One mixed image after the threshold, and the input image ids it was made from."""

    item: MixItem
    source_ids: list[int]


def default_mosaic_size(coco: CocoDataset) -> tuple[int, int]:
    """Half to all of the median longer side: tiles about the input scale, objects shrink."""
    longer = int(statistics.median(max(img.width, img.height) for img in coco.images))
    return max(1, longer // 2), max(1, longer)


def make_mixes(
    inputs: MixInputs,
    *,
    mode: str,
    n: int,
    score_thr: float,
    seed: int = 0,
    mosaic_size: tuple[int, int] | None = None,
) -> Iterator[Mixed]:
    """``n`` mixes of distinct random images; one generator drives choice and mixing."""
    g = seeded_generator(seed)
    ids = inputs.coco.image_ids
    size_range = mosaic_size or default_mosaic_size(inputs.coco)
    for _ in range(n):
        chosen = [ids[i] for i in torch.randperm(len(ids), generator=g)[: MODES[mode]].tolist()]
        items = [inputs.item(i) for i in chosen]
        if mode == "mixup":
            mixed = pseudo_mixup(items[0], items[1], g)
        else:
            mixed = pseudo_mosaic(items, g, size_range=size_range)
        yield Mixed(filter_scores(mixed, score_thr), chosen)


# --------------------------------------------------------------------------- writing


@dataclass
class MixSummary:
    """What `write_mixes()` wrote; `category_source` says where the categories came from."""

    n_images: int
    n_boxes: int
    n_empty: int
    json_path: Path
    category_source: str = ""


def _bbox_xywh(box: list[float]) -> list[float]:
    x1, y1, x2, y2 = (round(v, JSON_DECIMALS) for v in box)
    return [x1, y1, round(x2 - x1, JSON_DECIMALS), round(y2 - y1, JSON_DECIMALS)]


def _image_record(inputs: MixInputs, image_id: int, name: str, mixed: Mixed) -> dict[str, Any]:
    h, w = mixed.item.size
    sources = [
        {
            "image_id": sid,
            "file_name": inputs.coco.image(sid).file_name,
            "scale": [round(p.scale[0], 6), round(p.scale[1], 6)],
            "flip": p.flip,
            "offset": list(p.offset),
        }
        for sid, p in zip(mixed.source_ids, mixed.item.placements, strict=True)
    ]
    return {"id": image_id, "file_name": name, "width": w, "height": h, "mix_sources": sources}


def _annotation_records(
    inputs: MixInputs, image_id: int, item: MixItem, first_id: int
) -> list[dict[str, Any]]:
    records = []
    for k, (box, label, score) in enumerate(
        zip(item.boxes.tolist(), item.labels.tolist(), item.scores.tolist(), strict=True)
    ):
        bbox = _bbox_xywh(box)
        records.append({
            "id": first_id + k,
            "image_id": image_id,
            "category_id": inputs.coco.index_to_cat_id[label],
            "bbox": bbox,
            "area": round(bbox[2] * bbox[3], JSON_DECIMALS),
            "iscrowd": 0,
            "score": round(score, 5),
        })
    return records


def _to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).contiguous().cpu().numpy())


def _colour(label: int) -> tuple[int, int, int]:
    """A bright, stable colour per class (golden-angle hues)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(image: torch.Tensor, item: MixItem, class_names: list[str]) -> Image.Image:
    """A PIL image with each box outlined and labelled ``name score``."""
    pil = _to_pil(image)
    canvas = ImageDraw.Draw(pil)
    rows = zip(item.boxes.tolist(), item.labels.tolist(), item.scores.tolist(), strict=True)
    for box, label, score in rows:
        colour = _colour(label)
        canvas.rectangle(box, outline=colour, width=2)
        text = f"{class_names[label]} {score:.2f}"
        left, top, right, bottom = canvas.textbbox((box[0], box[1]), text)
        y = max(0.0, box[1] - (bottom - top) - 2)
        canvas.rectangle([box[0], y, box[0] + (right - left) + 2, y + (bottom - top) + 2], fill=colour)
        canvas.text((box[0] + 1, y), text, fill=(0, 0, 0))
    return pil


def write_mixes(
    inputs: MixInputs,
    mixes: Iterable[Mixed],
    out: Path,
    *,
    draw: bool = False,
    info: dict[str, Any] | None = None,
    on_image: Callable[[], None] | None = None,
) -> MixSummary:
    """Write ``out/images/*.png``, ``out/mixed.json`` (atomically, last) and maybe ``out/drawn``."""
    images_dir, drawn_dir = out / "images", out / "drawn"
    images_dir.mkdir(parents=True, exist_ok=True)
    if draw:
        drawn_dir.mkdir(parents=True, exist_ok=True)
    image_records: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    n_empty = 0
    for image_id, mixed in enumerate(mixes, start=1):
        name = f"mix_{image_id:06d}.png"
        _to_pil(mixed.item.image).save(images_dir / name, compress_level=PNG_COMPRESS_LEVEL)
        if draw:
            draw_boxes(mixed.item.image, mixed.item, inputs.coco.class_names).save(
                drawn_dir / name, compress_level=PNG_COMPRESS_LEVEL
            )
        image_records.append(_image_record(inputs, image_id, name, mixed))
        annotations += _annotation_records(inputs, image_id, mixed.item, len(annotations) + 1)
        n_empty += len(mixed.item) == 0
        if on_image is not None:
            on_image()
    dataset = {
        "info": info or {},
        "images": image_records,
        "annotations": annotations,
        "categories": [c.model_dump(exclude_unset=True) for c in inputs.coco.categories],
    }
    path = write_json_atomic(out / "mixed.json", dataset, indent=None)
    return MixSummary(len(image_records), len(annotations), n_empty, path, inputs.category_source)


# --------------------------------------------------------------------------- all of it


def mix_to_disk(
    images: Path,
    pseudo: Path,
    out: Path,
    *,
    mode: str,
    n: int,
    score_thr: float = 0.5,
    draw: bool = False,
    seed: int = 0,
    mosaic_size: tuple[int, int] | None = None,
    categories: Path | None = None,
    image_root: Path | None = None,
    on_start: Callable[[], None] | None = None,
    on_image: Callable[[], None] | None = None,
) -> MixSummary:
    """Check the options, read the inputs and write ``n`` mixes to ``out``.

    Options are refused before any file is read, unusable inputs before anything is
    written. ``on_start`` is called once the inputs are read and mixing begins,
    ``on_image`` after each image is written: the hooks of a progress bar.
    """
    check_options(mode=mode, n=n, score_thr=score_thr, mosaic_size=mosaic_size, out=out)
    inputs = load_mix_inputs(images, pseudo, categories=categories, image_root=image_root)
    inputs.check_usable(mode, score_thr)
    if on_start is not None:
        on_start()
    mixes = make_mixes(
        inputs, mode=mode, n=n, score_thr=score_thr, seed=seed, mosaic_size=mosaic_size
    )
    info = {
        "description": f"ssodkit mix --mode {mode}",
        "images": str(inputs.coco.source),
        "pseudo": str(inputs.pseudo_path),
        "seed": seed,
        "score_thr": score_thr,
    }
    return write_mixes(inputs, mixes, out, draw=draw, info=info, on_image=on_image)
