"""COCO loading: every defect is reported with its file and id; nothing is ever written."""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from ssodkit.cli import data_cmd
from ssodkit.data.coco import load_coco, load_results, load_unlabeled
from ssodkit.errors import DataError

W, H = 64, 48


def _coco() -> dict:
    """Two images, three annotations (one crowd), two categories with non-contiguous ids."""
    return {
        "info": {"description": "test"},
        "images": [
            {"id": 5, "file_name": "a.png", "width": W, "height": H},
            {"id": 7, "file_name": "b.png", "width": W, "height": H},
        ],
        "annotations": [
            {
                "id": 12,
                "image_id": 5,
                "category_id": 3,
                "bbox": [1, 2, 10, 20],
                "area": 200.0,
                "iscrowd": 0,
            },
            {
                "id": 13,
                "image_id": 5,
                "category_id": 9,
                "bbox": [30, 10, 5, 5],
                "segmentation": [[30, 10, 35, 10, 35, 15]],
            },
            {"id": 14, "image_id": 7, "category_id": 3, "bbox": [0, 0, 64, 48], "iscrowd": 1},
        ],
        "categories": [
            {"id": 9, "name": "dog"},
            {"id": 3, "name": "cat", "supercategory": "animal"},
        ],
    }


def _write_image(path: Path, width: int = W, height: int = H) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(path)


def _write(root: Path, coco: dict, *, images: bool = True) -> Path:
    """`root/annotations/train.json` + `root/images/*.png` for every listed image."""
    ann = root / "annotations" / "train.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps(coco))
    if images:
        for img in coco["images"]:
            if isinstance(img, dict) and "file_name" in img:
                _write_image(root / "images" / img["file_name"])
    return ann


@pytest.fixture
def ann(tmp_path) -> Path:
    return _write(tmp_path, _coco())


def _error(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_coco(path, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- valid files
def test_valid_file_maps_sorted_category_ids_to_contiguous_indices(ann):
    coco = load_coco(ann)
    assert coco.cat_ids == [3, 9]
    assert coco.class_names == ["cat", "dog"]
    assert coco.cat_id_to_index == {3: 0, 9: 1}
    assert coco.index_to_cat_id == [3, 9]
    assert coco.image_ids == [5, 7]
    assert coco.image_path(5) == ann.parent.parent / "images" / "a.png"
    assert [a.id for a in coco.annotations_for(5)] == [12, 13]
    assert coco.dropped == {"images": 0, "annotations": 0, "categories": 0}


def test_training_targets_are_xyxy_float32_and_exclude_crowd_boxes(ann):
    coco = load_coco(ann)
    boxes, labels = coco.training_targets(5)
    assert boxes.dtype == np.float32 and labels.dtype == np.int64
    np.testing.assert_array_equal(boxes, [[1, 2, 11, 22], [30, 10, 35, 15]])
    np.testing.assert_array_equal(labels, [0, 1])
    boxes, labels = coco.training_targets(7)
    assert boxes.shape == (0, 4) and labels.shape == (0,)


def test_to_dict_keeps_extra_fields_and_works_with_pycocotools(ann):
    from pycocotools.coco import COCO

    data = load_coco(ann).to_dict()
    assert data["info"] == {"description": "test"}
    assert data["annotations"][1]["segmentation"] == [[30, 10, 35, 10, 35, 15]]
    assert data["annotations"][1]["area"] == 25 and data["annotations"][1]["iscrowd"] == 0
    api = COCO()
    api.dataset = data
    api.createIndex()
    assert sorted(api.getAnnIds(imgIds=[5])) == [12, 13]
    assert api.loadCats([3])[0]["name"] == "cat"


def test_box_within_one_pixel_tolerance_is_accepted(tmp_path):
    coco = _coco()
    coco["annotations"][0]["bbox"] = [-0.9, -1.0, W + 1.5, 10.0000001]
    assert len(load_coco(_write(tmp_path, coco)).annotations) == 3


def test_exif_rotated_image_matches_its_upright_size(tmp_path):
    coco = _coco()
    coco["images"] = [{"id": 5, "file_name": "a.jpg", "width": 20, "height": 40}]
    coco["annotations"] = []
    ann = _write(tmp_path, coco, images=False)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40x20, shown 20x40
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 20)).save(tmp_path / "images" / "a.jpg", exif=exif.tobytes())
    assert load_coco(ann, check_images="decode").images[0].width == 20
    coco["images"][0].update(width=40, height=20)
    ann.write_text(json.dumps(coco))
    assert "size on disk is 20x40 (after EXIF orientation) but the JSON says 40x20" in _error(ann)


