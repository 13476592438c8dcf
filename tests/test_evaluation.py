"""COCO evaluation: backend parity with plain pycocotools, edge cases, conversion, CLI."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from ssodkit.cli.evaluate_cmd import register
from ssodkit.cli.tables import per_class_table, results_table
from ssodkit.errors import DataError, SsodkitError
from ssodkit.evaluation.coco_eval import (
    STAT_FIELDS,
    EvalResult,
    detections_to_results,
    evaluate_coco,
    faster_coco_eval_available,
)
from ssodkit.io import write_json_atomic

BACKENDS = ["pycocotools", pytest.param("faster_coco_eval", marks=pytest.mark.skipif(
    not faster_coco_eval_available(), reason="faster-coco-eval not installed"))]  # fmt: skip


def _ann(ann_id: int, image_id: int, cat: int, bbox: list[float], crowd: int = 0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox,
            "area": bbox[2] * bbox[3], "iscrowd": crowd}  # fmt: skip


def _det(image_id: int, cat: int, bbox: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


@pytest.fixture
def gt() -> dict:
    """4 images (one without GT), 3 non-contiguous categories, a crowd region, all sizes."""
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 640, "height": 480},
            {"id": 2, "file_name": "b.jpg", "width": 640, "height": 480},
            {"id": 3, "file_name": "c.jpg", "width": 320, "height": 240},
            {"id": 4, "file_name": "d.jpg", "width": 320, "height": 240},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 7, "name": "bird"}],
        "annotations": [
            _ann(1, 1, 1, [10, 10, 20, 20]),  # small
            _ann(2, 1, 1, [100, 100, 60, 60]),  # medium
            _ann(3, 1, 3, [200, 50, 150, 120]),  # large
            _ann(4, 1, 1, [400, 300, 200, 150], crowd=1),
            _ann(5, 2, 3, [50, 60, 40, 30]),  # medium
            _ann(6, 2, 7, [300, 200, 15, 10]),  # small
            _ann(7, 2, 3, [10, 300, 200, 150]),  # large
            _ann(8, 3, 7, [20, 20, 100, 100]),  # large
            _ann(9, 3, 1, [150, 100, 30, 40]),  # medium
        ],
    }


@pytest.fixture
def results() -> list[dict]:
    """Jittered hits, duplicates, false positives, and detections on the crowd region."""
    return [
        _det(1, 1, [11, 11, 19, 21], 0.9),
        _det(1, 1, [102, 98, 58, 63], 0.8),
        _det(1, 3, [205, 55, 140, 118], 0.75),
        _det(1, 1, [410, 310, 100, 80], 0.6),  # inside the crowd region: ignored
        _det(1, 1, [420, 320, 50, 50], 0.3),  # inside the crowd region: ignored
        _det(1, 3, [500, 10, 50, 50], 0.5),  # false positive
        _det(1, 1, [100, 100, 60, 60], 0.2),  # duplicate: false positive
        _det(2, 3, [52, 58, 42, 33], 0.85),
        _det(2, 7, [298, 201, 17, 11], 0.4),
        _det(2, 3, [15, 310, 190, 140], 0.65),
        _det(2, 7, [300, 200, 30, 30], 0.55),  # low IoU
        _det(2, 1, [0, 0, 10, 10], 0.1),  # false positive
        _det(3, 7, [25, 15, 95, 110], 0.7),
        _det(3, 1, [150, 100, 30, 40], 0.95),
        _det(3, 3, [100, 100, 20, 20], 0.35),  # false positive
        _det(4, 1, [10, 10, 50, 50], 0.45),  # false positive on an image without GT
    ]


def _perfect(gt: dict) -> list[dict]:
    anns = [a for a in gt["annotations"] if not a["iscrowd"]]
    return [_det(a["image_id"], a["category_id"], a["bbox"], 1.0) for a in anns]


def _pycocotools_stats(gt: dict, results: list[dict], img_ids: list[int] | None = None) -> np.ndarray:
    """The reference: plain pycocotools, exactly as its README runs it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if img_ids is not None:
            ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def _as_array(result: EvalResult) -> np.ndarray:
    return np.array([-1.0 if v is None else v for v in result.stats()])


# ---------------------------------------------------------------------------------------
# parity


