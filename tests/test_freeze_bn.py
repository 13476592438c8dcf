"""Backbone BatchNorm: frozen for a pretrained backbone (as the detection references do),
trainable from scratch, resolved once and recorded."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ssodkit.config import RunConfig, load_saved_config, migrate_legacy
from ssodkit.detectors import DetectorConfig, build_detector
from ssodkit.engine.runtime import load_model_from_checkpoint, resolve_freeze_bn

SMALL = dict(backbone="resnet18", fpn_channels=64, head_convs=1)


def tiny(name: str = "fcos", **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_detector(DetectorConfig(name=name, **{**SMALL, **kw}), 3)


def batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def one_step(model: nn.Module) -> None:
    img = torch.rand(3, 64, 64)
    target = {"boxes": torch.tensor([[8.0, 8, 40, 40]]), "labels": torch.tensor([1])}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    loss = sum(model("loss", [img, img.flip(-1)], [target, target]).values())
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("name", ["fcos", "retinanet", "faster_rcnn"])
def test_freeze_bn_leaves_no_batchnorm_in_the_backbone(name):
    model = tiny(name, freeze_bn=True)
    assert batchnorms(model) == []  # the FPN and heads have none of their own either
    frozen = [m for m in model.backbone.body.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == len(batchnorms(tiny(name, freeze_bn=False).backbone.body)) > 0


def test_a_training_step_leaves_frozen_batchnorm_alone_and_trains_the_rest():
    model = tiny(freeze_bn=True)
    frozen = {
        f"{name}.{key}": value.clone()
        for name, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)
        for key, value in m.state_dict().items()
    }
    assert frozen and not any(name in frozen for name, _ in model.named_parameters())  # buffers only
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    one_step(model)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())  # statistics and affine
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(n.startswith("backbone.body.") for n in changed)  # convolutions still train
    assert any(n.startswith("head.") for n in changed)


def test_from_scratch_batchnorm_trains_by_default():
    cfg = DetectorConfig(name="fcos", **SMALL)
    assert cfg.freeze_bn is None and not cfg.backbone_bn_frozen  # auto, not pretrained
    model = tiny()
    bn = model.backbone.body.bn1
    assert isinstance(bn, nn.BatchNorm2d) and bn.weight.requires_grad
    mean, weight = bn.running_mean.clone(), bn.weight.detach().clone()
    one_step(model)
    assert not torch.equal(bn.running_mean, mean) and not torch.equal(bn.weight, weight)


def test_null_means_frozen_exactly_when_the_backbone_is_pretrained():
    assert DetectorConfig(pretrained=True).backbone_bn_frozen
    assert not DetectorConfig(pretrained=False).backbone_bn_frozen
    assert not DetectorConfig(pretrained=True, freeze_bn=False).backbone_bn_frozen
    assert DetectorConfig(pretrained=False, freeze_bn=True).backbone_bn_frozen


def test_pretrained_statistics_are_loaded_before_the_freeze(monkeypatch):
    """No download: timm's factory is wrapped to stand in 'ImageNet' statistics, which the
    frozen layers must carry."""
    import ssodkit.detectors.backbone as backbone

    real = backbone.timm.create_model
    asked = []

    def fake_pretrained(name, *, pretrained, **kw):
        asked.append(pretrained)
        body = real(name, pretrained=False, **kw)
        for m in batchnorms(body):
            m.running_mean.fill_(0.25)
        return body

    monkeypatch.setattr(backbone.timm, "create_model", fake_pretrained)
    model = tiny(pretrained=True)  # freeze_bn left null
    assert asked == [True]
    frozen = [m for m in model.backbone.body.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and batchnorms(model) == []
    assert all(torch.all(m.running_mean == 0.25) for m in frozen)


def test_the_run_resolves_null_from_pretrained_or_the_init_from_checkpoint():
    def run(**detector) -> RunConfig:
        return RunConfig.model_validate({"detector": detector})

    assert resolve_freeze_bn(run(pretrained=True)).detector.freeze_bn is True
    assert resolve_freeze_bn(run()).detector.freeze_bn is False
    assert resolve_freeze_bn(run(pretrained=True, freeze_bn=False)).detector.freeze_bn is False
    # init_from: its weights replace ImageNet's, so its run's choice carries over
    assert resolve_freeze_bn(run(), run(freeze_bn=True)).detector.freeze_bn is True
    assert resolve_freeze_bn(run(pretrained=True), run(freeze_bn=False)).detector.freeze_bn is False
    assert resolve_freeze_bn(run(freeze_bn=False), run(freeze_bn=True)).detector.freeze_bn is False


def test_a_config_saved_before_freeze_bn_existed_keeps_training_its_batchnorm(tmp_path):
    old = RunConfig.model_validate({"detector": {"pretrained": True}}).model_dump(mode="json")
    del old["detector"]["freeze_bn"]
    assert RunConfig.model_validate(migrate_legacy(old)).detector.backbone_bn_frozen is False
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))  # a run folder to --resume
    assert load_saved_config(tmp_path / "config.yaml").detector.freeze_bn is False


def test_frozen_runs_record_it_checkpoint_it_and_hand_it_to_init_from(tiny_config):
    from ssodkit.cli.train_cmd import _frozen_bn_note
    from ssodkit.engine.trainer import Trainer

    cfg = tiny_config(
        method__name="mean_teacher", train__unlabeled_batch_size=2, schedule__iters=2,
        detector__freeze_bn=True, output__name="frozen",
    )
    trainer = Trainer(cfg)
    try:
        summary = trainer.run()
        assert batchnorms(trainer.model) == [] and batchnorms(trainer.teacher) == []
    finally:
        trainer.close()
    assert load_saved_config(summary.run_dir / "config.yaml").detector.freeze_bn is True
    assert _frozen_bn_note(cfg, trainer.cfg) == ", backbone BatchNorm frozen (detector.freeze_bn)"
    ckpt = summary.run_dir / "checkpoints" / "last.pt"
    loaded = load_model_from_checkpoint(ckpt)  # pretrained is switched off there; freeze_bn is not
    assert batchnorms(loaded.model) == []

    # Left null, a run that starts from the checkpoint keeps its backbone BatchNorm frozen ...
    follow = tiny_config(train__init_from=str(ckpt), output__name="follow")
    trainer = Trainer(follow)
    try:
        assert trainer.cfg.detector.freeze_bn is True and batchnorms(trainer.model) == []
        assert _frozen_bn_note(follow, trainer.cfg) == ", backbone BatchNorm frozen (as in train.init_from)"
        assert load_saved_config(trainer.run_dir / "config.yaml").detector.freeze_bn is True
    finally:
        trainer.close()
    # ... and set, it may train it: the weights load either way (same tensor names).
    trainer = Trainer(tiny_config(train__init_from=str(ckpt), detector__freeze_bn=False, output__name="thaw"))
    try:
        assert batchnorms(trainer.model) and trainer.model.backbone.body.bn1.weight.requires_grad
        source = loaded.model.backbone.body.bn1
        assert torch.equal(trainer.model.backbone.body.bn1.running_var, source.running_var)
        assert _frozen_bn_note(trainer.cfg, trainer.cfg) == ""
    finally:
        trainer.close()