# --------------------------------------------------------------------------- default image root
@pytest.mark.parametrize("layout", ["../images", "images", "."])
def test_default_image_root_is_found_in_documented_order(tmp_path, layout):
    ann = tmp_path / "annotations" / "train.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps(_coco()))
    root = (ann.parent / layout).resolve()
    for name in ("a.png", "b.png"):
        _write_image(root / name)
    assert load_coco(ann).image_root.resolve() == root


def test_explicit_image_root_wins(tmp_path, ann):
    other = tmp_path / "elsewhere"
    for name in ("a.png", "b.png"):
        _write_image(other / name)
    assert load_coco(ann, other).image_root == other


def test_explicit_image_root_that_is_not_a_folder_is_an_error(tmp_path, ann):
    with pytest.raises(DataError, match="image root .*nowhere is not a directory"):
        load_coco(ann, tmp_path / "nowhere")


# --------------------------------------------------------------------------- file-level errors
def test_missing_file_is_reported(tmp_path):
    assert _error(tmp_path / "absent.json") == f"{tmp_path / 'absent.json'}: file not found"


def test_invalid_json_is_reported_with_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "images": [,]\n}')
    assert _error(path) == f"{path}: not valid JSON: Expecting value at line 2 column 14"


def test_top_level_that_is_not_an_object_is_reported(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[]")
    assert _error(path) == f"{path}: top level must be a JSON object, got a list"


def test_missing_and_mistyped_top_level_keys_are_reported_together(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"images": {}, "categories": []}))
    assert (
        _error(path) == f"{path}: 'images' must be a list, got an object; missing key 'annotations'"
    )


def test_annotations_key_is_optional_when_not_required(tmp_path):
    coco = _coco()
    del coco["annotations"]
    loaded = load_coco(_write(tmp_path, coco), annotations_required=False)
    assert len(loaded.images) == 2 and loaded.annotations == []


# --------------------------------------------------------------------------- record defects
def _set(section: str, index: int, **fields) -> Callable[[dict], None]:
    return lambda coco: coco[section][index].update(fields)


def _drop(section: str, index: int, key: str) -> Callable[[dict], None]:
    return lambda coco: coco[section][index].pop(key)


def _append(section: str, record) -> Callable[[dict], None]:
    return lambda coco: coco[section].append(record)


