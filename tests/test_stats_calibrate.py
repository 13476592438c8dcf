"""`stats pseudo --calibrate`: per-class τ for a target precision on labeled images."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from ssodkit.config import build_config
from ssodkit.detectors.protocol import Detections
from ssodkit.pseudo.filters import ScoreThreshold, resolve_class_thresholds
from ssodkit.pseudo.labels import PseudoLabels
from ssodkit.stats.calibrate import calibrate_thresholds, calibration_yaml
from tests.conftest import run_cli
from tests.test_cli import tiny_set_args

GT_BOX, BACKGROUND = [10, 10, 40, 40], [150, 150, 20, 20]
# class 1, by descending score: whether the detection is right (each on its own image)
CLASS1 = [(0.95, True), (0.9, True), (0.85, False), (0.8, True), (0.7, True),
          (0.6, False), (0.5, False), (0.4, True), (0.3, False), (0.2, False)]  # fmt: skip


def _case() -> tuple[dict, list[dict]]:
    """10 images. class1: one GT per image, detections as CLASS1 (right: on the GT, wrong: on
    background). class2: 3 GT, found with score 0.9 (too few to calibrate). class3: 10 GT,
    never detected. class4: 10 GT, only wrong detections (no τ reaches the target)."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in range(1, 11)]
    anns, dets = [], []

    def ann(image_id, cat, box):
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": box})

    for i, (score, right) in enumerate(CLASS1, start=1):
        ann(i, 1, GT_BOX)
        dets.append({"image_id": i, "category_id": 1, "bbox": GT_BOX if right else BACKGROUND, "score": score})
    for i in range(1, 4):
        ann(i, 2, [100, 10, 30, 30])
        dets.append({"image_id": i, "category_id": 2, "bbox": [100, 10, 30, 30], "score": 0.9})
    for i in range(1, 11):
        ann(i, 3, [10, 100, 30, 30])
        ann(i, 4, [100, 100, 30, 30])
    dets += [{"image_id": 1, "category_id": 4, "bbox": BACKGROUND, "score": s} for s in (0.9, 0.4)]
    cats = [{"id": c, "name": f"class{c}"} for c in (1, 2, 3, 4)]
    return {"images": images, "annotations": anns, "categories": cats}, dets


@pytest.mark.parametrize(
    ("target", "tau", "tp", "fp"),
    [
        (0.8, 0.6, 4, 1),  # 4/5 = 0.8 exactly: ≥ the target
        (0.75, 0.6, 4, 1),
        (0.6, 0.3, 5, 3),  # 0.625 at 0.3; precision falls again at 0.4 (4/7) — the lowest τ wins
        (0.55, 0.2, 5, 4),  # 5/9
        (0.5, 0.0, 5, 5),  # every box
        (1.0, 0.85, 2, 0),
    ],
)
def test_tau_is_the_lowest_threshold_meeting_the_precision(target, tau, tp, fp):
    gt, dets = _case()
    c1 = calibrate_thresholds(gt, dets, precision=target, global_thr=0.5, min_boxes=10).classes[0]
    assert (c1.name, c1.status, c1.threshold) == ("class1", "calibrated", tau)
    assert (c1.kept, c1.precision, c1.recall) == (tp + fp, tp / (tp + fp), tp / 10)


def test_rare_undetected_and_hopeless_classes_fall_back_and_say_why():
    gt, dets = _case()
    cal = calibrate_thresholds(gt, dets, precision=0.8, global_thr=0.45, min_boxes=10)
    c2, c3, c4 = cal.classes[1:]
    assert (c2.status, c2.threshold, c2.gt, c2.kept) == ("few_boxes", 0.45, 3, 3)
    assert (c3.status, c3.threshold, c3.detections) == ("no_detections", 0.45, 0)
    assert (c4.status, c4.threshold, c4.kept, c4.precision) == ("unreachable", 0.9, 0, None)
    relaxed = calibrate_thresholds(gt, dets, precision=0.8, global_thr=0.45, min_boxes=3)
    assert (relaxed.classes[1].status, relaxed.classes[1].threshold) == ("calibrated", 0.0)
    strict = calibrate_thresholds(gt, dets, precision=0.8, global_thr=0.95, min_boxes=10).classes[3]
    assert (strict.status, strict.threshold) == ("unreachable", 0.95)  # never below the global τ


def test_thresholds_use_the_pseudo_labelers_rule():
    """The per-class filter training uses keeps exactly the boxes calibration counted."""
    gt, dets = _case()
    cal = calibrate_thresholds(gt, dets, precision=0.8, global_thr=0.5)
    names = [c.name for c in cal.classes]
    scores = torch.tensor([d["score"] for d in dets if d["category_id"] == 1])
    det = Detections(torch.zeros(len(scores), 4), scores, torch.zeros(len(scores), dtype=torch.long))
    keep = ScoreThreshold(0.5, resolve_class_thresholds(cal.class_score_thr, names), len(names))
    assert len(keep(PseudoLabels.from_detections([det])).detections[0]) == cal.classes[0].kept == 5


