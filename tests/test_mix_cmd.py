"""`ssodkit mix`: offline Pseudo Mixup / Mosaic writes a COCO set pycocotools can read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli

SIZES = [(40, 48), (56, 40), (36, 36), (48, 64), (30, 50)]  # (h, w) of images 1..5
CAT_IDS = (3, 8)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Five small images in a folder (ids 1..5 in name order), their pseudo labels as a COCO
    results list, and a COCO JSON of the same images with named categories."""
    root = tmp_path_factory.mktemp("mix")
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    results, images = [], []
    for k, (h, w) in enumerate(SIZES, start=1):
        pixels = np.full((h, w, 3), 40 * k, dtype=np.uint8)
        pixels[h // 4 : h // 2, w // 4 : w // 2] = 250
        Image.fromarray(pixels).save(folder / f"img{k}.png")
        images.append({"id": k, "file_name": f"img{k}.png", "width": w, "height": h})
        for j in range(3):
            x, y = float(rng.uniform(0, w / 2)), float(rng.uniform(0, h / 2))
            results.append({
                "image_id": k,
                "category_id": CAT_IDS[j % 2],
                "bbox": [x, y, float(rng.uniform(4, w / 2)), float(rng.uniform(4, h / 2))],
                "score": [0.9, 0.3, 0.7][j],
            })
    pseudo = root / "pseudo.json"
    pseudo.write_text(json.dumps(results))
    ann = root / "unlabeled.json"
    categories = [{"id": 3, "name": "cat"}, {"id": 8, "name": "dog"}]
    ann.write_text(json.dumps({"images": images, "annotations": [], "categories": categories}))
    return {"folder": folder, "pseudo": pseudo, "ann": ann, "root": root}


def check_output(out: Path, n: int, score_thr: float) -> dict:
    from pycocotools.coco import COCO

    coco = COCO(str(out / "mixed.json"))
    assert len(coco.getImgIds()) == n
    assert coco.getCatIds() == list(CAT_IDS)
    n_boxes = 0
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        with Image.open(out / "images" / info["file_name"]) as png:
            assert png.size == (info["width"], info["height"])
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and w > 0 and h > 0
            assert x + w <= info["width"] + 1e-6 and y + h <= info["height"] + 1e-6
            assert ann["score"] > score_thr and ann["iscrowd"] == 0
            assert ann["area"] == pytest.approx(w * h, abs=1e-2)
            n_boxes += 1
    assert n_boxes > 0
    return json.loads((out / "mixed.json").read_text())


def test_mixup_from_a_folder_writes_a_coco_set(inputs, tmp_path):
    out = tmp_path / "mixup"
    result = run_cli(
        "mix", "--images", inputs["folder"], "--pseudo", inputs["pseudo"], "--mode", "mixup",
        "--n", "4", "--out", out, "--seed", "1",
    )
    assert result.exit_code == 0, result.output
    assert "wrote 4 mixup images" in result.stdout
    data = check_output(out, 4, 0.5)
    # A folder has no categories: they are named after the ids in the pseudo labels.
    assert [c["name"] for c in data["categories"]] == ["class_3", "class_8"]
    for image in data["images"]:
        sources = image["mix_sources"]
        assert len(sources) == 2 and sources[0]["image_id"] != sources[1]["image_id"]
        first = SIZES[sources[0]["image_id"] - 1]
        assert (image["height"], image["width"]) == first  # b is fitted inside a
    assert not (out / "drawn").exists()


def test_mosaic_from_coco_json_with_draw(inputs, tmp_path):
    out = tmp_path / "mosaic"
    result = run_cli(
        "mix", "--images", inputs["ann"], "--image-root", inputs["folder"], "--pseudo",
        inputs["pseudo"], "--mode", "mosaic", "--n", "3", "--out", out, "--draw",
        "--mosaic-size", "24", "40", "--score-thr", "0.6",
    )
    assert result.exit_code == 0, result.output
    data = check_output(out, 3, 0.6)
    assert [c["name"] for c in data["categories"]] == ["cat", "dog"]
    for image in data["images"]:
        assert len(image["mix_sources"]) == 4
        assert image["width"] % 32 == 0 and image["height"] % 32 == 0  # 2 x multiple of 16
        drawn = out / "drawn" / image["file_name"]
        assert drawn.stat().st_size > 0
        with Image.open(drawn) as d, Image.open(out / "images" / image["file_name"]) as plain:
            assert d.size == plain.size
            has_boxes = any(a["image_id"] == image["id"] for a in data["annotations"])
            assert (np.asarray(d) != np.asarray(plain)).any() == has_boxes


def test_same_seed_same_output(inputs, tmp_path):
    args = ["--images", inputs["folder"], "--pseudo", inputs["pseudo"], "--mode", "mixup", "--n", "2"]
    assert run_cli("mix", *args, "--out", tmp_path / "a").exit_code == 0
    assert run_cli("mix", *args, "--out", tmp_path / "b").exit_code == 0
    a, b = (json.loads((tmp_path / d / "mixed.json").read_text()) for d in "ab")
    assert a["images"] == b["images"] and a["annotations"] == b["annotations"]


def test_categories_flag_overrides_and_validates_ids(inputs, tmp_path):
    cats = tmp_path / "cats.json"
    cats.write_text(json.dumps({"categories": [{"id": 3, "name": "cat"}]}))
    result = run_cli(
        "mix", "--images", inputs["folder"], "--pseudo", inputs["pseudo"], "--mode", "mixup",
        "--n", "1", "--out", tmp_path / "o", "--categories", cats,
    )
    assert result.exit_code == 2 and "category_id 8 is not in" in result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--n": "0"}, "--n must be at least 1"),
        ({"--mode": "mixop"}, "unknown mode 'mixop'; valid: mixup, mosaic. Did you mean 'mixup'?"),
        ({"--pseudo": "missing.json"}, "missing.json: file not found"),
        ({"--images": "nowhere"}, "nowhere"),
        ({"--score-thr": "1.5"}, "--score-thr must be in [0, 1]"),
        ({"--score-thr": "0.95"}, "no pseudo box has score > 0.95"),
    ],
)
def test_bad_inputs_fail_in_one_line(inputs, tmp_path, change, message):
    flags = {
        "--images": str(inputs["folder"]), "--pseudo": str(inputs["pseudo"]), "--mode": "mixup",
        "--n": "2", "--out": str(tmp_path / "o"),
    }
    for key, value in change.items():
        flags[key] = value if not value.endswith(".json") and value != "nowhere" else str(tmp_path / value)
    result = run_cli("mix", *[x for kv in flags.items() for x in kv])
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_no_pseudo_boxes_at_all_and_too_few_images(inputs, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    base = ["mix", "--images", inputs["folder"], "--n", "1", "--out", tmp_path / "o"]
    result = run_cli(*base, "--pseudo", empty, "--mode", "mixup")
    assert result.exit_code == 2 and "no pseudo boxes at all" in result.stderr
    three = tmp_path / "three"
    three.mkdir()
    for k in (1, 2, 3):
        (three / f"img{k}.png").write_bytes((inputs["folder"] / f"img{k}.png").read_bytes())
    pseudo = [r for r in json.loads(inputs["pseudo"].read_text()) if r["image_id"] <= 3]
    small = tmp_path / "small.json"
    small.write_text(json.dumps(pseudo))
    result = run_cli(
        "mix", "--images", three, "--pseudo", small, "--mode", "mosaic", "--n", "1",
        "--out", tmp_path / "o",
    )
    assert result.exit_code == 2 and "mixes 4 different images" in result.stderr


def test_unknown_image_id_in_pseudo_labels(inputs, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 99, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.9}]))
    result = run_cli(
        "mix", "--images", inputs["folder"], "--pseudo", bad, "--mode", "mixup", "--n", "1",
        "--out", tmp_path / "o",
    )
    assert result.exit_code == 2 and "image_id 99 is not in" in result.stderr


def test_library_call_writes_what_the_command_writes(inputs, tmp_path):
    from ssodkit.engine.mix import mix_to_disk

    args = ["--images", inputs["folder"], "--pseudo", inputs["pseudo"], "--mode", "mixup", "--n", "3"]
    assert run_cli("mix", *args, "--out", tmp_path / "cli").exit_code == 0
    events: list[str] = []
    summary = mix_to_disk(
        inputs["folder"], inputs["pseudo"], tmp_path / "lib", mode="mixup", n=3,
        on_start=lambda: events.append("start"), on_image=lambda: events.append("image"),
    )
    assert events == ["start", "image", "image", "image"]
    assert summary.n_images == 3 and summary.category_source == "ids in pseudo.json (class_<id>)"
    cli, lib = (json.loads((tmp_path / d / "mixed.json").read_text()) for d in ("cli", "lib"))
    assert cli == lib