RECORD_DEFECTS = {
    "image missing field": (_drop("images", 1, "width"), "image 7 (b.png): missing field 'width'"),
    "image wrong type": (
        _set("images", 0, height="tall"),
        "image 5 (a.png): field 'height': input should be a valid integer",
    ),
    "image not an object": (_append("images", 3), "images[2]: must be an object, got a number"),
    "annotation without id": (_drop("annotations", 0, "id"), "annotations[0]: missing field 'id'"),
    "annotation bbox of wrong length": (
        _set("annotations", 0, bbox=[1, 2, 3]),
        "annotation 12 (image 5): field 'bbox': list should have at least 4 items",
    ),
    "annotation bbox not numbers": (
        _set("annotations", 0, bbox="1,2,3,4"),
        "annotation 12 (image 5): field 'bbox': input should be a valid list",
    ),
    "annotation string id": (
        _set("annotations", 1, category_id="9"),
        "annotation 13 (image 5): field 'category_id': input should be a valid integer",
    ),
    "iscrowd not 0 or 1": (
        _set("annotations", 1, iscrowd=2),
        "annotation 13 (image 5): field 'iscrowd': input should be 0 or 1",
    ),
    "category missing name": (_drop("categories", 0, "name"), "category 9: missing field 'name'"),
    "box width zero": (
        _set("annotations", 0, bbox=[1, 2, 0, 20]),
        "annotation 12 (image 5): box width 0 ≤ 0",
    ),
    "box height negative": (
        _set("annotations", 0, bbox=[1, 2, 5, -3]),
        "annotation 12 (image 5): box height -3 ≤ 0",
    ),
    "box outside image": (
        _set("annotations", 0, bbox=[60, 2, 10, 20]),
        "annotation 12 (image 5): box [60, 2, 10, 20] extends outside the 64x48 image",
    ),
    "box left of image": (
        _set("annotations", 0, bbox=[-1.5, 2, 10, 20]),
        "annotation 12 (image 5): box [-1.5, 2, 10, 20] extends outside",
    ),
    "undeclared category": (
        _set("annotations", 0, category_id=4),
        "annotation 12 (image 5): category_id 4 is not a declared category",
    ),
    "unknown image": (
        _set("annotations", 0, image_id=99),
        "annotation 12 (image 99): image_id 99 is not an image of the file",
    ),
    "duplicate image id": (
        _append("images", {"id": 5, "file_name": "b.png", "width": W, "height": H}),
        "image 5 (b.png): duplicate image id (also used by a.png)",
    ),
    "duplicate annotation id": (
        _set("annotations", 2, id=12),
        "annotation 12 (image 7): duplicate annotation id",
    ),
    "duplicate category id": (
        _append("categories", {"id": 3, "name": "lion"}),
        "category 3: duplicate category id",
    ),
}


@pytest.mark.parametrize("defect", RECORD_DEFECTS, ids=str)
def test_record_defect_is_reported_with_file_and_id(tmp_path, defect):
    mutate, expected = RECORD_DEFECTS[defect]
    coco = _coco()
    mutate(coco)
    ann = _write(tmp_path, coco)
    message = _error(ann)
    first, *details = message.splitlines()
    assert first == f"{ann}: 1 invalid record (pass --skip-invalid to drop them)"
    assert len(details) == 1 and details[0].startswith(f"  {expected}"), message


def test_missing_image_file_is_reported_with_its_path(tmp_path, ann):
    (tmp_path / "images" / "b.png").unlink()
    message = _error(ann)
    assert (
        f"  image 7 (b.png): file not found at {tmp_path / 'images' / 'b.png'}"
        in message.splitlines()
    )


def test_image_size_disagreeing_with_json_is_reported(tmp_path, ann):
    _write_image(tmp_path / "images" / "a.png", width=50)
    assert (
        "  image 5 (a.png): size on disk is 50x48 (after EXIF orientation) but the JSON says 64x48"
        in _error(ann)
    )


def test_corrupt_image_is_reported_when_decoding(tmp_path, ann):
    image = tmp_path / "images" / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
        image
    )
    image.write_bytes(image.read_bytes()[:300])
    assert len(load_coco(ann, check_images="exists").images) == 2  # header is intact
    assert "  image 5 (a.png): unreadable image: corrupt image" in _error(
        ann, check_images="decode"
    )


def test_unreadable_image_header_is_reported_when_checking_existence(tmp_path, ann):
    (tmp_path / "images" / "a.png").write_text("not a png")
    assert "  image 5 (a.png): unreadable image: not an image PIL can read" in _error(ann)


def test_image_checks_are_skipped_with_check_none(tmp_path, ann):
    for name in ("a.png", "b.png"):
        (tmp_path / "images" / name).unlink()
    assert len(load_coco(ann, check_images="none").images) == 2


def test_annotations_of_an_invalid_image_or_category_are_not_reported_twice(tmp_path):
    coco = _coco()
    coco["images"][0]["width"] = 0
    coco["categories"][1]["name"] = None
    message = _error(_write(tmp_path, coco))
    assert message.splitlines()[1:] == [
        "  category 3: field 'name': input should be a valid string (got None)",
        "  image 5 (a.png): field 'width': input should be greater than 0 (got 0)",
    ]