def test_yaml_snippet_is_exact_commented_and_includable_after_a_recipe(tmp_path):
    gt, dets = _case()
    cal = calibrate_thresholds(gt, dets, precision=0.8, global_thr=0.5)
    text = calibration_yaml(cal)
    assert yaml.safe_load(text) == {"method": {"class_score_thr": cal.class_score_thr}}
    assert cal.class_score_thr == {"class1": 0.6, "class2": 0.5, "class3": 0.5, "class4": 0.9}
    line = next(x for x in text.splitlines() if x.strip().startswith("class2:"))
    assert "global τ: 3 GT boxes < --min-boxes 10" in line
    (tmp_path / "base.yaml").write_text("method:\n  name: mean_teacher\n  score_thr: 0.5\n")
    (tmp_path / "thr.yaml").write_text(text)
    (tmp_path / "r.yaml").write_text("_base_: [base.yaml, thr.yaml]\n")
    cfg = build_config(tmp_path / "r.yaml")
    assert cfg.method.name == "mean_teacher" and cfg.method.params["class_score_thr"] == cal.class_score_thr


def test_cli_calibrates_detections_on_labeled_images_to_the_exact_tau(tmp_path):
    gt, dets = _case()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "thr" / "class_thr.yaml"
    result = run_cli(
        "stats", "pseudo", "--calibrate", "--precision", "0.6", "--pseudo", tmp_path / "dets.json",
        "--gt", tmp_path / "gt.json", "--out", out, "--score-thr", "0.45", "--json", tmp_path / "cal.json",
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out.read_text())["method"]["class_score_thr"] == {
        "class1": 0.3, "class2": 0.45, "class3": 0.45, "class4": 0.9,
    }
    assert "per-class τ for pseudo-label precision ≥ 0.6" in result.stdout and "few" not in result.stderr
    assert json.loads((tmp_path / "cal.json").read_text())["classes"][0]["status"] == "calibrated"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--calibrate"], "--calibrate needs --checkpoint"),
        (["--calibrate", "--checkpoint", "x", "--plots", "p"], "--plots and --thresholds do not apply"),
        (["--calibrate", "--checkpoint", "x", "--precision", "0"], "--precision 0: must be in (0, 1]"),
        (["--pseudo", "p.json", "--gt", "g.json", "--out", "o.yaml"], "apply with --calibrate only"),
        (["--gt", "g.json"], "give --pseudo"),
    ],
)
def test_cli_misuse_is_one_line(args, message):
    result = run_cli("stats", "pseudo", *args)
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def split_run(tiny_data, tmp_path_factory):
    """A tiny FCOS trained 2 iterations on a 50 % labeled split (saved under splits/); its
    image root is guessed from the train file, so the split's must be too."""
    runs = tmp_path_factory.mktemp("cal_runs")
    result = run_cli(
        "train", "--method", "supervised", "--detector", "fcos", "--train-ann", tiny_data.train,
        "--labeled-percent", "50", "--iters", "2",
        "--runs-dir", runs, "--name", "cal", *tiny_set_args(),
    )
    assert result.exit_code == 0, result.output
    return runs / "cal"


@pytest.mark.parametrize("which", ["run", "checkpoint"])
def test_cli_runs_a_runs_model_on_its_labeled_split(split_run, tmp_path, which):
    source = split_run if which == "run" else split_run / "checkpoints" / "last.pt"
    out = tmp_path / "thr.yaml"
    result = run_cli(
        "stats", "pseudo", "--calibrate", "--checkpoint", source, "--precision", "0.8",
        "--min-boxes", "2", "--out", out, "--device", "cpu",
    )
    assert result.exit_code == 0, result.output
    labeled = json.loads(next((split_run / "splits").glob("train.1@50.json")).read_text())
    assert f"({len(labeled['images'])} labeled images of train.1@50.json)" in result.stdout
    thresholds = yaml.safe_load(out.read_text())["method"]["class_score_thr"]
    assert list(thresholds) == [c["name"] for c in labeled["categories"]]
    assert all(0.0 <= t <= 1.0 for t in thresholds.values())
    assert "student of" in out.read_text()  # a supervised run has no teacher


def test_cli_defaults_are_the_librarys():
    from ssodkit.cli import stats_cmd
    from ssodkit.stats import calibrate

    assert (stats_cmd.DEFAULT_PRECISION, stats_cmd.DEFAULT_MIN_BOXES) == (
        calibrate.DEFAULT_PRECISION, calibrate.DEFAULT_MIN_BOXES,
    )
