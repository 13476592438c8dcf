"""`load_results`' fast path accepts and returns exactly what the per-entry validation does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssodkit.data.coco import (
    CocoResult,
    _check_result,
    _plain_results,
    load_coco,
    load_results,
)
from ssodkit.errors import DataError


@pytest.fixture
def gt(tmp_path: Path):
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 80} for i in (1, 2)],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 20]}],
        "categories": [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return load_coco(path, check_images="none")


GOOD = [
    {"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 1},
    {"image_id": 2, "category_id": 5, "bbox": [1.5, 2.25, 0.0, 4e2], "score": 0.125},
    {"score": 0.5, "bbox": [0, 0, 1, 1], "extra": [1, {"a": 2}], "image_id": 2, "category_id": 3},
    {"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0},
]
BAD = [
    [1, 2, 3],
    {"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]},
    {"image_id": True, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 1},
    {"image_id": 1.0, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 1},
    {"image_id": 9, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 1},
    {"image_id": 1, "category_id": 4, "bbox": [1, 2, 3, 4], "score": 1},
    {"image_id": 1, "category_id": 3, "bbox": [1, 2, 3], "score": 1},
    {"image_id": 1, "category_id": 3, "bbox": [True, 2, 3, 4], "score": 1},
    {"image_id": 1, "category_id": 3, "bbox": ["1", 2, 3, 4], "score": 1},
    {"image_id": 1, "category_id": 3, "bbox": [1, 2, -3, 4], "score": 1},
    {"image_id": 1, "category_id": 3, "bbox": [1, 2, float("inf"), 4], "score": 1},
    {"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "score": float("nan")},
    {"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 1.5},
    {"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 10**400},
]


def test_plain_entries_match_the_models(gt) -> None:
    fast = _plain_results(GOOD, set(gt.image_ids), set(gt.cat_ids))
    slow = []
    for entry in GOOD:
        checked = _check_result(entry, set(gt.image_ids), set(gt.cat_ids), gt)
        assert isinstance(checked, CocoResult)
        slow.append(checked.model_dump())
    assert fast == slow
    assert all(type(v) is float for r in fast for v in [*r["bbox"], r["score"]])


@pytest.mark.parametrize("entry", BAD, ids=range(len(BAD)))
def test_any_other_entry_leaves_it_to_the_careful_loop(gt, entry, tmp_path: Path) -> None:
    assert _plain_results([*GOOD, entry], set(gt.image_ids), set(gt.cat_ids)) is None
    assert isinstance(_check_result(entry, set(gt.image_ids), set(gt.cat_ids), gt), str)
    path = tmp_path / "results.json"
    path.write_text(json.dumps([*GOOD, entry]))
    with pytest.raises(DataError, match="entry 4"):
        load_results(path, gt)


def test_float_only_entries_come_back_as_read(gt) -> None:
    floats = [{"image_id": 1, "category_id": 3, "bbox": [1.0, 2.5, 3.0, 4.0], "score": 0.5}]
    slow = _check_result(floats[0], set(gt.image_ids), set(gt.cat_ids), gt)
    assert _plain_results(floats, set(gt.image_ids), set(gt.cat_ids)) == [slow.model_dump()]


def test_load_results_uses_it(gt, tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(GOOD))
    assert load_results(path, gt) == _plain_results(GOOD, set(gt.image_ids), set(gt.cat_ids))
