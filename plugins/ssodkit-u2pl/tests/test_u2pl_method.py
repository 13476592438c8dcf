"""The `u2pl` method on real detectors: where its gradient goes, training through the CLI on
FCOS and RetinaNet, its listing by `ssodkit plugins`, and one-line refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from ssodkit.config import build_config
from ssodkit.detectors import DetectorConfig, build_detector
from ssodkit.errors import CapabilityError, ConfigError, SsodkitError
from ssodkit.methods.base import ModelHandle, ViewBatch
from ssodkit.plugins import method_class
from tests.distributions import plugin_rows
from tests.test_cli import tiny_set_args

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))
CLASSES = ["a", "b", "c", "d"]


def method_for(tiny_config, detector: str, **params: object):
    cfg = tiny_config(method__name="u2pl", detector__name=detector, **{f"method__{k}": v for k, v in params.items()})
    return method_class("u2pl").from_config(cfg, CLASSES)


def tiny_detector(name: str) -> torch.nn.Module:
    """A small detector whose class scores differ from cell to cell and class to class (an
    untrained head scores every cell at the focal prior, so nothing would be uncertain)."""
    torch.manual_seed(0)
    model = build_detector(DetectorConfig(name=name, backbone="resnet18", fpn_channels=64, head_convs=1), len(CLASSES))
    conv = model.head.classification_head.cls_logits
    with torch.no_grad():
        conv.weight.normal_(0, 0.3)
        conv.bias.normal_(-1.0, 1.0)
    return model


def batch(images: list[torch.Tensor]) -> ViewBatch:
    n = len(images)
    return ViewBatch(images, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * n,
                     [torch.eye(3, dtype=torch.float64)] * n, list(range(n)), [{} for _ in range(n)])


def captured(model: torch.nn.Module) -> dict[str, list[torch.Tensor]]:
    """The head's raw class and box outputs of the next forward: one `[N, A·C, H, W]` per
    level (the class conv, FCOS's box convs) or `[N, cells, 4]` (RetinaNet's box head)."""
    seen: dict[str, list[torch.Tensor]] = {"cls": [], "box": [], "ctr": []}

    def keep(key):
        def hook(module, args, out):
            seen[key].append(out)
        return hook

    model.head.classification_head.cls_logits.register_forward_hook(keep("cls"))
    regression = model.head.regression_head
    if hasattr(regression, "bbox_ctrness"):
        regression.bbox_reg.register_forward_hook(keep("box"))
        regression.bbox_ctrness.register_forward_hook(keep("ctr"))
    else:
        regression.register_forward_hook(keep("box"))
    return seen


@pytest.mark.parametrize(("name", "over"), [("fcos", "batch"), ("retinanet", "level")])
def test_unreliable_cells_train_only_their_low_ranked_classes(u2pl, tiny_config, name, over):
    """The whole unlabeled loss (reliable Mean Teacher part + negatives): at an unreliable
    cell no gradient reaches the teacher's top r_l − 1 class channels, nor the box and
    centerness outputs; its low-ranked channels do get one, and reliable cells train as usual."""
    from ssodkit_u2pl.cells import negative_classes, split_unreliable, unreliable_share

    student = tiny_detector(name)
    teacher = copy.deepcopy(student).eval()
    method = method_for(tiny_config, name, score_thr=0.3, candidate_floor=0.0, alpha_0=0.5, total_iters=100, percentile_over=over,
                        candidates="all")  # the literal split: boxed cells may be unreliable too
    method.check_detector(student)
    torch.manual_seed(1)
    images = [torch.rand(3, 96, 128), torch.rand(3, 96, 112)]
    view = batch(images)
    pseudo = method.pseudo_labeler(teacher, view, view)  # what the step will compute, and its assignment
    targets = [{"boxes": d.boxes, "labels": d.labels} for d in pseudo.detections]
    _, _, anchors, per_level = student.dense_forward(images)
    positive = torch.stack(student.match(targets, anchors, per_level)) >= 0
    seen = captured(student)
    losses = method.unsupervised_loss(ModelHandle(student), teacher, {"weak": view, "strong": view}, it=10)
    assert {"unsup_loss_cls", "unsup_loss_box", "unsup_loss_neg"} <= set(losses), losses
    assert method.stats["u2pl_alpha_t"] == pytest.approx(0.5 * (1 - 10 / 100))

    # the same split, recomputed from the teacher
    with torch.no_grad():
        probs = [t.sigmoid() for t in teacher.dense(images).cls_logits]
    share = unreliable_share(0.5, 10, 100)
    masks, _ = split_unreliable(probs, share, 0.0, per_level=over == "level")
    unreliable = torch.cat([m.flatten(1) for m in masks], dim=1)  # [N, cells]
    assert unreliable.any()
    flat_probs = torch.cat([p.flatten(1, 3) for p in probs], dim=1)  # [N, cells, K]
    assert (positive & unreliable).any() and (positive & ~unreliable).any()  # the test bites on both kinds
    negative = negative_classes(flat_probs, 3)

    total = sum(losses.values())
    keys = [k for k, v in seen.items() if v]
    raw = torch.autograd.grad(total, [t for k in keys for t in seen[k]], allow_unused=True)
    grads, start = {}, 0
    channels = {"cls": len(CLASSES), "box": 4, "ctr": 1}
    for k in keys:
        parts = [torch.zeros_like(t) if g is None else g for g, t in zip(raw[start : start + len(seen[k])], seen[k])]
        start += len(seen[k])
        # per-level convs: [N, A·C, H, W] → [N, H·W·A, C], the loss's cell order
        grads[k] = torch.cat([
            g.view(g.shape[0], -1, channels[k], *g.shape[-2:]).permute(0, 3, 4, 1, 2).flatten(1, 3) if g.ndim == 4 else g
            for g in parts
        ], dim=1)
    g_cls = grads["cls"]
    assert g_cls[unreliable][~negative[unreliable]].abs().max() == 0  # top r_l − 1: ignored
    assert g_cls[unreliable][negative[unreliable]].abs().sum() > 0  # low-ranked: trained
    assert g_cls[~unreliable].abs().sum() > 0  # reliable cells: Mean Teacher's loss
    for key in ("box", "ctr"):
        if key in grads:
            assert grads[key][unreliable].abs().max() == 0, key  # box (and centerness) untrained there
    assert grads["box"][~unreliable].abs().sum() > 0  # reliable positives were trained


@pytest.mark.parametrize("name", ["fcos", "retinanet"])
def test_with_no_unreliable_cell_the_loss_is_mean_teachers(u2pl, tiny_config, name):
    """At t = T (α_t = 0) every cell is reliable: the unlabeled loss is Mean Teacher's,
    term for term, and the negative term is 0."""
    student = tiny_detector(name).eval()  # fixed BN statistics: two forwards compare exactly
    teacher = copy.deepcopy(student)
    method = method_for(tiny_config, name, score_thr=0.3, candidate_floor=0.0, total_iters=50)
    method.check_detector(student)
    torch.manual_seed(1)
    view = batch([torch.rand(3, 96, 128), torch.rand(3, 96, 112)])
    ours = method.unsupervised_loss(ModelHandle(student), teacher, {"weak": view, "strong": view}, it=50)
    pseudo = method.pseudo_labeler(teacher, view, view)
    assert sum(pseudo.counts) > 0
    mean_teacher = method.pseudo_label_loss(ModelHandle(student), view, pseudo)
    assert set(ours) == set(mean_teacher) | {"unsup_loss_neg"}
    for key, value in mean_teacher.items():
        assert torch.equal(ours[key], value), key
    assert float(ours["unsup_loss_neg"].detach()) == 0.0 and method.stats["u2pl_unreliable"] == 0


@pytest.mark.parametrize(("detector", "contrastive"), [("fcos", False), ("retinanet", True)])
def test_trains_through_the_cli_from_its_recipe(u2pl, cli, tiny_data, tmp_path, detector, contrastive):
    """RetinaNet runs with the contrastive term (anchors at any teacher probability, so the
    untrained teacher yields some), FCOS without."""
    recipe = next(r for r in RECIPES if r.name == f"u2pl_{detector}.yaml" and r.parent.name == "synthetic")
    contrast = {"method.contrastive": "true", "method.contrast_anchor_thr": 0.0} if contrastive else {}
    result = cli(
        "train", "--config", recipe, "--train-ann", tiny_data.train, "--train-images", tiny_data.images,
        "--val-ann", tiny_data.val, "--val-images", tiny_data.images, "--unlabeled", tiny_data.unlabeled,
        "--iters", "3", "--runs-dir", tmp_path, "--name", detector,
        *tiny_set_args(**{
            "data.unlabeled_images": str(tiny_data.images), "data.labeled_percent": 50,
            "method.score_thr": 0.05, "method.candidate_floor": 0.0,
            "teacher.burn_in": 0, "train.unlabeled_batch_size": 2, "schedule.iters": 3, **contrast,
        }),
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / detector / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("type") == "train"]
    assert len(steps) == 3
    assert all("unsup_loss_neg" in s and s["u2pl_unreliable"] > 0 for s in steps), steps[-1]
    alphas = [s["u2pl_alpha_t"] for s in steps]
    assert alphas == pytest.approx([0.2 * (1 - t / 3) for t in range(3)])  # T = schedule.iters
    assert all(torch.isfinite(torch.tensor(v)) for s in steps for k, v in s.items() if "loss" in k)
    assert "name: u2pl" in (tmp_path / detector / "config.yaml").read_text()
    assert all(("unsup_loss_contrast" in s) == contrastive for s in steps)
    if contrastive:
        assert all(s["u2pl_contrast_classes"] > 0 for s in steps), steps


def test_plugins_command_lists_u2pl_with_its_distribution(u2pl, cli):
    assert plugin_rows(cli, "u2pl") == [("method", "ssodkit-u2pl", "0.1.0", "u2pl")]


def test_left_out_by_ssodkit_load_plugins_it_is_gone_and_the_error_names_the_methods(u2pl, monkeypatch):
    from ssodkit.plugins import reset_plugin_manager

    monkeypatch.setenv("SSODKIT_LOAD_PLUGINS", "")
    reset_plugin_manager()
    with pytest.raises(SsodkitError) as err:
        method_class("u2pl")
    head, valid = str(err.value).split("; valid: ")
    assert head == "unknown method 'u2pl'" and "mean_teacher" in valid and "u2pl" not in valid


def test_faster_rcnn_is_refused_in_one_line(u2pl, cli, tiny_data, tmp_path):
    result = cli(
        "train", "--method", "u2pl", "--detector", "faster_rcnn", "--train-ann", tiny_data.train,
        "--train-images", tiny_data.images, "--unlabeled", tiny_data.unlabeled, "--runs-dir", tmp_path,
        *tiny_set_args(**{"data.unlabeled_images": str(tiny_data.images)}),
    )
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        (
            "error: method 'u2pl' supports fcos and retinanet (one-stage heads whose dense outputs carry the "
            "detector's own loss), not detector 'faster_rcnn': its dense outputs are the RPN's class-agnostic "
            "objectness, which has no class ranks"
        )
    ]


def test_a_generic_tier_detector_is_refused_by_capability(u2pl):
    from ssodkit.detectors import check_capabilities

    class GenericOnly(torch.nn.Module):
        num_classes = 4

        def loss(self, images, targets, **kwargs):
            return {}

        def predict(self, images):
            return []

    with pytest.raises(CapabilityError, match=r"^method 'u2pl' needs the dense_outputs capability"):
        check_capabilities("toy", GenericOnly(), "u2pl", method_class("u2pl").requires)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"rank_low": 1}, "method.rank_low"),
        ({"alpha_0": 0}, "method.alpha_0"),
        ({"alpha_0": 1.5}, "method.alpha_0"),
        ({"candidate_floor": 1.0}, "method.candidate_floor"),
        ({"neg_weight": -1}, "method.neg_weight"),
        ({"contrast_temperature": 0}, "method.contrast_temperature"),
        ({"contrastive": True, "contrast_memory": 0}, "method.contrast_memory"),
        ({"contrast": True}, "method.contrast"),  # a typo: unknown key
    ],
)
def test_bad_parameters_are_refused_in_one_line(u2pl, tiny_config, params, message):
    with pytest.raises(ConfigError) as err:
        method_for(tiny_config, "fcos", **params)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_rank_low_beyond_the_classes_is_refused(u2pl, tiny_config):
    with pytest.raises(ConfigError, match=r"^method.rank_low = 5 leaves no negative class with 4 classes"):
        method_for(tiny_config, "fcos", rank_low=5)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipes_load(u2pl, recipe):
    from ssodkit.config import resolve_method

    cfg = resolve_method(build_config(recipe, {}))
    assert cfg.method.name == "u2pl" and cfg.detector.name in {"fcos", "retinanet"}
    assert cfg.method.params["alpha_0"] == 0.2 and cfg.method.params["rank_low"] == 3