def test_every_defect_is_counted_and_the_list_is_truncated_after_ten(tmp_path):
    coco = _coco()
    coco["annotations"] += [
        {"id": 100 + i, "image_id": 5, "category_id": 3, "bbox": [1, 1, 0, 1]} for i in range(14)
    ]
    coco["annotations"][0]["category_id"] = 77
    ann = _write(tmp_path, coco)
    lines = _error(ann).splitlines()
    assert lines[0] == f"{ann}: 15 invalid records (pass --skip-invalid to drop them)"
    assert len(lines) == 12 and lines[-1] == "  … and 5 more"


# --------------------------------------------------------------------------- skip_invalid
def test_skip_invalid_drops_bad_records_counts_them_and_never_touches_the_input(tmp_path, caplog):
    coco = _coco()
    coco["annotations"][0]["bbox"] = [1, 2, 0, 20]  # bad annotation
    coco["images"].append({"id": 8, "file_name": "gone.png", "width": W, "height": H})
    coco["annotations"].append({"id": 15, "image_id": 8, "category_id": 3, "bbox": [1, 1, 5, 5]})
    ann = _write(tmp_path, coco)
    (tmp_path / "images" / "gone.png").unlink()
    before, mtime = ann.read_bytes(), os.stat(ann).st_mtime_ns

    with caplog.at_level(logging.WARNING, logger="ssodkit.data.coco"):
        loaded = load_coco(ann, skip_invalid=True)

    assert loaded.image_ids == [5, 7]
    assert [a.id for a in loaded.annotations] == [13, 14]
    assert loaded.dropped == {"images": 1, "annotations": 2, "categories": 0}
    assert [str(d) for d in loaded.defects] == [
        "annotation 12 (image 5): box width 0 ≤ 0",
        f"image 8 (gone.png): file not found at {tmp_path / 'images' / 'gone.png'}",
    ]
    assert loaded.defects[0].file == str(ann) and loaded.defects[0].ann_id == 12
    assert "dropped images: 1, annotations: 2 (2 defects" in caplog.text
    assert ann.read_bytes() == before and os.stat(ann).st_mtime_ns == mtime
    assert sorted(p.name for p in ann.parent.iterdir()) == ["train.json"]


def test_skip_invalid_drops_every_copy_of_a_duplicated_image_id(tmp_path):
    coco = _coco()
    coco["images"].append({"id": 5, "file_name": "b.png", "width": W, "height": H})
    loaded = load_coco(_write(tmp_path, coco), skip_invalid=True)
    assert loaded.image_ids == [7] and [a.id for a in loaded.annotations] == [14]
    assert loaded.dropped == {"images": 2, "annotations": 2, "categories": 0}


def test_skip_invalid_keeps_the_first_of_duplicated_category_ids(tmp_path):
    coco = _coco()
    coco["categories"].append({"id": 3, "name": "lion"})
    loaded = load_coco(_write(tmp_path, coco), skip_invalid=True)
    assert loaded.class_names == ["cat", "dog"] and loaded.dropped["categories"] == 1


def test_loading_does_not_mutate_the_parsed_records(tmp_path):
    coco = _coco()
    ann = _write(tmp_path, coco)
    original = copy.deepcopy(json.loads(ann.read_text()))
    load_coco(ann).to_dict()
    assert json.loads(ann.read_text()) == original


# --------------------------------------------------------------------------- unlabeled
def test_unlabeled_folder_is_scanned_recursively_in_sorted_path_order(tmp_path):
    folder = tmp_path / "pool"
    _write_image(folder / "b.png", 30, 20)
    _write_image(folder / "sub" / "a.JPG", 10, 12)
    _write_image(folder / "a.png", 8, 8)
    (folder / "notes.txt").write_text("ignored")
    coco = load_unlabeled(folder)
    assert [(i.id, i.file_name, i.width, i.height) for i in coco.images] == [
        (1, "a.png", 8, 8),
        (2, "b.png", 30, 20),
        (3, "sub/a.JPG", 10, 12),
    ]
    assert coco.annotations == [] and coco.categories == []
    assert coco.image_path(3) == folder / "sub" / "a.JPG"


