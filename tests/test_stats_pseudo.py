"""`ssodkit stats pseudo`: hand-built pseudo-label sets with known answers, COCOeval parity, CLI."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from ssodkit.data.coco import size_bucket
from ssodkit.errors import ConfigError, DataError
from ssodkit.stats.pseudo import (
    COCO_IOUS,
    PseudoStats,
    compute_pseudo_stats,
    pseudo_label_quality,
)
from tests.conftest import run_cli


def _img(image_id: int, name: str, size: int = 200) -> dict:
    return {"id": image_id, "file_name": name, "width": size, "height": size}


def _ann(ann_id: int, image_id: int, cat: int, bbox: list[float], **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, **extra}


def _det(image_id: int, cat: int, bbox: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def _gt(annotations: list[dict], n_images: int = 2, cats: tuple[int, ...] = (1, 2, 3)) -> dict:
    return {
        "images": [_img(i, f"img{i}.png") for i in range(1, n_images + 1)],
        "categories": [{"id": c, "name": f"class{c}"} for c in cats],
        "annotations": annotations,
    }


@pytest.fixture
def two_tp_one_fp_one_fn() -> tuple[dict, list[dict]]:
    """Image 1: two GT found (IoU ≥ 0.5) and one detection on background; image 2: its GT
    missed, but for a detection below the score threshold that would be a TP."""
    gt = _gt([
        _ann(1, 1, 1, [10, 10, 40, 40]),
        _ann(2, 1, 1, [100, 100, 40, 40]),
        _ann(3, 2, 2, [50, 50, 30, 30]),  # missed
    ])  # fmt: skip
    results = [
        _det(1, 1, [12, 12, 40, 40], 0.9),  # IoU 0.82 with GT 1
        _det(1, 1, [100, 105, 40, 40], 0.8),  # IoU 0.78 with GT 2
        _det(1, 1, [150, 150, 20, 20], 0.7),  # overlaps no GT
        _det(2, 2, [50, 50, 30, 30], 0.2),  # a perfect box, but below --score-thr
    ]
    return gt, results


# --------------------------------------------------------------------------- known answers
def test_two_tp_one_fp_one_fn_give_two_thirds(two_tp_one_fp_one_fn):
    gt, results = two_tp_one_fp_one_fn
    stats = compute_pseudo_stats(gt, results, score_thr=0.5)
    point = stats.at_score_thr
    assert (point.tp, point.fp, point.fn, point.ignored) == (2, 1, 1, 0)
    assert point.precision == pytest.approx(2 / 3) and point.recall == pytest.approx(2 / 3)
    assert (stats.num_pseudo, stats.num_gt, stats.num_detections) == (3, 3, 4)
    quality = pseudo_label_quality(gt, results, 0.5)
    assert quality == pytest.approx(
        {"precision50": 2 / 3, "recall50": 2 / 3, "pseudo_per_image": 1.5, "gt_per_image": 1.5}
    )


def test_sweep_counts_every_detection_above_each_threshold(two_tp_one_fp_one_fn):
    gt, results = two_tp_one_fp_one_fn
    stats = compute_pseudo_stats(gt, results, score_thresholds=[0.1, 0.5, 0.85])
    at_05 = stats.sweeps[0]
    assert at_05.iou == 0.5
    assert [(p.tp, p.fp, p.fn) for p in at_05.points] == [(3, 1, 0), (2, 1, 1), (1, 0, 2)]
    # at score ≥ 0.5, IoU 0.8 keeps only the first detection (0.82); 0.95 none
    by_iou = {round(s.iou, 2): s.points[1].tp for s in stats.sweeps}
    assert by_iou[0.8] == 1 and by_iou[0.95] == 0
    assert [s.iou for s in stats.sweeps] == list(COCO_IOUS)


def test_size_buckets_follow_coco_area_thresholds_at_the_boundaries():
    # GT buckets use the annotation's `area` (as COCOeval), not the box: every box is 10x10
    areas = [32**2 - 1, 32**2, 96**2 - 1, 96**2]
    gt = _gt([_ann(i + 1, 1, 1, [10 * i, 0, 10, 10], area=a) for i, a in enumerate(areas)])
    # pseudo buckets use w·h: 31x33 = 1023, 32x32 = 1024, 95x97 = 9215, 96x96 = 9216
    sizes = [(31, 33), (32, 32), (95, 97), (96, 96)]
    results = [_det(1, 1, [0, 0, w, h], 0.55 + 0.1 * i) for i, (w, h) in enumerate(sizes)]
    stats = compute_pseudo_stats(gt, results, score_thr=0.5)
    assert [size_bucket(a) for a in areas] == ["small", "medium", "medium", "large"]
    by_bucket = {s.bucket: s for s in stats.sizes}
    assert [(by_bucket[b].gt, by_bucket[b].pseudo) for b in ("small", "medium", "large")] == [
        (1, 1), (2, 2), (1, 1),
    ]  # fmt: skip
    assert by_bucket["small"].mean_score == pytest.approx(0.55)
    assert by_bucket["medium"].mean_score == pytest.approx(0.7)
    assert by_bucket["large"].mean_score == pytest.approx(0.85)


def test_a_detection_on_a_crowd_region_is_neither_tp_nor_fp():
    gt = _gt([
        _ann(1, 1, 1, [0, 0, 150, 150], iscrowd=1),
        _ann(2, 1, 1, [160, 160, 30, 30]),
    ])  # fmt: skip
    results = [
        _det(1, 1, [10, 10, 20, 20], 0.9),  # inside the crowd: IoU 1 by COCO's crowd rule
        _det(1, 1, [160, 160, 30, 30], 0.8),  # TP
    ]
    stats = compute_pseudo_stats(gt, results)
    point = stats.at_score_thr
    assert (point.tp, point.fp, point.fn, point.ignored) == (1, 0, 0, 1)
    assert point.precision == 1.0
    assert (stats.num_gt, stats.num_crowd, stats.num_pseudo) == (1, 1, 2)
    assert pseudo_label_quality(gt, results, 0.5)["precision50"] == 1.0


def test_greedy_matching_gives_a_gt_to_the_higher_score_once():
    gt = _gt([_ann(1, 1, 1, [50, 50, 40, 40])])
    results = [
        _det(1, 1, [50, 50, 40, 40], 0.6),  # perfect box, lower score
        _det(1, 1, [55, 55, 40, 40], 0.9),  # IoU 0.62, higher score: takes the GT first
    ]
    stats = compute_pseudo_stats(gt, results, score_thresholds=[0.5, 0.8])
    by_iou = {round(s.iou, 2): [(p.tp, p.fp) for p in s.points] for s in stats.sweeps}
    # IoU 0.5: the 0.9 box takes the GT, so the perfect box is a duplicate (FP)
    assert by_iou[0.5] == [(1, 1), (1, 0)]
    # IoU 0.7: the 0.9 box does not reach, so the perfect one gets the GT
    assert by_iou[0.7] == [(1, 1), (0, 1)]


def test_f1_best_threshold_overall_and_per_class():
    # class 1: four GT far apart; detections TP .9, TP .8, FP .7, FP .6, TP .5, FP .4, FP .3
    gt_boxes = [[0, 0, 20, 20], [40, 0, 20, 20], [80, 0, 20, 20], [120, 0, 20, 20]]
    gt = _gt([_ann(i + 1, 1, 1, b) for i, b in enumerate(gt_boxes)])
    tp_boxes, fp_box = iter(gt_boxes), [0, 150, 20, 20]
    outcomes = [(0.9, True), (0.8, True), (0.7, False), (0.6, False), (0.5, True),
                (0.4, False), (0.3, False)]  # fmt: skip
    results = [_det(1, 1, next(tp_boxes) if tp else fp_box, s) for s, tp in outcomes]
    # a pseudo box scores > τ (the pseudo-labeler's rule): τ just below each score
    stats = compute_pseudo_stats(gt, results, score_thresholds=[0.25, 0.45, 0.65, 0.85])
    f1 = [p.f1 for p in stats.sweeps[0].points]  # 6/11, 6/9, 4/7, 2/5
    assert f1 == pytest.approx([6 / 11, 6 / 9, 4 / 7, 2 / 5])
    assert stats.best_f1.threshold == 0.45 and stats.best_f1.f1 == pytest.approx(2 / 3)
    by_name = {c.name: c for c in stats.classes}
    assert by_name["class1"].best_f1.threshold == 0.45
    at_score = compute_pseudo_stats(gt, results, score_thresholds=[0.5])
    assert at_score.sweeps[0].points[0].tp == 2  # the TP scoring exactly 0.5 is not a pseudo box
    assert by_name["class3"].best_f1 is None  # no GT and no detection: F1 undefined


def test_equal_f1_picks_the_lowest_threshold():
    gt = _gt([_ann(1, 1, 1, [0, 0, 20, 20])])
    stats = compute_pseudo_stats(gt, [_det(1, 1, [0, 0, 20, 20], 0.9)], score_thresholds=[0.2, 0.6])
    assert [p.f1 for p in stats.sweeps[0].points] == [1.0, 1.0]
    assert stats.best_f1.threshold == 0.2


def test_classes_are_sorted_by_gt_frequency_with_pseudo_counts():
    anns = [_ann(1, 1, 1, [0, 0, 10, 10])]
    anns += [_ann(2 + i, 1, 2, [20 * i, 50, 10, 10]) for i in range(3)]
    anns += [_ann(5 + i, 2, 3, [20 * i, 50, 10, 10]) for i in range(2)]
    anns += [_ann(9, 2, 1, [0, 0, 50, 50], iscrowd=1)]  # crowd is not counted
    results = [_det(1, 1, [0, 0, 10, 10], 0.9)] * 4 + [_det(2, 3, [0, 0, 10, 10], 0.3)]
    stats = compute_pseudo_stats(_gt(anns), results, score_thr=0.5)
    assert [(c.name, c.gt, c.pseudo) for c in stats.classes] == [
        ("class2", 3, 0), ("class3", 2, 0), ("class1", 1, 4),
    ]  # fmt: skip
    class1 = stats.classes[2].at_score_thr
    assert (class1.tp, class1.fp, class1.precision, class1.recall) == (1, 3, 0.25, 1.0)
    assert stats.classes[0].at_score_thr.precision is None  # no pseudo box of class2


def test_per_image_summary_names_over_and_under_labelled_images():
    gt = _gt([_ann(i + 1, 2, 1, [30 * i, 0, 20, 20]) for i in range(3)], n_images=3)
    results = [_det(1, 1, [0, 0, 10, 10], 0.9), _det(1, 1, [50, 0, 10, 10], 0.9)]
    summary = compute_pseudo_stats(gt, results).images
    assert [(c.file_name, c.pseudo, c.gt) for c in summary.over_labelled] == [("img1.png", 2, 0)]
    assert [(c.file_name, c.pseudo, c.gt) for c in summary.under_labelled] == [("img2.png", 0, 3)]
    assert (summary.no_pseudo, summary.no_gt, summary.missed, summary.hallucinated) == (2, 2, 1, 1)
    assert summary.mean_pseudo == pytest.approx(2 / 3) and summary.median_gt == 0.0


def test_sweep_equals_matching_only_the_detections_above_each_threshold():
    """Greedy matching by score is prefix-stable: one matching serves every threshold."""
    gt, results = _random_set(np.random.default_rng(1))
    thresholds = [0.2, 0.4, 0.6, 0.8]
    stats = compute_pseudo_stats(gt, results, score_thresholds=thresholds)
    for j, s in enumerate(thresholds):
        kept = [r for r in results if r["score"] >= s]
        alone = compute_pseudo_stats(gt, kept, score_thr=s, score_thresholds=[s])
        for full, part in zip(stats.sweeps, alone.sweeps, strict=True):
            assert full.points[j] == part.points[0]


def test_image_ids_restrict_the_ground_truth(two_tp_one_fp_one_fn):
    gt, results = two_tp_one_fp_one_fn
    on_image_1 = [r for r in results if r["image_id"] == 1]
    quality = pseudo_label_quality(gt, on_image_1, 0.5, image_ids=[1])
    assert quality == pytest.approx(
        {"precision50": 2 / 3, "recall50": 1.0, "pseudo_per_image": 3.0, "gt_per_image": 2.0}
    )
    with pytest.raises(DataError, match="outside the evaluated"):
        pseudo_label_quality(gt, results, 0.5, image_ids=[1])
    with pytest.raises(DataError, match="not in the ground truth"):
        pseudo_label_quality(gt, results, 0.5, image_ids=[7])


def test_quality_is_zero_not_nan_without_boxes():
    gt = _gt([])
    assert pseudo_label_quality(gt, [], 0.5) == {
        "precision50": 0.0, "recall50": 0.0, "pseudo_per_image": 0.0, "gt_per_image": 0.0,
    }  # fmt: skip


def test_bad_thresholds_are_config_errors():
    gt = _gt([])
    with pytest.raises(ConfigError, match="IoU"):
        compute_pseudo_stats(gt, [], iou=0.0)
    with pytest.raises(ConfigError, match="score thresholds"):
        compute_pseudo_stats(gt, [], score_thresholds=[0.5, 1.5])


# --------------------------------------------------------------------------- COCOeval parity
def _random_set(rng: np.random.Generator, n_images: int = 12) -> tuple[dict, list[dict]]:
    """Jittered copies of GT (some duplicated), background boxes, crowd regions, tied scores."""
    anns, results = [], []
    for image_id in range(1, n_images + 1):
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 140, 2)
            w, h = rng.uniform(4, 55, 2)
            cat = int(rng.choice([1, 2, 3]))
            crowd = int(rng.random() < 0.1)
            anns.append(_ann(len(anns) + 1, image_id, cat, [x, y, w, h], area=w * h, iscrowd=crowd))
            for _ in range(rng.integers(0, 3)):
                jx, jy, jw, jh = rng.normal(0, 4, 4)
                box = [x + jx, y + jy, max(w + jw, 1), max(h + jh, 1)]
                results.append(_det(image_id, cat, box, float(rng.choice([0.5, 0.7, rng.random()]))))
        for _ in range(rng.integers(0, 4)):
            x, y = rng.uniform(0, 140, 2)
            w, h = rng.uniform(4, 55, 2)
            cat = int(rng.choice([1, 2, 3]))
            results.append(_det(image_id, cat, [x, y, w, h], float(rng.random())))
    return _gt(anns, n_images=n_images), results


def test_matching_agrees_with_pycocotools_cocoeval():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, results = _random_set(np.random.default_rng(0))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in results]), "bbox")
        evaluator.params.areaRng, evaluator.params.areaRngLbl = [[0, 1e10]], ["all"]
        evaluator.params.maxDets = [1000]
        evaluator.evaluate()
    expected = np.zeros((len(COCO_IOUS), 3), dtype=int)  # TP, FP, ignored per IoU
    for e in filter(None, evaluator.evalImgs):
        matched, ignored = np.asarray(e["dtMatches"]) > 0, np.asarray(e["dtIgnore"]).astype(bool)
        expected += np.stack([(matched & ~ignored).sum(1), (~matched & ~ignored).sum(1),
                              ignored.sum(1)], axis=1)  # fmt: skip
    stats = compute_pseudo_stats(gt, results, score_thr=0.0, score_thresholds=[0.0])
    ours = [(s.points[0].tp, s.points[0].fp, s.points[0].ignored) for s in stats.sweeps]
    assert ours == [tuple(row) for row in expected.tolist()]
    assert expected[:, 0].sum() > 0 and expected[:, 2].sum() > 0  # the case tests both


# --------------------------------------------------------------------------- CLI
@pytest.fixture
def files(tmp_path, two_tp_one_fp_one_fn):
    gt, results = two_tp_one_fp_one_fn
    gt_path, pseudo_path = tmp_path / "gt.json", tmp_path / "pseudo.json"
    gt_path.write_text(json.dumps(gt))
    pseudo_path.write_text(json.dumps(results))
    images = tmp_path / "images"
    images.mkdir()
    for i, colour in ((1, (200, 40, 40)), (2, (40, 40, 200))):
        Image.new("RGB", (200, 200), colour).save(images / f"img{i}.png")
    return gt_path, pseudo_path, images


def _assert_drawn(path):
    assert path.stat().st_size > 0
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 1.0 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10


def test_cli_prints_tables_and_writes_json_and_plots(files, tmp_path):
    gt_path, pseudo_path, images = files
    out, plots = tmp_path / "out" / "stats.json", tmp_path / "plots"
    result = run_cli("stats", "pseudo", "--pseudo", pseudo_path, "--gt", gt_path,
                     "--images", images, "--json", out, "--plots", plots)  # fmt: skip
    assert result.exit_code == 0, result.output
    for text in ("pseudo-labels vs ground truth", "by COCO size bucket", "by class",
                 "66.7 / 66.7 / 66.7 %", "img2.png"):  # fmt: skip
        assert text in result.stdout
    stats = PseudoStats.model_validate_json(out.read_text())
    assert stats.at_score_thr.precision == pytest.approx(2 / 3)
    assert stats.model_dump() == json.loads(out.read_text())
    names = {"pseudo_sizes.png", "pseudo_classes.png", "pseudo_pr_curves.png", "pseudo_f1.png",
             "pseudo_examples.png"}  # fmt: skip
    assert {p.name for p in plots.iterdir()} == names
    for name in names:
        _assert_drawn(plots / name)


def test_cli_thresholds_and_iou_options(files, tmp_path):
    gt_path, pseudo_path, _ = files
    out = tmp_path / "stats.json"
    result = run_cli(
        "stats", "pseudo", "--pseudo", pseudo_path, "--gt", gt_path, "--json", out,
        "--thresholds", "0.1:0.3:0.1", "--iou", "0.6", "--score-thr", "0.1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stats = PseudoStats.model_validate_json(out.read_text())
    assert [p.threshold for p in stats.sweeps[0].points] == [0.1, 0.2, 0.3]
    assert 0.6 in [s.iou for s in stats.sweeps] and stats.iou == 0.6
    assert stats.at_score_thr.tp == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--pseudo", "{tmp}/absent.json"), "absent.json: file not found"),
        (("--thresholds", "0.9:0.1:0.1"), "--thresholds '0.9:0.1:0.1'"),
        (("--iou", "1.5"), "IoU threshold must be in (0, 1]"),
        (("--images", "{tmp}/absent"), "not a folder of images"),
    ],
)
def test_cli_user_errors_are_one_line(files, tmp_path, args, message):
    gt_path, pseudo_path, _ = files
    base = {"--pseudo": str(pseudo_path), "--gt": str(gt_path)}
    extra = {k: v.format(tmp=tmp_path) for k, v in zip(args[::2], args[1::2], strict=True)}
    flat = [item for pair in {**base, **extra}.items() for item in pair]
    result = run_cli("stats", "pseudo", *flat)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1


def test_cli_rejects_pseudo_labels_of_images_not_in_the_gt(files, tmp_path):
    gt_path, _, _ = files
    pseudo_path = tmp_path / "other.json"
    pseudo_path.write_text(json.dumps([_det(99, 1, [0, 0, 10, 10], 0.9)]))
    result = run_cli("stats", "pseudo", "--pseudo", pseudo_path, "--gt", gt_path)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "image_id 99 is not in gt.json" in result.stderr
    assert "Traceback" not in result.output
