"""COCO-standard semi-supervised splits ("fold@percent"), as in the SSOD literature.

The protocol is the one of mmdetection's `tools/misc/split_coco.py` (and STAC / Soft
Teacher before it), reproduced draw for draw so that `1@1`, `2@10`, … select the same
images as the published results: seed NumPy's legacy generator with the fold, draw
`int(percent / 100 * n)` indices *with replacement* (`np.random.choice`'s default, which
those scripts use), and label the distinct images drawn — a few fewer than the draw count
when an index repeats. The rest form the unlabeled split, their annotations kept as
hidden ground truth for diagnostics.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ssodkit.data.coco import CHECK_REMEDY, CocoDataset, load_coco
from ssodkit.errors import SsodkitError


def check_split_args(percent: float, fold: int) -> None:
    if not 0 < percent < 100:
        raise SsodkitError(f"percent must be in (0, 100), got {percent:g}")
    if fold < 1:
        raise SsodkitError(f"fold must be ≥ 1, got {fold}")


def labeled_indices(n_images: int, percent: float, fold: int) -> np.ndarray:
    """Sorted distinct indices (into the file's image list) of the labeled images."""
    check_split_args(percent, fold)
    labeled_tot = int(percent / 100 * n_images)
    if labeled_tot == 0:
        raise SsodkitError(
            f"{percent:g}% of {n_images} images is 0 labeled images; use a larger percent"
        )
    draws = np.random.RandomState(fold).choice(range(n_images), size=labeled_tot)
    return np.unique(draws)


def split_dataset(coco: CocoDataset, percent: float, fold: int) -> tuple[CocoDataset, CocoDataset]:
    """(labeled, unlabeled) subsets; both keep every category and the file's order."""
    picked = set(labeled_indices(len(coco.images), percent, fold).tolist())
    labeled = [img.id for i, img in enumerate(coco.images) if i in picked]
    unlabeled = [img.id for i, img in enumerate(coco.images) if i not in picked]
    return coco.subset(labeled), coco.subset(unlabeled)


def split_paths(
    ann_path: str | os.PathLike[str],
    percent: float,
    fold: int,
    out_dir: str | os.PathLike[str] | None = None,
) -> tuple[Path, Path]:
    """`<stem>.<fold>@<percent>.json` and `…-unlabeled.json`, beside the input by default."""
    ann_path = Path(ann_path)
    folder = Path(out_dir) if out_dir is not None else ann_path.parent
    name = f"{ann_path.stem}.{fold}@{percent:g}"
    return folder / f"{name}.json", folder / f"{name}-unlabeled.json"


def split_coco(
    ann_path: str | os.PathLike[str],
    percent: float,
    fold: int,
    out_dir: str | os.PathLike[str] | None = None,
) -> tuple[Path, Path]:
    """Validate `ann_path`, split it and write both halves atomically; returns their paths."""
    check_split_args(percent, fold)  # before reading what may be a large file
    labeled_path, unlabeled_path = split_paths(ann_path, percent, fold, out_dir)
    coco = load_coco(ann_path, check_images="none", remedy=CHECK_REMEDY)
    labeled, unlabeled = split_dataset(coco, percent, fold)
    return labeled.save(labeled_path), unlabeled.save(unlabeled_path)
