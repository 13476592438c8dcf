"""COCO-standard SSOD splits: the literature's draw, disjoint halves, atomic files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from ssodkit.cli import split_cmd
from ssodkit.data.coco import load_coco
from ssodkit.data.splits import labeled_indices, split_coco, split_paths
from ssodkit.errors import SsodkitError

N_IMAGES = 300


@pytest.fixture
def ann(tmp_path) -> Path:
    """300 images with shuffled ids, two annotations each (no files: splits never read pixels)."""
    ids = np.random.default_rng(0).permutation(np.arange(1000, 1000 + N_IMAGES)).tolist()
    coco = {
        "info": {"description": "split test"},
        "licenses": [],
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 80} for i in ids],
        "annotations": [
            {
                "id": 2 * k + j,
                "image_id": i,
                "category_id": 1 + j,
                "bbox": [1, 1, 10, 10],
                "area": 100,
                "iscrowd": 0,
            }
            for k, i in enumerate(ids)
            for j in (0, 1)
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "unused"}],
    }
    path = tmp_path / "instances_train.json"
    path.write_text(json.dumps(coco))
    return path


def _ids(path: Path) -> list[int]:
    return [img["id"] for img in json.loads(path.read_text())["images"]]


def _reference(n: int, percent: float, fold: int) -> set[int]:
    """mmdetection's tools/misc/split_coco.py draw (on the global generator, restored after)."""
    state = np.random.get_state()
    try:
        np.random.seed(fold)
        return set(np.random.choice(range(n), size=int(percent / 100.0 * n)).tolist())
    finally:
        np.random.set_state(state)


@pytest.mark.parametrize(("percent", "fold"), [(1, 1), (2, 3), (5, 5), (10, 2), (33.3, 4)])
def test_labeled_images_are_the_literature_draw_for_fold_and_percent(ann, percent, fold):
    labeled, _ = split_coco(ann, percent, fold)
    images = json.loads(ann.read_text())["images"]
    expected = [images[i]["id"] for i in sorted(_reference(N_IMAGES, percent, fold))]
    assert _ids(labeled) == expected
    rs = np.random.RandomState(fold).choice(range(N_IMAGES), size=int(percent / 100 * N_IMAGES))
    np.testing.assert_array_equal(labeled_indices(N_IMAGES, percent, fold), np.unique(rs))


def test_halves_are_disjoint_cover_all_images_and_keep_file_order(ann):
    labeled, unlabeled = split_coco(ann, 10, 1)
    all_ids = _ids(ann)
    assert not set(_ids(labeled)) & set(_ids(unlabeled))
    assert sorted(_ids(labeled) + _ids(unlabeled)) == sorted(all_ids)
    for part in (labeled, unlabeled):
        assert _ids(part) == [i for i in all_ids if i in set(_ids(part))]


def test_labeled_count_is_the_distinct_draws_of_int_percent_times_n(ann):
    labeled, unlabeled = split_coco(ann, 10, 1)
    assert len(_ids(labeled)) == len(_reference(N_IMAGES, 10, 1)) <= int(0.1 * N_IMAGES)
    assert len(_ids(labeled)) + len(_ids(unlabeled)) == N_IMAGES


def test_annotations_follow_their_images_and_categories_are_kept_in_both(ann):
    for path in split_coco(ann, 5, 2):
        data = json.loads(path.read_text())
        ids = {img["id"] for img in data["images"]}
        assert {a["image_id"] for a in data["annotations"]} == ids
        assert len(data["annotations"]) == 2 * len(ids)
        assert [c["name"] for c in data["categories"]] == ["a", "b", "unused"]
        assert data["info"] == {"description": "split test"}
        load_coco(path, check_images="none")


def test_same_fold_is_deterministic_and_other_folds_differ(ann, tmp_path):
    first = split_coco(ann, 5, 1, tmp_path / "one")
    again = split_coco(ann, 5, 1, tmp_path / "two")
    other = split_coco(ann, 5, 2, tmp_path / "three")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert _ids(first[0]) != _ids(other[0])


def test_files_are_named_fold_at_percent_beside_the_input_or_in_out(ann, tmp_path):
    assert split_coco(ann, 1, 1) == (
        ann.parent / "instances_train.1@1.json",
        ann.parent / "instances_train.1@1-unlabeled.json",
    )
    assert split_paths(ann, 0.5, 3, tmp_path / "o") == (
        tmp_path / "o" / "instances_train.3@0.5.json",
        tmp_path / "o" / "instances_train.3@0.5-unlabeled.json",
    )


def test_input_is_untouched_and_no_temporary_files_remain(ann):
    before, mtime = ann.read_bytes(), os.stat(ann).st_mtime_ns
    split_coco(ann, 10, 1)
    assert ann.read_bytes() == before and os.stat(ann).st_mtime_ns == mtime
    assert sorted(p.name for p in ann.parent.iterdir()) == [
        "instances_train.1@10-unlabeled.json",
        "instances_train.1@10.json",
        "instances_train.json",
    ]


@pytest.mark.parametrize(
    ("percent", "fold", "message"),
    [
        (0, 1, r"percent must be in \(0, 100\), got 0"),
        (100, 1, r"percent must be in \(0, 100\), got 100"),
        (5, 0, "fold must be ≥ 1, got 0"),
        (0.2, 1, "0.2% of 300 images is 0 labeled images"),
    ],
)
def test_invalid_percent_fold_or_empty_labeled_split_is_a_clear_error(ann, percent, fold, message):
    with pytest.raises(SsodkitError, match=message):
        split_coco(ann, percent, fold)


def test_split_command_prints_both_paths_with_counts(ann, tmp_path):
    app = typer.Typer()
    split_cmd.register(app)
    app.command("noop")(lambda: None)  # keep `split` a named sub-command
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["split", "--ann", str(ann), "--percent", "10", "--fold", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    n = len(_reference(N_IMAGES, 10, 1))
    text = result.output.replace("\n", "")
    assert f"{out / 'instances_train.1@10.json'}: {n} images, {2 * n} annotations" in text
    assert f"{out / 'instances_train.1@10-unlabeled.json'}: {N_IMAGES - n} images" in text


def test_split_command_rejects_a_bad_percent_before_reading(tmp_path):
    app = typer.Typer()
    split_cmd.register(app)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(
        app, ["split", "--ann", str(tmp_path / "absent.json"), "--percent", "150", "--fold", "1"]
    )
    assert isinstance(result.exception, SsodkitError) and "percent" in str(result.exception)
