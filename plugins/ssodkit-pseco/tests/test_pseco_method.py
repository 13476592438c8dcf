"""The pseco method on the built-in Faster R-CNN: MSL's aligned grids and shared targets,
PCV through the student's own RoI head, training end to end through the CLI, its listing by
`ssodkit plugins`, and refusal on a one-stage detector."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssodkit.config import build_config
from ssodkit.detectors import DetectorConfig, build_detector
from ssodkit.errors import ConfigError
from ssodkit.plugins import method_class
from tests.conftest import TINY_FLAGS
from tests.distributions import plugin_rows

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))
SMALL = {"backbone": "resnet18", "fpn_channels": 32}


def tiny_frcnn(roi_scores: str = "softmax") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_detector(DetectorConfig(name="faster_rcnn", roi_scores=roi_scores, **SMALL), 3).eval()


def method(tiny_config, **params):
    cfg = tiny_config(method__name="pseco", **{f"method__{k}": v for k, v in params.items()})
    return method_class("pseco").from_config(cfg, ["a", "b", "c"])


def scene() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images = [torch.rand(3, 97, 150), torch.rand(3, 120, 90)]  # odd sides, different sizes
    targets = [
        {"boxes": torch.tensor([[10.0, 12, 60, 70], [70, 20, 140, 90]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[5.0, 30, 80, 110]]), "labels": torch.tensor([1])},
    ]
    return images, targets


def test_half_view_levels_sit_on_the_full_views_next_level_grid(pseco):
    """Level l of V2 (× 0.5, padded to 64) has the shape and, × 2, the anchors of V1's level
    l + 1 (padded to 128): V2's P2–P5 train against V1's P3–P6."""
    from ssodkit_pseco.method import MSL_PAD, half_view

    model = tiny_frcnn()
    images, _ = scene()
    full_list, full = model.features(images, size_divisible=MSL_PAD)
    half_images = half_view(images)
    assert [tuple(i.shape[-2:]) for i in half_images] == [(49, 75), (60, 45)]
    assert torch.allclose(half_images[1][:, 3, 7], images[1][:, 6:8, 14:16].mean((1, 2)), atol=1e-6)
    half_list, half = model.features(half_images, size_divisible=MSL_PAD // 2)
    assert tuple(full_list.tensors.shape[-2:]) == (128, 256) and tuple(half_list.tensors.shape[-2:]) == (64, 128)
    full_levels, half_levels = list(full.values()), list(half.values())
    for level in range(4):
        assert half_levels[level].shape == full_levels[level + 1].shape
    full_dense, half_dense = model.rpn_dense(full_list, full), model.rpn_dense(half_list, half)
    for level in range(4):  # same centres; sizes as torchvision rounds its base anchors (±1 px)
        half_anchors, full_anchors = half_dense.anchors[level] * 2, full_dense.anchors[level + 1]
        centres = [(a[:, :2] + a[:, 2:]) / 2 for a in (half_anchors, full_anchors)]
        assert torch.equal(centres[0], centres[1]) and torch.allclose(half_anchors, full_anchors, atol=1)


def test_the_half_view_trains_with_exactly_the_full_views_targets(pseco, tiny_config, monkeypatch):
    from ssodkit_pseco.method import RoiTargets

    pseco_method = method(tiny_config)
    model = tiny_frcnn()
    images, targets = scene()
    rois = [torch.tensor([[10.0, 12, 62, 70], [0, 0, 40, 40]]), torch.tensor([[4.0, 28, 80, 108]])]
    roi = RoiTargets(
        rois, torch.tensor([1, 0, 2]), torch.randn(3, 4) * 0.1, torch.ones(3),
        [torch.tensor([0, -1]), torch.tensor([0])], [t["boxes"][:1] for t in targets],
    )
    seen: dict[str, list] = {"rpn": [], "roi": []}
    rpn_loss_assigned, roi_outputs = model.rpn_loss_assigned, model.roi_outputs

    def spy_rpn(objectness, deltas, labels, regression, weights, cls_only):
        seen["rpn"].append((objectness.shape, labels, regression))
        return rpn_loss_assigned(objectness, deltas, labels, regression, weights, cls_only)

    def spy_roi(features, boxes, sizes):
        seen["roi"].append((tuple(next(iter(features.values())).shape[-2:]), boxes, sizes))
        return roi_outputs(features, boxes, sizes)

    monkeypatch.setattr(model, "rpn_loss_assigned", spy_rpn)
    monkeypatch.setattr(model, "roi_outputs", spy_roi)
    losses = pseco_method.view_losses(model, images, targets, torch.ones(2), roi)
    assert set(losses) == {f"loss_{k}{v}" for k in ("rpn_cls", "rpn_box", "cls", "box") for v in ("", "_v2")}
    assert all(torch.isfinite(v) for v in losses.values())

    (full_shape, full_labels, full_reg), (half_shape, half_labels, half_reg) = seen["rpn"]
    p2 = 32 * 64 * 3  # V1's P2 anchors (128 × 256 padded, stride 4, 3 ratios): no V2 counterpart
    assert full_shape[0] == 2 * full_labels[0].numel() and half_shape[0] == 2 * (full_labels[0].numel() - p2)
    for i in range(2):
        assert torch.equal(half_labels[i], full_labels[i][p2:]) and torch.equal(half_reg[i], full_reg[i][p2:])
        assert (full_labels[i][p2:] == 1).any()  # the shared targets do hold objects
    (full_grid, full_boxes, full_sizes), (half_grid, half_boxes, half_sizes) = seen["roi"][:2]
    assert full_grid == (32, 64) and half_grid == (16, 32)  # V2's P2 on V1's P3 grid
    assert all(torch.equal(h, f * 0.5) for h, f in zip(half_boxes, full_boxes))
    assert half_sizes == [(49, 75), (60, 45)] and full_sizes == [(97, 150), (120, 90)]

    # msl off: V1 alone, at the detector's own padding (32: a 128 × 160 batch)
    seen["rpn"].clear()
    seen["roi"].clear()
    alone = method(tiny_config, msl=False).view_losses(model, images, targets, torch.ones(2), roi)
    assert set(alone) == {f"loss_{k}" for k in ("rpn_cls", "rpn_box", "cls", "box")}
    assert [grid for grid, _, _ in seen["roi"]] == [(32, 40)] and len(seen["rpn"]) == 1


def test_pcv_weights_are_the_mean_iou_of_the_students_decoded_boxes(pseco, tiny_config):
    from ssodkit_pseco.method import RoiTargets
    from torchvision.ops import box_iou

    pseco_method = method(tiny_config)
    model = tiny_frcnn()
    images, targets = scene()
    _, features = model.features(images)
    gt = targets[0]["boxes"]
    rois = [torch.tensor([[12.0, 10, 58, 72], [8.0, 14, 64, 66], [72.0, 22, 138, 88], [0, 0, 30, 30]])]
    assigned = torch.tensor([0, 0, 1, -1])
    labels = torch.tensor([1, 1, 3, 0])
    roi = RoiTargets(rois, labels, torch.zeros(4, 4), torch.ones(4), [assigned], [gt])
    _, deltas = model.roi_outputs(features, rois, [(97, 150)])
    weights = pseco_method.consistency(model, roi, deltas)
    decoded = model.decode_roi_boxes(deltas.detach().reshape(4, 4, 4)[torch.arange(4), labels], rois[0])
    sigma0 = box_iou(decoded[:2], gt[:1]).mean()
    sigma1 = box_iou(decoded[2:3], gt[1:2]).mean()
    assert torch.allclose(weights, torch.stack([sigma0, sigma0, sigma1, torch.tensor(0.0)]), atol=1e-6)
    assert 0 < float(sigma0) < 1
    no_pcv = method(tiny_config, pcv=False).consistency(model, roi, deltas)
    assert no_pcv.tolist() == [1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("roi_cls", ["softmax", "sigmoid_focal"])
def test_the_teacher_rescores_every_proposal_and_its_roi_test_is_the_detectors(pseco, tiny_config, roi_cls):
    """One teacher pass: per-class scores of every proposal (as the classifier was trained),
    the refined box of its arg-max class, and — with the detector's own softmax — exactly
    the detector's detections when it scores RoIs the same way (`detector.roi_scores`, which
    the method sets to match unless the user did)."""
    from ssodkit.methods.base import ViewBatch

    pseco_method = method(tiny_config, roi_cls=roi_cls, test_score_thr=0.0)
    assert pseco_method.cfg.detector.roi_scores == ("softmax" if roi_cls == "softmax" else "sigmoid")
    model = tiny_frcnn(pseco_method.cfg.detector.roi_scores)
    images, _ = scene()
    weak = ViewBatch(images, [], [torch.eye(3, dtype=torch.float64)] * 2, [0, 1])
    outputs, detections = pseco_method.teacher_pass(model, weak)
    image_list, features = model.features(images)
    proposals = model.proposals(image_list, features)
    assert all(torch.equal(a, b) for a, b in zip(outputs.proposals, proposals))
    logits, _ = model.roi_outputs(features, proposals, image_list.image_sizes)
    if roi_cls == "softmax":
        expected = torch.softmax(logits, -1)[:, 1:]
    else:
        expected = torch.sigmoid(logits[:, 1:] - logits[:, :1])
    assert torch.allclose(torch.cat(outputs.scores), expected, atol=1e-6)
    labels = [s.argmax(1) for s in outputs.scores]
    refined = model.refine_boxes(features, proposals, labels, image_list.image_sizes)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(outputs.refined, refined))
    model.roi_heads.score_thresh = 0.0
    for ours, theirs in zip(detections, model.predict(images)):
        assert len(ours) == len(theirs) == 100
        assert torch.allclose(ours.boxes, theirs.boxes, atol=1e-4) and torch.equal(ours.labels, theirs.labels)
        assert torch.allclose(ours.scores, theirs.scores) and torch.allclose(ours.probs, theirs.probs)


def tiny_args(tiny_data, tmp_path, **extra) -> list[str]:
    flags = {**TINY_FLAGS, "schedule.iters": 2, "train.unlabeled_batch_size": 2, **extra}
    args = []
    for key, value in flags.items():
        args += ["--set", f"{key}={json.dumps(value) if isinstance(value, list) else value}"]
    return [
        "--train-ann", str(tiny_data.train), "--train-images", str(tiny_data.images),
        "--unlabeled", str(tiny_data.unlabeled), "--set", f"data.unlabeled_images={tiny_data.images}",
        "--runs-dir", str(tmp_path), *args,
    ]


def test_pseco_trains_end_to_end_through_the_cli(pseco, cli, tiny_data, tmp_path):
    """Two steps; thresholds low enough that the untrained teacher's boxes reach PLA."""
    result = cli(
        "train", "--method", "pseco", "--detector", "faster_rcnn", "--name", "pseco",
        *tiny_args(tiny_data, tmp_path, **{"method.score_thr": 0.01, "method.rpn_pseudo_thr": 0.01,
                                           "method.cls_pseudo_thr": 0.01}),
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "pseco" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "unsup_loss_cls" in r][-1]
    for key in ("rpn_cls", "rpn_box", "cls", "box"):
        assert torch.isfinite(torch.tensor(last[f"unsup_loss_{key}"])) and f"unsup_loss_{key}_v2" in last
    assert last["pla_pos_per_image"] > 0 and 0 < last["pcv_mean"] <= 1
    saved = (tmp_path / "pseco" / "config.yaml").read_text()
    assert "roi_scores: sigmoid" in saved  # evaluated with the scores it was trained for