@pytest.mark.parametrize("backend", BACKENDS)
def test_stats_match_plain_pycocotools(gt, results, backend):
    reference = _pycocotools_stats(gt, results)
    assert 0.0 < reference[0] < 1.0  # the fixture is neither trivial nor perfect
    result = evaluate_coco(gt, results, backend=backend)
    np.testing.assert_allclose(_as_array(result), reference, rtol=0, atol=1e-12)


needs_fast = pytest.mark.skipif(not faster_coco_eval_available(), reason="faster-coco-eval not installed")


def _assert_backends_agree(gt: dict, results: list[dict]) -> None:
    """Same numbers to 1e-12: faster-coco-eval's C++ accumulation can differ in the last bit."""
    slow = evaluate_coco(gt, results, backend="pycocotools")
    fast = evaluate_coco(gt, results, backend="faster_coco_eval")
    np.testing.assert_allclose(_as_array(fast), _as_array(slow), rtol=0, atol=1e-12)
    assert slow.per_class.keys() == fast.per_class.keys()
    for name, ap in slow.per_class.items():
        assert (ap is None) == (fast.per_class[name] is None)
        assert ap is None or abs(ap - fast.per_class[name]) <= 1e-12
    assert (slow.backend, fast.backend) == ("pycocotools", "faster_coco_eval")


@needs_fast
def test_faster_coco_eval_and_pycocotools_agree(gt, results):
    _assert_backends_agree(gt, results)


def _random_case(rng: np.random.Generator) -> tuple[dict, list[dict]]:
    """Random GT (with crowds) and jittered, mislabelled and spurious detections."""
    n_cat = int(rng.integers(1, 5))
    n_img = int(rng.integers(3, 12))
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(1, n_img)]
    anns, dets = [], []
    for img in images:
        for _ in range(rng.integers(0, 8)):
            w, h = rng.uniform(4, 300, 2)
            x, y, cat = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h), int(rng.integers(1, n_cat + 1))
            anns.append(_ann(len(anns) + 1, img["id"], cat, [x, y, w, h], crowd=int(rng.random() < 0.1)))
            for _ in range(rng.integers(0, 3)):
                j = rng.normal(0, 0.1 * min(w, h), 4)
                label = cat if rng.random() < 0.8 else int(rng.integers(1, n_cat + 1))
                box = [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])]
                dets.append(_det(img["id"], label, box, float(rng.random())))
        for _ in range(rng.integers(0, 4)):
            box = [*rng.uniform(0, 300, 2), *rng.uniform(4, 200, 2)]
            dets.append(_det(img["id"], int(rng.integers(1, n_cat + 1)), box, float(rng.random())))
    categories = [{"id": c, "name": f"c{c}"} for c in range(1, n_cat + 1)]
    return {"images": images, "categories": categories, "annotations": anns}, dets


