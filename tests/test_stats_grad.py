"""`ssodkit stats grad`: the GHM core by hand, a constructed case end to end, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ssodkit.data.synthetic import CLASSES
from ssodkit.detectors.protocol import Detections, TwoStage, protocol_methods
from ssodkit.errors import CapabilityError
from ssodkit.mixing import MixItem, pseudo_mixup, pseudo_mosaic
from ssodkit.stats.grad import (
    GROUPS,
    _check_dense,
    _place,
    density,
    ghm_groups,
    ghm_norm,
    gradient_density,
)
from tests.conftest import run_cli
from tests.test_cli import data_args, tiny_set_args


# --------------------------------------------------------------------------- pure core
def test_ghm_norm_of_known_logits():
    logits = torch.tensor([0.0, math.log(3.0), -math.log(3.0), 20.0])
    target = torch.tensor([1.0, 0.0, 1.0, 1.0])
    assert ghm_norm(logits, target).tolist() == pytest.approx([0.5, 0.75, 0.75, 0.0], abs=1e-6)


def test_groups_follow_the_pseudo_and_gt_tables():
    # anchors × 2 classes; anchor 3 is ignored by the matcher
    logits = torch.zeros(4, 2)
    y_pseudo = torch.tensor([[1, 0], [1, 0], [0, 0], [1, 1]])
    y_gt = torch.tensor([[1, 0], [0, 1], [0, 1], [1, 1]])
    valid = torch.tensor([True, True, True, False])
    groups = ghm_groups(logits, y_pseudo, y_gt, valid)
    counts = {name: g.numel() for name, g in groups.items()}
    assert counts == {"TP": 1, "FP": 1, "FN": 2, "TN": 2}
    # σ(0) = 0.5 everywhere: g is 0.5 whatever the target
    assert all(torch.allclose(g, torch.full_like(g, 0.5)) for g in groups.values())


def test_group_norms_use_the_pseudo_target():
    logits = torch.tensor([[math.log(3.0), math.log(3.0)]])  # σ = 0.75
    y_pseudo, y_gt = torch.tensor([[1, 0]]), torch.tensor([[0, 1]])
    groups = ghm_groups(logits, y_pseudo, y_gt, torch.tensor([[True, True]]))  # per-element valid
    assert groups["FP"].tolist() == pytest.approx([0.25])  # pseudo 1: |0.75 − 1|
    assert groups["FN"].tolist() == pytest.approx([0.75])  # pseudo 0: |0.75 − 0|
    assert groups["TP"].numel() == groups["TN"].numel() == 0


def test_density_sums_to_one_and_lands_in_the_right_bins():
    g = torch.tensor([0.05, 0.5, 0.75, 0.95, 1.0])
    d = density(g, 10)
    assert d.sum().item() == pytest.approx(1.0)
    assert d.tolist() == pytest.approx([0.2, 0, 0, 0, 0, 0.2, 0, 0.2, 0, 0.4])
    assert density(torch.zeros(0), 4).tolist() == [0.0] * 4


def test_gt_goes_through_a_mix_exactly_as_the_pseudo_boxes():
    """`_place` moves GT boxes with the placements; on the pseudo boxes it must agree with
    what the mixing module itself does to them."""
    g = torch.Generator().manual_seed(1)
    items = [
        MixItem(
            torch.zeros(3, 60 + 10 * i, 80, dtype=torch.uint8),
            torch.tensor([[5.0, 5.0, 30.0, 40.0], [50.0, 10.0, 79.0, 50.0]]),
            torch.tensor([0, 1]), torch.ones(2),
        )
        for i in range(4)
    ]
    mixes = (pseudo_mixup(items[0], items[1], g, flip_p=1.0), pseudo_mosaic(items, g, size_range=(40, 90)))
    for mixed in mixes:
        placed = [
            _place({"boxes": it.boxes, "labels": it.labels}, p) for it, p in zip(items, mixed.placements)
        ]
        assert torch.allclose(torch.cat([p["boxes"] for p in placed]), mixed.boxes)
        assert torch.equal(torch.cat([p["labels"] for p in placed]), mixed.labels)


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def fcos_checkpoint(tiny_data, tmp_path_factory):
    """A tiny FCOS trained for 2 iterations through the CLI (random-ish weights: the
    constructed case below does not depend on them)."""
    runs = tmp_path_factory.mktemp("grad_runs")
    result = run_cli(
        "train", "--method", "supervised", "--detector", "fcos", *data_args(tiny_data),
        "--iters", "2", "--runs-dir", str(runs), "--name", "grad",
        *tiny_set_args(**{"schedule.iters": 2, "eval.interval": 1000}),
    )
    assert result.exit_code == 0, result.output
    return runs / "grad" / "checkpoints" / "last.pt"


def _one_class_wrong(tiny_data) -> dict[int, Detections]:
    """Pseudo labels = GT, except the largest box of each image gets the next class: on its
    anchors the true class is missed (FN) and the wrong one asserted (FP)."""
    from ssodkit.data.coco import load_coco

    coco = load_coco(tiny_data.val, tiny_data.images, check_images="none")
    out = {}
    for image_id in coco.image_ids:
        boxes, labels = (torch.from_numpy(a) for a in coco.training_targets(image_id))
        labels = labels.clone()
        if len(labels):
            largest = int(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).argmax())
            labels[largest] = (labels[largest] + 1) % len(coco.class_names)
        out[image_id] = Detections(boxes, torch.ones(len(labels)), labels)
    return out


def test_every_group_is_populated_in_every_view_of_a_constructed_case(fcos_checkpoint, tiny_data):
    stats = gradient_density(
        fcos_checkpoint, tiny_data.val, tiny_data.images, max_images=3, bins=5, device="cpu",
        pseudo_labels=_one_class_wrong(tiny_data),
    )
    assert [v.view for v in stats.views] == ["weak", "strong", "mixup", "mosaic"]
    assert stats.detector == "fcos" and stats.score_thr == pytest.approx(math.sqrt(0.3)) and stats.num_images == 3
    for view in stats.views:
        assert [g.group for g in view.groups] == list(GROUPS)
        for group in view.groups:
            assert group.count > 0, (view.view, group.group)
            assert sum(group.density) == pytest.approx(1.0)
            assert 0.0 <= group.mean_g <= 1.0
        assert sum(g.share for g in view.groups) == pytest.approx(1.0)
        # every valid anchor contributes one element per class
        assert sum(g.count for g in view.groups) == view.anchors * len(CLASSES)
    assert stats.view("mixup").gt_boxes > stats.view("weak").gt_boxes  # two images' GT


def test_cli_prints_the_table_and_writes_json_and_plots(fcos_checkpoint, tiny_data, tmp_path):
    out, plots = tmp_path / "grad.json", tmp_path / "plots"
    result = run_cli(
        "stats", "grad", "--checkpoint", fcos_checkpoint, "--ann", tiny_data.val,
        "--images", tiny_data.images, "--views", "weak,mixup", "--max-images", "2", "--bins", "4",
        "--score-thr", "0.05", "--json", out, "--plots", plots, "--device", "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "mean g" in result.stdout and "TN" in result.stdout
    data = json.loads(out.read_text())
    assert [v["view"] for v in data["views"]] == ["weak", "mixup"]
    assert data["bin_edges"] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert data["score_thr"] == 0.05 and data["target"] == "pseudo"
    pngs = sorted(p.name for p in plots.iterdir())
    assert pngs == ["grad_mixup.png", "grad_views.png", "grad_weak.png"]
    for name in pngs:
        png = (plots / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_faster_rcnn_is_refused_in_one_line(fcos_checkpoint, tiny_data, tmp_path):
    from ssodkit.config import RunConfig
    from ssodkit.detectors import build_detector
    from ssodkit.engine.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(fcos_checkpoint)
    cfg = RunConfig.model_validate(state["config"])
    cfg.detector.name = "faster_rcnn"
    model = build_detector(cfg.detector, len(state["classes"]))
    path = tmp_path / "frcnn.pt"
    config = cfg.model_dump(mode="json")
    save_checkpoint({**state, "config": config, "student": model.state_dict(), "teacher": None}, path)

    result = run_cli("stats", "grad", "--checkpoint", path, "--ann", tiny_data.val, "--images", tiny_data.images)
    assert result.exit_code == 2
    assert "dense_outputs" in result.stderr and "faster_rcnn" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_detector_without_the_capability_at_all_is_refused():
    class TwoStageOnly(torch.nn.Module):
        pass

    for name in protocol_methods(TwoStage):  # every TwoStage method, and no `dense`
        setattr(TwoStageOnly, name, lambda self, *args: None)

    with pytest.raises(CapabilityError, match="needs the dense_outputs capability.*it has: two_stage"):
        _check_dense(TwoStageOnly(), "custom")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--checkpoint": "/nonexistent/ckpt.pt"}, "/nonexistent/ckpt.pt: checkpoint not found"),
        ({"--ann": "/nonexistent/gt.json"}, "/nonexistent/gt.json: file not found"),
        ({"--images": "/nonexistent/images"}, "/nonexistent/images: not a folder of images"),
        ({"--views": "weak,mixpu"}, "unknown view 'mixpu'; valid: mixup, mosaic, strong, weak. Did you mean"),
        ({"--score-thr": "1.5"}, "score threshold must be in [0, 1], got 1.5"),
    ],
)
def test_bad_input_is_one_line(change, message, fcos_checkpoint, tiny_data):
    flags = {"--checkpoint": fcos_checkpoint, "--ann": tiny_data.val, "--images": tiny_data.images}
    flags.update(change)
    result = run_cli("stats", "grad", *(str(x) for kv in flags.items() for x in kv))
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_default_threshold_follows_the_runs_method_then_the_detector():
    from ssodkit.config import build_config
    from ssodkit.pseudo.labeler import run_param

    st = build_config(None, {"method.name": "soft_teacher"})
    assert run_param(st, "score_thr", 0.3) == 0.5  # the method's own default
    mt = build_config(None, {"method.name": "mean_teacher"})
    assert run_param(mt, "score_thr", 0.3) == 0.3  # no method default: the detector's
    set_ = build_config(None, {"method.name": "mean_teacher", "method.score_thr": 0.55})
    assert run_param(set_, "score_thr", 0.3) == 0.55