def test_pseco_is_listed_from_its_distribution(pseco, cli):
    assert plugin_rows(cli, "pseco") == [("method", "ssodkit-pseco", "0.1.0", "pseco")]


def test_excluded_by_ssodkit_load_plugins_it_is_gone(pseco, cli, monkeypatch, tiny_data, tmp_path):
    from ssodkit.plugins import reset_plugin_manager

    monkeypatch.setenv("SSODKIT_LOAD_PLUGINS", "some-other-plugin")
    reset_plugin_manager()
    listed = cli("plugins", "--json")
    assert "pseco" not in {r["name"] for r in json.loads(listed.stdout)}
    result = cli("train", "--method", "pseco", *tiny_args(tiny_data, tmp_path))
    assert result.exit_code == 2
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        "error: unknown method 'pseco'; valid: mean_teacher, mixpl, sed, soft_teacher, supervised, unbiased_teacher."
    ]


def test_a_one_stage_detector_is_refused_in_one_line(pseco, cli, tiny_data, tmp_path):
    result = cli("train", "--method", "pseco", "--detector", "fcos", *tiny_args(tiny_data, tmp_path))
    assert result.exit_code == 2
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        "error: method 'pseco' needs the two_stage capability, which detector 'fcos' does not provide "
        + "(it has: dense_outputs)"
    ]


@pytest.mark.parametrize(
    ("params", "message"),
    [({"pla_iou_thr": 0}, "pla_iou_thr"), ({"roi_cls": "softmax_focal"}, "roi_cls"),
     ({"score_thr": 0.6}, "cannot be lower")],
)
def test_bad_parameters_are_one_line_config_errors(pseco, tiny_config, params, message):
    with pytest.raises(ConfigError, match=message) as err:
        method(tiny_config, **params)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates(pseco, recipe):
    cfg = build_config(recipe)
    method_class(cfg.method.name).from_config(cfg, ["a", "b"])
    assert recipe.stem == f"{cfg.method.name}_{cfg.detector.name}"


def test_loading_the_plugin_does_not_import_torch(pseco):
    """`ssodkit --help` imports every plugin module: this one must stay light."""
    code = (
        "import sys; from ssodkit.cli.app import build_app; build_app(); "
        "print('ssodkit_pseco.plugin' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.stdout.split() == ["True", "False"], out.stderr