@needs_fast
@pytest.mark.parametrize("seed", range(20))
def test_backends_agree_on_random_data(seed):
    _assert_backends_agree(*_random_case(np.random.default_rng(seed)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_ids_restrict_evaluation(gt, results, backend):
    result = evaluate_coco(gt, results, backend=backend, image_ids=[2, 3])
    np.testing.assert_allclose(_as_array(result), _pycocotools_stats(gt, results, [2, 3]), rtol=0, atol=1e-12)
    assert result.num_images == 2
    assert result.num_detections == sum(r["image_id"] in (2, 3) for r in results)


def test_auto_picks_faster_coco_eval_when_installed(gt, results):
    expected = "faster_coco_eval" if faster_coco_eval_available() else "pycocotools"
    assert evaluate_coco(gt, results).backend == expected


def test_without_faster_coco_eval_auto_falls_back_and_explicit_request_fails(gt, results, monkeypatch):
    from ssodkit.evaluation import coco_eval

    monkeypatch.setattr(coco_eval, "faster_coco_eval_available", lambda: False)
    assert evaluate_coco(gt, results).backend == "pycocotools"
    with pytest.raises(SsodkitError, match="not installed"):
        evaluate_coco(gt, results, backend="faster_coco_eval")


# ---------------------------------------------------------------------------------------
# edge cases


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_predictions_score_one(gt, backend):
    result = evaluate_coco(gt, _perfect(gt), backend=backend)
    assert (result.map, result.map50, result.map75) == (1.0, 1.0, 1.0)
    assert set(result.per_class.values()) == {1.0}


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_results_score_zero(gt, backend):
    result = evaluate_coco(gt, [], backend=backend)
    assert result.stats() == [0.0] * len(STAT_FIELDS)
    assert result.per_class == {"person": 0.0, "car": 0.0, "bird": 0.0}
    assert result.num_detections == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_class_has_ap_one(gt, results, backend):
    person = [r for r in _perfect(gt) if r["category_id"] == 1]
    others = [r for r in results if r["category_id"] != 1]
    per_class = evaluate_coco(gt, person + others, backend=backend).per_class
    assert per_class["person"] == 1.0
    assert per_class["car"] < 1.0 and per_class["bird"] < 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_image_id_is_a_data_error(gt, results, backend):
    with pytest.raises(DataError, match="not in the ground truth"):
        evaluate_coco(gt, [*results, _det(999, 1, [0, 0, 5, 5], 0.5)], backend=backend)


def test_unknown_category_id_is_a_data_error(gt, results):
    with pytest.raises(DataError, match="category id"):
        evaluate_coco(gt, [*results, _det(1, 2, [0, 0, 5, 5], 0.5)], backend="pycocotools")


def test_class_without_gt_in_evaluated_images_is_none(gt, results):
    assert evaluate_coco(gt, results, backend="pycocotools", image_ids=[4]).per_class["bird"] is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_are_not_mutated_and_annotation_id_zero_is_safe(gt, results, backend):
    before_gt, before_res = copy.deepcopy(gt), copy.deepcopy(results)
    reference = evaluate_coco(gt, results, backend=backend)
    assert (gt, results) == (before_gt, before_res)
    zero_based = copy.deepcopy(gt)
    for ann in zero_based["annotations"]:
        ann["id"] -= 1  # COCOeval would treat the match with GT id 0 as unmatched
    assert evaluate_coco(zero_based, results, backend=backend).stats() == reference.stats()


# ---------------------------------------------------------------------------------------
# conversion, tables, files


def test_detections_to_results_converts_xyxy_to_xywh():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.5, 1.5, 2.0, 4.0]])
    out = detections_to_results(7, boxes, torch.tensor([0.9, 0.25]), torch.tensor([2, 0]), [1, 3, 7])
    assert out == [
        {"image_id": 7, "category_id": 7, "bbox": [10.0, 20.0, 40.0, 60.0], "score": pytest.approx(0.9)},
        {"image_id": 7, "category_id": 1, "bbox": [0.5, 1.5, 1.5, 2.5], "score": 0.25},
    ]
    json.dumps(out)  # plain Python types only
    scores, labels = np.array([0.9, 0.25]), np.array([2, 0])
    from_numpy = detections_to_results(7, boxes.numpy(), scores, labels, {0: 1, 2: 7})
    assert [r["bbox"] for r in from_numpy] == [r["bbox"] for r in out]
    assert detections_to_results(1, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), [1]) == []


def test_tables_show_percentages(gt, results):
    from rich.console import Console

    result = evaluate_coco(gt, _perfect(gt), backend="pycocotools")
    console = Console(file=io.StringIO(), width=100)
    console.print(results_table(result, "t"), per_class_table(result))
    text = console.file.getvalue()
    assert "100.0" in text and "person" in text


def test_write_json_atomic_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "m.json"
    write_json_atomic(target, {"a": np.float32(0.5), "b": np.arange(2)})
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]


# ---------------------------------------------------------------------------------------
# CLI


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _main() -> None:  # a callback keeps `evaluate` a sub-command
        pass

    register(app)
    return app


def test_cli_evaluate_predictions_prints_ap_and_writes_metrics(tmp_path, gt, results):
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    out = tmp_path / "m.json"
    args = ["evaluate", "--ann", tmp_path / "gt.json", "--predictions", tmp_path / "res.json", "--out", out]
    run = CliRunner().invoke(_app(), [str(a) for a in args])
    assert run.exit_code == 0, run.output
    expected = evaluate_coco(gt, results)
    assert f"{100 * expected.map:.1f}" in run.stdout
    assert "person" in run.stdout  # per-class table is on by default
    assert EvalResult.model_validate_json(out.read_text()) == expected


@pytest.mark.parametrize("extra", [[], ["--checkpoint", "x.pt"]], ids=["neither", "both"])
def test_cli_needs_exactly_one_source(tmp_path, gt, extra):
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    sources = ["--predictions", str(tmp_path / "res.json")] if extra else []
    run = CliRunner().invoke(_app(), ["evaluate", "--ann", str(tmp_path / "gt.json"), *sources, *extra])
    assert isinstance(run.exception, SsodkitError)
    assert "exactly one of --predictions" in str(run.exception)
