"""`ssodkit stats data`: class, size and boxes-per-image profile, Labeled Resampling factors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from ssodkit.data.coco import load_coco
from ssodkit.stats.data import DataStats, compute_data_stats
from tests.conftest import run_cli


def _ann(ann_id: int, image_id: int, cat: int, bbox: list[float], **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, **extra}


@pytest.fixture
def ann_path(tmp_path):
    """4 images: 'head' has 3 boxes in 2 images, 'tail' 1 box, 'absent' none; one crowd
    region; image 4 has no boxes. Sizes sit on COCO's bucket edges via `area`."""
    coco = {
        "images": [
            {"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in (1, 2, 3, 4)
        ],
        "categories": [
            {"id": 5, "name": "absent"}, {"id": 7, "name": "head"}, {"id": 9, "name": "tail"},
        ],
        "annotations": [
            _ann(1, 1, 7, [0, 0, 10, 10], area=32**2 - 1),  # small
            _ann(2, 1, 7, [20, 0, 10, 10], area=32**2),  # medium
            _ann(3, 2, 7, [0, 0, 96, 96]),  # large by w·h (no area)
            _ann(4, 2, 9, [100, 100, 10, 10]),  # small
            _ann(5, 3, 7, [0, 0, 50, 50], iscrowd=1, area=2500),
        ],
    }  # fmt: skip
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco))
    return path


def test_class_size_and_boxes_per_image_counts(ann_path):
    stats = compute_data_stats(load_coco(ann_path, check_images="none"), resampling_t=0.5)
    assert (stats.num_images, stats.num_boxes, stats.num_crowd) == (4, 4, 1)
    assert stats.images_without_boxes == 2  # image 3 has only a crowd region
    assert stats.sizes == {"small": 2, "medium": 1, "large": 1}
    rows = [(c.name, c.boxes, c.images, c.small, c.medium, c.large) for c in stats.classes]
    assert rows == [
        ("head", 3, 2, 1, 1, 1), ("tail", 1, 1, 1, 0, 0), ("absent", 0, 0, 0, 0, 0),
    ]  # fmt: skip
    assert stats.boxes_per_image.histogram == [2, 0, 2]
    assert (stats.boxes_per_image.mean, stats.boxes_per_image.median) == (1.0, 1.0)
    assert stats.boxes_per_image.max == 2


def test_resampling_factors_follow_the_lvis_rule(ann_path):
    # f(head) = 2/4 -> r = 1; f(tail) = 1/4 -> r = sqrt(0.5 / 0.25); absent: never sampled
    stats = compute_data_stats(load_coco(ann_path, check_images="none"), resampling_t=0.5)
    factors = {c.name: c.repeat_factor for c in stats.classes}
    assert factors["head"] == 1.0 and factors["tail"] == pytest.approx(math.sqrt(2))
    assert factors["absent"] is None
    r = stats.resampling
    assert (r.t, r.images_repeated) == (0.5, 1)  # image 2 holds the tail box
    assert r.epoch_images == pytest.approx(3 + math.sqrt(2))
    assert r.max_factor == pytest.approx(math.sqrt(2))


def _assert_drawn(path):
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 1.0 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10


def test_cli_writes_tables_json_and_plots(ann_path, tmp_path):
    out, plots = tmp_path / "data.json", tmp_path / "plots"
    result = run_cli("stats", "data", "--ann", ann_path, "--resampling-t", "0.5",
                     "--json", out, "--plots", plots)  # fmt: skip
    assert result.exit_code == 0, result.output
    for text in ("by class, most boxes first", "Labeled Resampling", "1 of 4 images repeated"):
        assert text in result.stdout
    stats = DataStats.model_validate_json(out.read_text())
    assert stats.model_dump() == json.loads(out.read_text())
    assert stats.classes[0].name == "head"
    names = {"data_classes.png", "data_sizes.png", "data_boxes_per_image.png"}
    assert {p.name for p in plots.iterdir()} == names
    for name in names:
        _assert_drawn(plots / name)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ann", "{tmp}/absent.json"], "absent.json: file not found"),
        (["--resampling-t", "-1"], "threshold t must be a finite number >= 0"),
    ],
)
def test_cli_user_errors_are_one_line(ann_path, tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    base = [] if "--ann" in args else ["--ann", str(ann_path)]
    result = run_cli("stats", "data", *base, *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1
