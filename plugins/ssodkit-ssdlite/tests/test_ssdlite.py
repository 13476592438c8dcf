"""SSDlite as an outside detector: the protocol's contract, training with the generic-tier
methods, refusal by the others, and the plugin's visibility through `ssodkit plugins`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssodkit.config import build_config
from ssodkit.detectors import (
    Detections,
    DetectorConfig,
    build_detector,
    check_capabilities,
)
from ssodkit.errors import CapabilityError, ConfigError
from ssodkit.plugins import method_class, reset_plugin_manager
from tests.distributions import plugin_rows

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))


def tiny(**fields: object) -> torch.nn.Module:
    return build_detector(DetectorConfig(name="ssdlite", **fields), num_classes=3)


def scene() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    image = torch.rand(3, 96, 128)
    return image, {"boxes": torch.tensor([[10.0, 12, 60, 70], [70, 20, 120, 90]]), "labels": torch.tensor([0, 2])}


def test_predictions_are_in_input_pixels_with_class_probabilities(ssdlite):
    model = tiny(score_thresh=0.0).eval()
    images = [torch.rand(3, 97, 203), torch.rand(3, 150, 61)]  # padded together, never resized
    for det, image in zip(model.predict(images), images):
        h, w = image.shape[-2:]
        assert isinstance(det, Detections) and len(det) > 0
        assert float(det.boxes[:, 2].max()) <= w and float(det.boxes[:, 3].max()) <= h
        assert det.probs is not None and det.probs.shape == (len(det), 3)
        assert torch.allclose(det.probs.gather(1, det.labels[:, None]).squeeze(1), det.scores)


def test_loss_trains_on_pixel_boxes_and_honours_the_protocol_options(ssdlite):
    model = tiny()
    image, target = scene()
    losses = model.loss([image], [target])
    assert set(losses) == {"loss_cls", "loss_box"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert set(model.loss([image], [target], cls_only=True)) == {"loss_cls"}
    # focal changes the classification term only, and down-weights it
    model.eval()
    ce, focal = model.loss([image], [target]), model.loss([image], [target], focal=True)
    assert torch.equal(ce["loss_box"], focal["loss_box"]) and focal["loss_cls"] < ce["loss_cls"]


def test_unweighted_loss_equals_torchvisions(ssdlite):
    """Same matching, box coding and hard-negative mining as `SSD.compute_loss`."""
    from types import SimpleNamespace

    from torchvision.models.detection.ssd import SSD
    from torchvision.ops import box_iou

    model = tiny().eval()
    image, target = scene()
    images = [image, torch.rand(3, 96, 128)]
    targets = [target, {"boxes": torch.tensor([[5.0, 5, 50, 50]]), "labels": torch.tensor([1])}]
    ours = model.loss(images, targets)
    _, outputs, anchors = model._run(images)
    matched = [model.matcher(box_iou(t["boxes"], a)) for t, a in zip(targets, anchors)]
    shifted = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]  # 0 = background there
    theirs = SSD.compute_loss(
        SimpleNamespace(box_coder=model.box_coder, neg_to_pos_ratio=3), shifted, outputs, anchors, matched
    )
    assert torch.allclose(ours["loss_cls"], theirs["classification"], rtol=1e-5)
    assert torch.allclose(ours["loss_box"], theirs["bbox_regression"], rtol=1e-5)


def test_zero_weight_image_adds_exactly_nothing(ssdlite):
    model = tiny().eval()  # fixed BN statistics: the batch composition cannot leak in
    image, target = scene()
    other = torch.rand(3, 96, 128)
    other_t = {"boxes": torch.tensor([[5.0, 5, 50, 50]]), "labels": torch.tensor([1])}
    alone = model.loss([image], [target])
    weighted = model.loss([image, other], [target, other_t], image_weights=torch.tensor([1.0, 0.0]))
    for k in alone:
        assert torch.allclose(alone[k], weighted[k], rtol=1e-4, atol=1e-6), k


def test_a_timm_backbone_is_refused_in_one_line(ssdlite):
    with pytest.raises(ConfigError, match=r"fixed mobilenet_v3_large backbone; detector.backbone 'resnet50'"):
        tiny(backbone="resnet50")


def test_pretrained_asks_torchvision_for_the_imagenet_backbone_and_names_a_failure(ssdlite, monkeypatch):
    from urllib.error import URLError

    from torchvision.models import MobileNet_V3_Large_Weights
    from torchvision.models._api import WeightsEnum

    from ssodkit.errors import SsodkitError

    asked = []

    def offline(weights, *args, **kwargs):
        asked.append(weights)
        raise URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(SsodkitError, match=r"^could not load ImageNet weights for ssdlite's mobilenet_v3_large: "):
        tiny(pretrained=True)
    assert asked == [MobileNet_V3_Large_Weights.IMAGENET1K_V1]
    tiny()  # random init asks for nothing
    assert len(asked) == 1


def test_freeze_bn_freezes_the_backbone_norms(ssdlite):
    from torchvision.ops import FrozenBatchNorm2d

    model = tiny(freeze_bn=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())


@pytest.mark.parametrize("method", ["supervised", "mean_teacher", "mixpl", "unbiased_teacher"])
def test_trains_with_generic_tier_methods(ssdlite, tiny_config, method):
    """A few steps each; τ = 0.01 so that the untrained teacher's boxes do reach the student
    (Unbiased Teacher: through `focal` and `cls_only`)."""
    from tests.test_trainer import train

    # MixPL mixes once its cache (6 images, 2 per step) is full: steps 4 and 5
    iters = {"method__cache_size": 6, "schedule__iters": 5} if method == "mixpl" else {"schedule__iters": 3}
    threshold = {} if method == "supervised" else {"method__score_thr": 0.01, "teacher__burn_in": 0}
    cfg = tiny_config(
        method__name=method, detector__name="ssdlite", train__unlabeled_batch_size=2, output__name=method,
        **iters, **threshold,
    )
    trainer, summary = train(cfg)
    assert type(trainer.model).__name__ == "SSDLiteDetector"
    assert summary.status == "finished" and summary.iterations == cfg.schedule.iters
    last = [json.loads(line) for line in (summary.run_dir / "metrics.jsonl").read_text().splitlines()
            if '"train"' in line][-1]
    unsupervised = {k for k in last if "loss_" in k and not k.startswith("sup_")}
    assert bool(unsupervised) == (method != "supervised"), last
    assert all(torch.isfinite(torch.tensor(v)) for k, v in last.items() if "loss" in k)


def test_a_checkpoint_evaluates_and_pseudo_labels_through_the_cli(ssdlite, tiny_config, tiny_data, cli, tmp_path):
    """The saved config names `ssdlite`: the commands rebuild it through the registry."""
    from tests.test_trainer import train

    _, summary = train(tiny_config(detector__name="ssdlite", schedule__iters=2))
    checkpoint = summary.run_dir / "checkpoints" / "last.pt"
    out = tmp_path / "metrics.json"
    said = cli("evaluate", "--checkpoint", checkpoint, "--ann", tiny_data.val, "--images", tiny_data.images, "--out", out)
    assert said.exit_code == 0, said.output
    assert "map" in json.loads(out.read_text())
    pseudo = tmp_path / "pl.json"
    said = cli("pseudolabel", "--checkpoint", checkpoint, "--images", tiny_data.unlabeled, "--out", pseudo)
    assert said.exit_code == 0, said.output
    assert pseudo.is_file()


@pytest.mark.parametrize(("method", "capability"), [("sed", "dense_outputs"), ("soft_teacher", "two_stage")])
def test_methods_needing_a_capability_refuse_it_in_one_line(ssdlite, method, capability):
    with pytest.raises(CapabilityError) as err:
        check_capabilities("ssdlite", tiny(), method, method_class(method).requires)
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        f"method '{method}' needs the {capability} capability, which detector 'ssdlite' does not "
        "provide (it has: generic tier only)"
    )


def test_train_command_refuses_sed_in_one_line(ssdlite, cli, tiny_data, tmp_path):
    result = cli(
        "train", "--method", "sed", "--detector", "ssdlite", "--train-ann", tiny_data.train,
        "--train-images", tiny_data.images, "--unlabeled", tiny_data.unlabeled,
        "--set", f"data.unlabeled_images={tiny_data.images}", "--set", f"output.runs_dir={tmp_path}",
    )
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: method 'sed' needs the dense_outputs capability, which detector 'ssdlite' does not provide "
        + "(it has: generic tier only)"
    ]


def test_plugins_command_lists_ssdlite_with_its_distribution(ssdlite, cli):
    assert plugin_rows(cli, "ssdlite") == [("detector", "ssodkit-ssdlite", "0.1.0", "ssdlite")]


def test_excluded_by_ssodkit_load_plugins_it_is_gone(ssdlite, cli, monkeypatch, tiny_data, tmp_path):
    monkeypatch.setenv("SSODKIT_LOAD_PLUGINS", "some-other-plugin")
    reset_plugin_manager()
    listed = cli("plugins", "--json")
    assert "ssdlite" not in {r["name"] for r in json.loads(listed.stdout)}
    result = cli(
        "train", "--detector", "ssdlite", "--train-ann", tiny_data.train, "--train-images", tiny_data.images,
        "--set", f"output.runs_dir={tmp_path}",
    )
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: unknown detector 'ssdlite'; valid: faster_rcnn, fcos, retinanet."]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates(ssdlite, recipe):
    cfg = build_config(recipe)
    method_class(cfg.method.name).from_config(cfg, ["a", "b"])
    assert recipe.stem == f"{cfg.method.name}_{cfg.detector.name}"
    assert cfg.detector.backbone == "mobilenet_v3_large"


def test_loading_the_plugin_does_not_import_torch(ssdlite):
    """`ssodkit --help` imports every plugin module: this one must stay light."""
    code = (
        "import sys; from ssodkit.cli.app import build_app; build_app(); "
        "print('ssodkit_ssdlite.plugin' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.stdout.split() == ["True", "False"], out.stderr