def test_unlabeled_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_unlabeled(tmp_path / "empty")


def test_unlabeled_folder_with_unreadable_image_names_it(tmp_path):
    _write_image(tmp_path / "pool" / "ok.png")
    (tmp_path / "pool" / "broken.png").write_text("x")
    with pytest.raises(DataError, match=r"image 1 \(broken\.png\): unreadable image"):
        load_unlabeled(tmp_path / "pool")


def test_unlabeled_json_ignores_annotations_but_keeps_categories(tmp_path):
    coco = _coco()
    coco["annotations"][0]["bbox"] = "garbage"  # not even validated
    loaded = load_unlabeled(_write(tmp_path, coco))
    assert loaded.image_ids == [5, 7] and loaded.annotations == []
    assert loaded.class_names == ["cat", "dog"]


# --------------------------------------------------------------------------- results
def test_results_file_is_validated_against_its_ground_truth(tmp_path, ann):
    gt = load_coco(ann)
    good = {"image_id": 5, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.9}
    path = tmp_path / "results.json"
    path.write_text(json.dumps([good]))
    assert load_results(path, gt) == [{**good, "bbox": [1.0, 2.0, 3.0, 4.0]}]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {"image_id": 99, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.5},
            "entry 1: image_id 99 is not in train.json",
        ),
        (
            {"image_id": 5, "category_id": 4, "bbox": [1, 2, 3, 4], "score": 0.5},
            "entry 1: category_id 4 is not in train.json",
        ),
        ({"image_id": 5, "category_id": 3, "bbox": [1, 2, 3, 4]}, "entry 1: missing field 'score'"),
        (
            {"image_id": 5, "category_id": 3, "bbox": [1, 2, -3, 4], "score": 0.5},
            "entry 1: box size -3x4 is negative",
        ),
        ("detection", "entry 1: must be an object, got a string"),
    ],
)
def test_malformed_result_entry_is_named_by_its_index(tmp_path, ann, entry, expected):
    good = {"image_id": 5, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.9}
    path = tmp_path / "results.json"
    path.write_text(json.dumps([good, entry]))
    with pytest.raises(DataError) as info:
        load_results(path, load_coco(ann))
    assert str(info.value).splitlines() == [f"{path}: 1 invalid record", f"  {expected}"]


def test_results_file_must_be_a_list(tmp_path, ann):
    path = tmp_path / "results.json"
    path.write_text("{}")
    with pytest.raises(DataError, match="results file must be a JSON list, got an object"):
        load_results(path, load_coco(ann))


# --------------------------------------------------------------------------- CLI
def _cli(*args: str):
    app = typer.Typer()
    data_cmd.register(app)
    return CliRunner().invoke(app, [str(a) for a in args])


def test_data_check_prints_a_summary_and_exits_zero_for_a_valid_file(ann):
    result = _cli("data", "check", "--ann", ann)
    assert result.exit_code == 0, result.output
    assert "images" in result.output and "2 valid, 0 dropped" in result.output


def test_data_check_lists_defects_and_exits_one(tmp_path, ann):
    (tmp_path / "images" / "b.png").unlink()
    result = _cli("data", "check", "--ann", ann, "--decode")
    assert result.exit_code == 1
    assert "image 7 (b.png): file not found" in result.output


def test_data_check_of_unparseable_file_raises_data_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{")
    result = _cli("data", "check", "--ann", path)
    assert isinstance(result.exception, DataError)


def test_commands_without_skip_invalid_point_to_data_check_instead(tmp_path, cli):
    coco = _coco()
    coco["annotations"].append({"id": 99, "image_id": 5, "category_id": 1, "bbox": [1, 1, -3, 4]})
    ann = _write(tmp_path, coco)
    result = cli("split", "--ann", str(ann), "--percent", "50", "--fold", "1", "--out", str(tmp_path / "splits"))
    assert result.exit_code != 0
    assert "ssodkit data check" in result.stderr and "--skip-invalid" not in result.stderr, result.stderr
