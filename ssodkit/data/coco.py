"""COCO instance files: read, validate, index and write.

A bad record found at iteration 40 000 costs a training run, so `load_coco` checks the whole
file up front and reports *every* defect at once — each with the file, the image or
annotation id and what is wrong — instead of failing on the first. `skip_invalid=True`
drops the bad records (counted in `CocoDataset.dropped`) for data sets one cannot fix.
Input files are only ever read.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, StrictInt, ValidationError

from ssodkit.data.images import image_size, load_image
from ssodkit.errors import DataError
from ssodkit.io import write_json_atomic

log = logging.getLogger(__name__)

ImageCheck = Literal["none", "exists", "decode"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
BOX_TOLERANCE_PX = 1.0
MAX_LISTED_DEFECTS = 10
_EPS = 1e-6  # float rounding of x + w in files written with limited precision

Number = Annotated[float, Strict(), AllowInfNan(False)]  # ints are accepted, strings are not
Box = Annotated[list[Number], Field(min_length=4, max_length=4)]


# --------------------------------------------------------------------------- schema
class _Record(BaseModel):
    """A COCO record; unknown keys (segmentation, license, coco_url …) are kept as is."""

    model_config = ConfigDict(extra="allow")


class CocoImage(_Record):
    id: StrictInt
    file_name: Annotated[str, Field(min_length=1)]
    width: Annotated[int, Field(gt=0)]
    height: Annotated[int, Field(gt=0)]


class CocoAnnotation(_Record):
    id: StrictInt
    image_id: StrictInt
    category_id: StrictInt
    bbox: Box  # [x, y, w, h]
    area: Number | None = None
    iscrowd: Literal[0, 1] = 0


class CocoCategory(_Record):
    id: StrictInt
    name: str
    supercategory: str | None = None


class CocoResult(_Record):
    """One detection of a COCO *results* file."""

    image_id: StrictInt
    category_id: StrictInt
    bbox: Box
    score: Number


R = TypeVar("R", bound=_Record)
Identified = TypeVar("Identified", CocoImage, CocoAnnotation, CocoCategory)


@dataclass(frozen=True)
class Defect:
    """One invalid record; `record` locates it when it has no readable id."""

    file: str
    image_id: int | None
    ann_id: int | None
    message: str
    record: str | None = None
    file_name: str | None = None

    def __str__(self) -> str:
        if self.ann_id is not None:
            where = f"annotation {self.ann_id}"
            if self.image_id is not None:
                where += f" (image {self.image_id})"
        elif self.image_id is not None:
            where = f"image {self.image_id}"
            if self.file_name is not None:
                where += f" ({self.file_name})"
        else:
            where = self.record or "file"
        return f"{where}: {self.message}"


# --------------------------------------------------------------------------- data set
@dataclass(eq=False)
class CocoDataset:
    """A validated COCO instance file plus where its images live.

    Labels inside ssodkit are contiguous indices `0..K-1` over the categories sorted by id
    (`cat_id_to_index` / `index_to_cat_id` map at the file boundary). Treat an instance as
    immutable: the lookup tables are built once, in `__post_init__`.
    """

    images: list[CocoImage]
    annotations: list[CocoAnnotation]
    categories: list[CocoCategory]
    source: Path | None
    image_root: Path
    dropped: dict[str, int] = field(default_factory=dict)
    defects: list[Defect] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # other top-level keys: info, licenses

    def __post_init__(self) -> None:
        self._images = {img.id: img for img in self.images}
        self._anns: dict[int, list[CocoAnnotation]] = defaultdict(list)
        for ann in self.annotations:
            self._anns[ann.image_id].append(ann)
        by_id = {cat.id: cat for cat in self.categories}
        self.cat_ids: list[int] = sorted(by_id)
        self.class_names: list[str] = [by_id[i].name for i in self.cat_ids]
        self.index_to_cat_id: list[int] = list(self.cat_ids)
        self.cat_id_to_index: dict[int, int] = {c: i for i, c in enumerate(self.cat_ids)}

    @property
    def image_ids(self) -> list[int]:
        return [img.id for img in self.images]

    def image(self, image_id: int) -> CocoImage:
        return self._images[image_id]

    def image_path(self, image_id: int) -> Path:
        return self.image_root / self._images[image_id].file_name

    def annotations_for(self, image_id: int) -> list[CocoAnnotation]:
        return list(self._anns.get(image_id, ()))

    def training_targets(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Non-crowd boxes as `float32 [N, 4]` xyxy and labels as `int64 [N]` class indices."""
        anns = [a for a in self._anns.get(image_id, ()) if not a.iscrowd]
        boxes = np.array([a.bbox for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = np.array([self.cat_id_to_index[a.category_id] for a in anns], dtype=np.int64)
        return boxes, labels

    def subset(self, image_ids: Iterable[int]) -> CocoDataset:
        """The given images (in file order) with their annotations and all categories."""
        keep = set(image_ids)
        return CocoDataset(
            images=[img for img in self.images if img.id in keep],
            annotations=[a for a in self.annotations if a.image_id in keep],
            categories=list(self.categories),
            source=self.source,
            image_root=self.image_root,
            extra=dict(self.extra),
        )

    def to_dict(self) -> dict[str, Any]:
        """A COCO dict as read, plus the defaults pycocotools' COCOeval reads (`area` = w·h,
        `iscrowd` = 0) where the file left them out."""
        annotations = []
        for ann in self.annotations:
            record = ann.model_dump(exclude_unset=True)
            record["iscrowd"] = ann.iscrowd
            record["area"] = ann.area if ann.area is not None else ann.bbox[2] * ann.bbox[3]
            annotations.append(record)
        return {
            **self.extra,
            "images": [img.model_dump(exclude_unset=True) for img in self.images],
            "annotations": annotations,
            "categories": [cat.model_dump(exclude_unset=True) for cat in self.categories],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write `to_dict()` atomically (compact: COCO files are large)."""
        return write_json_atomic(path, self.to_dict(), indent=None)


def size_bucket(area: float) -> str:
    """COCO's size bucket of an object area: small < 32², medium < 96², large."""
    return "small" if area < 32**2 else "medium" if area < 96**2 else "large"


def count_objects(coco: CocoDataset) -> tuple[Counter[str], Counter[str]]:
    """Non-crowd objects per class name and per COCO size bucket (by `area`, else w·h)."""
    per_class: Counter[str] = Counter({name: 0 for name in coco.class_names})
    per_size: Counter[str] = Counter({"small": 0, "medium": 0, "large": 0})
    names = dict(zip(coco.cat_ids, coco.class_names, strict=True))
    for ann in coco.annotations:
        if not ann.iscrowd:
            per_class[names[ann.category_id]] += 1
            per_size[
                size_bucket(ann.area if ann.area is not None else ann.bbox[2] * ann.bbox[3])
            ] += 1
    return per_class, per_size


# --------------------------------------------------------------------------- reading
def read_json(path: Path) -> Any:
    """Parse a JSON file; every failure is a one-line `DataError` with the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a JSON file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def _top_level(raw: Any, path: Path, annotations_required: bool) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise DataError(f"{path}: top level must be a JSON object, got {_json_type(raw)}")
    problems = []
    for key in ("images", "annotations", "categories"):
        if key not in raw:
            if key != "annotations" or annotations_required:
                problems.append(f"missing key '{key}'")
        elif not isinstance(raw[key], list):
            problems.append(f"'{key}' must be a list, got {_json_type(raw[key])}")
    if problems:
        raise DataError(f"{path}: {'; '.join(problems)}")
    return raw


def _json_type(value: Any) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }
    return names.get(type(value), "a number")


def _schema_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "missing":
            parts.append(f"missing field '{loc}'")
        else:
            got = repr(err["input"])
            got = got if len(got) <= 40 else got[:37] + "..."
            parts.append(f"field '{loc}': {err['msg'][0].lower()}{err['msg'][1:]} (got {got})")
    return "; ".join(parts)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Validator:
    """Collects the defects of one file and decides which records survive."""

    def __init__(self, path: Path) -> None:
        self.file = str(path)
        self.defects: list[Defect] = []

    def add(
        self,
        message: str,
        *,
        image_id: int | None = None,
        ann_id: int | None = None,
        record: str | None = None,
        file_name: str | None = None,
    ) -> None:
        self.defects.append(Defect(self.file, image_id, ann_id, message, record, file_name))

    def parse(self, records: list[Any], key: str, model: type[R]) -> tuple[list[R], set[int]]:
        """Schema-valid records, and the readable ids of the invalid ones."""
        valid: list[R] = []
        bad_ids: set[int] = set()
        for index, raw in enumerate(records):
            where = f"{key}[{index}]"
            if not isinstance(raw, dict):
                self.add(f"must be an object, got {_json_type(raw)}", record=where)
                continue
            try:
                valid.append(model.model_validate(raw))
            except ValidationError as exc:
                rid = _int_or_none(raw.get("id"))
                if rid is not None:
                    bad_ids.add(rid)
                self._add_for(key, raw, rid, _schema_message(exc), where)
        return valid, bad_ids

    def _add_for(
        self, key: str, raw: dict[str, Any], rid: int | None, message: str, where: str
    ) -> None:
        if key == "images" and rid is not None:
            name = raw.get("file_name")
            self.add(message, image_id=rid, file_name=name if isinstance(name, str) else None)
        elif key == "annotations" and rid is not None:
            self.add(message, ann_id=rid, image_id=_int_or_none(raw.get("image_id")))
        elif key == "categories" and rid is not None:
            self.add(message, record=f"category {rid}")
        else:
            self.add(message, record=where)

    def error(self, hint: str) -> DataError:
        n = len(self.defects)
        lines = [f"{self.file}: {n} invalid record{'s' if n != 1 else ''}{hint}"]
        lines += [f"  {d}" for d in self.defects[:MAX_LISTED_DEFECTS]]
        if n > MAX_LISTED_DEFECTS:
            lines.append(f"  … and {n - MAX_LISTED_DEFECTS} more")
        return DataError("\n".join(lines))


def _first_of_each(
    items: list[Identified], report: Callable[[Identified, Identified], None]
) -> list[Identified]:
    """Keep the first record of every id; report each later one against the first."""
    first: dict[int, Identified] = {}
    for item in items:
        if item.id in first:
            report(item, first[item.id])
        else:
            first[item.id] = item
    return list(first.values())


def _check_categories(v: _Validator, raw: list[Any]) -> tuple[list[CocoCategory], set[int]]:
    cats, bad = v.parse(raw, "categories", CocoCategory)
    cats = _first_of_each(
        cats, lambda c, _: v.add("duplicate category id", record=f"category {c.id}")
    )
    return cats, bad - {c.id for c in cats}


def _check_images(v: _Validator, raw: list[Any]) -> tuple[list[CocoImage], set[int]]:
    """Images with a unique id; every copy of a duplicated id is dropped, because its
    annotations cannot be attributed to one of them."""
    images, bad = v.parse(raw, "images", CocoImage)
    counts = Counter(img.id for img in images)
    seen: dict[int, CocoImage] = {}
    for img in images:
        if counts[img.id] > 1 and img.id in seen:
            v.add(
                f"duplicate image id (also used by {seen[img.id].file_name})",
                image_id=img.id,
                file_name=img.file_name,
            )
        seen.setdefault(img.id, img)
    bad |= {i for i, n in counts.items() if n > 1}
    return [img for img in images if counts[img.id] == 1], bad


def _box_problem(ann: CocoAnnotation, img: CocoImage) -> str | None:
    x, y, w, h = ann.bbox
    if w <= 0:
        return f"box width {w:g} ≤ 0"
    if h <= 0:
        return f"box height {h:g} ≤ 0"
    tol = BOX_TOLERANCE_PX + _EPS
    if x < -tol or y < -tol or x + w > img.width + tol or y + h > img.height + tol:
        return (
            f"box [{x:g}, {y:g}, {w:g}, {h:g}] extends outside the "
            f"{img.width}x{img.height} image (tolerance {BOX_TOLERANCE_PX:g} px)"
        )
    return None


def _check_annotations(
    v: _Validator,
    raw: list[Any],
    images: dict[int, CocoImage],
    bad_images: set[int],
    cat_ids: set[int],
    bad_cats: set[int],
) -> list[CocoAnnotation]:
    """Valid annotations; those of an invalid image or category are dropped silently (the
    image or category is reported) so that one defect is not reported twice."""
    anns, _ = v.parse(raw, "annotations", CocoAnnotation)
    anns = _first_of_each(
        anns, lambda a, _: v.add("duplicate annotation id", ann_id=a.id, image_id=a.image_id)
    )
    valid = []
    for ann in anns:
        if ann.image_id in bad_images or ann.category_id in bad_cats:
            continue
        img = images.get(ann.image_id)
        if img is None:
            problem: str | None = f"image_id {ann.image_id} is not an image of the file"
        elif ann.category_id not in cat_ids:
            problem = f"category_id {ann.category_id} is not a declared category"
        else:
            problem = _box_problem(ann, img)
        if problem is None:
            valid.append(ann)
        else:
            v.add(problem, ann_id=ann.id, image_id=ann.image_id)
    return valid


# --------------------------------------------------------------------------- image files
def _parallel(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """File checks are I/O bound; threads hide the latency of network file systems."""
    if len(items) < 32:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
        return list(pool.map(fn, items))


def _image_problem(img: CocoImage, path: Path, decode: bool) -> str | None:
    if not path.is_file():
        return f"file not found at {path}"
    try:
        if decode:
            h, w = load_image(path).shape[:2]
        else:
            w, h = image_size(path)
    except DataError as exc:
        return f"unreadable image: {str(exc).removeprefix(f'{path}: ')}"
    if (w, h) != (img.width, img.height):
        return (
            f"size on disk is {w}x{h} (after EXIF orientation) "
            f"but the JSON says {img.width}x{img.height}"
        )
    return None


def _check_files(v: _Validator, images: list[CocoImage], root: Path, mode: ImageCheck) -> set[int]:
    """Ids of images whose file is missing, unreadable or of another size."""
    problems = _parallel(
        lambda img: _image_problem(img, root / img.file_name, mode == "decode"), images
    )
    bad = set()
    for img, problem in zip(images, problems, strict=True):
        if problem is not None:
            v.add(problem, image_id=img.id, file_name=img.file_name)
            bad.add(img.id)
    return bad


def default_image_roots(ann_path: Path) -> list[Path]:
    """Where images are looked for when no root is given, in this order: `<ann dir>/../images`
    (the `annotations/` + `images/` layout), `<ann dir>/images`, `<ann dir>`."""
    ann_dir = ann_path.parent
    return [ann_dir.parent / "images", ann_dir / "images", ann_dir]


def _resolve_image_root(ann_path: Path, image_root: Path | None, images: list[CocoImage]) -> Path:
    """The first default root that holds the first image; failing that the first existing
    one, so that 'file not found' defects show a plausible path."""
    if image_root is not None:
        return image_root
    candidates = default_image_roots(ann_path)
    if images:
        for root in candidates:
            if (root / images[0].file_name).is_file():
                return root
    return next((root for root in candidates if root.is_dir()), ann_path.parent)


# --------------------------------------------------------------------------- loaders
SKIP_INVALID_REMEDY = " (pass --skip-invalid to drop them)"
CHECK_REMEDY = " (`ssodkit data check` lists them; fix the file)"


def load_coco(
    ann_path: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    *,
    skip_invalid: bool = False,
    check_images: ImageCheck = "exists",
    annotations_required: bool = True,
    remedy: str = SKIP_INVALID_REMEDY,
) -> CocoDataset:
    """Read and validate a COCO instance file.

    `check_images`: "none" trusts the JSON; "exists" checks that every file exists and that
    its header size (after EXIF orientation) matches width/height; "decode" also decodes
    every image. `image_root` defaults to the first of `default_image_roots(ann_path)` that
    holds the first image. Defects raise one `DataError` listing them, unless
    `skip_invalid`, which drops them (an image takes its annotations along) and records the
    counts in `.dropped` and the defects in `.defects`. `remedy` ends the error message:
    the flag that drops them where the command has one, else `CHECK_REMEDY`.
    """
    path = Path(ann_path)
    raw = read_json(path)
    return _build(
        raw,
        path,
        None if image_root is None else Path(image_root),
        skip_invalid=skip_invalid,
        check_images=check_images,
        annotations_required=annotations_required,
        remedy=remedy,
    )


def _build(
    raw: Any,
    path: Path,
    image_root: Path | None,
    *,
    skip_invalid: bool,
    check_images: ImageCheck,
    annotations_required: bool,
    remedy: str = "",
) -> CocoDataset:
    raw = _top_level(raw, path, annotations_required)
    v = _Validator(path)
    categories, bad_cats = _check_categories(v, raw["categories"])
    images, bad_images = _check_images(v, raw["images"])
    by_id = {img.id: img for img in images}
    annotations = _check_annotations(
        v, raw.get("annotations", []), by_id, bad_images, {c.id for c in categories}, bad_cats
    )
    root = _resolve_image_root(path, image_root, images)
    if check_images != "none":
        if image_root is not None and not image_root.is_dir():
            raise DataError(f"{path}: image root {image_root} is not a directory")
        bad_images |= _check_files(v, images, root, check_images)
    if v.defects and not skip_invalid:
        raise v.error(remedy)

    kept_images = [img for img in images if img.id not in bad_images]
    kept_ids = {img.id for img in kept_images}
    kept_anns = [a for a in annotations if a.image_id in kept_ids]
    dropped = {
        "images": len(raw["images"]) - len(kept_images),
        "annotations": len(raw.get("annotations", [])) - len(kept_anns),
        "categories": len(raw["categories"]) - len(categories),
    }
    if v.defects:
        counts = ", ".join(f"{k}: {n}" for k, n in dropped.items() if n)
        log.warning(
            "%s: dropped %s (%d defects; first: %s)", path, counts, len(v.defects), v.defects[0]
        )
    extra = {k: val for k, val in raw.items() if k not in ("images", "annotations", "categories")}
    return CocoDataset(kept_images, kept_anns, categories, path, root, dropped, v.defects, extra)


def load_unlabeled(
    source: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    *,
    skip_invalid: bool = False,
    check_images: ImageCheck = "exists",
    remedy: str = SKIP_INVALID_REMEDY,
) -> CocoDataset:
    """Images without labels, from a COCO JSON (annotations ignored, categories kept) or a
    folder of images (searched recursively; ids 1..N in sorted relative-path order)."""
    src = Path(source)
    if src.is_dir():
        if image_root is not None:
            raise DataError(f"{src}: an image root only applies to a JSON source")
        return _scan_folder(src, skip_invalid=skip_invalid, remedy=remedy)
    raw = read_json(src)
    if isinstance(raw, dict):
        raw = {k: val for k, val in raw.items() if k != "annotations"}
    return _build(
        raw,
        src,
        None if image_root is None else Path(image_root),
        skip_invalid=skip_invalid,
        check_images=check_images,
        annotations_required=False,
        remedy=remedy,
    )


def _scan_folder(folder: Path, *, skip_invalid: bool, remedy: str = SKIP_INVALID_REMEDY) -> CocoDataset:
    files = sorted(
        (
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        ),
    )
    if not files:
        raise DataError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")

    def size_or_reason(name: str) -> tuple[int, int] | str:
        try:
            return image_size(folder / name)
        except DataError as exc:
            return str(exc).removeprefix(f"{folder / name}: ")

    v = _Validator(folder)
    images = []
    for image_id, (name, size) in enumerate(
        zip(files, _parallel(size_or_reason, files), strict=True), start=1
    ):
        if isinstance(size, str):
            v.add(f"unreadable image: {size}", image_id=image_id, file_name=name)
        else:
            images.append(CocoImage(id=image_id, file_name=name, width=size[0], height=size[1]))
    if v.defects and not skip_invalid:
        raise v.error(remedy)
    dropped = {"images": len(v.defects), "annotations": 0, "categories": 0}
    return CocoDataset(images, [], [], folder, folder, dropped, v.defects)


def load_results(path: str | os.PathLike[str], gt: CocoDataset) -> list[dict[str, Any]]:
    """Validate a COCO results file (a list of detections) against its ground truth."""
    path = Path(path)
    raw = read_json(path)
    if not isinstance(raw, list):
        raise DataError(f"{path}: a results file must be a JSON list, got {_json_type(raw)}")
    image_ids, cat_ids = set(gt.image_ids), set(gt.cat_ids)
    fast = _plain_results(raw, image_ids, cat_ids)
    if fast is not None:
        return fast
    v = _Validator(path)
    results = []
    for index, entry in enumerate(raw):
        checked = _check_result(entry, image_ids, cat_ids, gt)
        if isinstance(checked, str):
            v.add(checked, record=f"entry {index}")
        else:
            results.append(checked.model_dump())
    if v.defects:
        raise v.error("")
    return results


_RESULT_KEYS = ("image_id", "category_id", "bbox", "score")


def _plain_results(raw: list[Any], image_ids: set[int], cat_ids: set[int]) -> list[dict[str, Any]] | None:
    """`load_results`' output without a model per entry, when every entry is a plain valid
    detection (the common case: field by field in C loops, 500,000 entries in well under a
    second instead of four); None when any entry is not, and the careful loop then names
    every defect. Accepts exactly what `_check_result` accepts and returns what
    `CocoResult.model_dump()` does: ints, never bools, for the ids; finite ints or floats,
    as floats, for the box and score; extra keys kept after the four."""
    if not raw:
        return []
    if set(map(type, raw)) != {dict}:
        return None
    try:
        image_id = [e["image_id"] for e in raw]
        cat_id = [e["category_id"] for e in raw]
        bbox = [e["bbox"] for e in raw]
        score = [e["score"] for e in raw]
    except KeyError:
        return None
    if (
        set(map(type, image_id)) != {int} or set(map(type, cat_id)) != {int}
        or not set(image_id) <= image_ids or not set(cat_id) <= cat_ids
        or set(map(type, bbox)) != {list} or set(map(len, bbox)) != {4}
    ):
        return None
    flat = list(itertools.chain.from_iterable(bbox))
    number_types = set(map(type, flat)) | set(map(type, score))
    if not number_types <= _NUMBER_TYPES:
        return None
    try:
        boxes = np.array(flat, dtype=np.float64).reshape(-1, 4)
        scores = np.array(score, dtype=np.float64)
    except OverflowError:  # an int too large for a float: the careful loop says so
        return None
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        return None
    if (boxes[:, 2:] < 0).any() or (scores < 0).any() or (scores > 1).any():
        return None
    keys = _RESULT_KEYS
    plain = set(map(len, raw)) == {4}
    if plain and number_types == {float}:
        return raw  # already what model_dump() gives (dicts compare equal in any key order)
    if plain:
        return [dict(zip(keys, r)) for r in zip(image_id, cat_id, boxes.tolist(), scores.tolist())]
    return [
        {**dict(zip(keys, r)), **{k: v for k, v in e.items() if k not in keys}}
        for r, e in zip(zip(image_id, cat_id, boxes.tolist(), scores.tolist()), raw)
    ]


_NUMBER_TYPES = {int, float}  # exact types: bool (an int subclass) is refused, as Strict() does


def _check_result(
    entry: Any, image_ids: set[int], cat_ids: set[int], gt: CocoDataset
) -> CocoResult | str:
    """The validated detection, or what is wrong with it."""
    if not isinstance(entry, dict):
        return f"must be an object, got {_json_type(entry)}"
    try:
        result = CocoResult.model_validate(entry)
    except ValidationError as exc:
        return _schema_message(exc)
    gt_name = gt.source.name if gt.source is not None else "the ground truth"
    if result.image_id not in image_ids:
        return f"image_id {result.image_id} is not in {gt_name}"
    if result.category_id not in cat_ids:
        return f"category_id {result.category_id} is not in {gt_name}"
    if min(result.bbox[2:]) < 0:
        return f"box size {result.bbox[2]:g}x{result.bbox[3]:g} is negative"
    if not 0 <= result.score <= 1:  # a logit or a percentage: thresholds and AP ranking would be wrong
        return f"score {result.score:g} is outside [0, 1]"
    return result
