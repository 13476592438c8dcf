"""The training loop: exact resume, skipped non-finite steps, SIGINT, checkpoints, logs."""

from __future__ import annotations

import math
import os
import signal

import pytest

from ssodkit.config import MethodConfig
import torch

from ssodkit.engine.checkpoint import load_checkpoint
from ssodkit.engine.metrics import read_metrics
from ssodkit.engine.trainer import Trainer


def train(cfg, **kwargs):
    trainer = Trainer(cfg, **kwargs)
    try:
        return trainer, trainer.run()
    finally:
        trainer.close()


class StopAfter(Trainer):
    """Sends itself SIGINT after `n` steps, as a user pressing Ctrl-C would."""

    stop_after = 3

    def train_step(self, batch):
        out = super().train_step(batch)
        if self.iteration + 1 == self.stop_after:
            os.kill(os.getpid(), signal.SIGINT)
        return out


@pytest.mark.parametrize("detector", ["fcos", "faster_rcnn"])  # Faster R-CNN samples with the global RNG
def test_resume_after_interrupt_equals_uninterrupted_run(tiny_config, detector):
    cfg = tiny_config(schedule__iters=6, output__name="straight", detector__name=detector)
    straight, summary = train(cfg)
    assert summary.status == "finished" and summary.iterations == 6

    cfg = tiny_config(schedule__iters=6, output__name="interrupted", detector__name=detector)
    interrupted = StopAfter(cfg)
    try:
        first = interrupted.run()
    finally:
        interrupted.close()
    assert first.status == "interrupted" and first.iterations == 3
    assert load_checkpoint(first.run_dir / "checkpoints" / "last.pt")["iteration"] == 3

    resumed, second = train(cfg, resume=first.run_dir)
    assert second.iterations == 6
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    # the log holds each iteration once, even though iterations 1-3 ran before the restart
    iters = [r["iter"] for r in read_metrics(first.run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert iters == [1, 2, 3, 4, 5, 6]


def test_non_finite_loss_skips_the_step_and_counts_it(tiny_config):
    cfg = tiny_config(schedule__iters=3)
    trainer = Trainer(cfg)
    original = trainer.method.step
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        losses = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses

    trainer.method.step = sometimes_nan
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    assert summary.skipped_steps == 1 and summary.iterations == 3
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    last = [r for r in read_metrics(summary.run_dir / "metrics.jsonl") if r["type"] == "train"][-1]
    assert last["skipped_steps"] == 1


def test_run_folder_holds_config_checkpoints_metrics_and_eval(tiny_config):
    cfg = tiny_config(schedule__iters=2, eval__interval=2)
    _, summary = train(cfg)
    run = summary.run_dir
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    evals = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "eval"]
    assert evals and "student/map" in evals[0]
    assert list((run / "eval").glob("student_iter*.json"))
    assert summary.final["student"].num_images == 6
    # a second run with the same name never overwrites the first
    _, again = train(cfg)
    assert again.run_dir != run and again.run_dir.name.endswith("-2")


def test_a_run_refused_at_start_up_leaves_no_folder(tiny_config):
    from ssodkit.errors import CapabilityError

    cfg = tiny_config(method__name="soft_teacher", detector__name="fcos", output__name="refused")
    with pytest.raises(CapabilityError):
        Trainer(cfg)
    assert not (cfg.output.runs_dir / "refused").exists()


def test_a_semi_supervised_method_without_unlabeled_images_per_step_is_refused(tiny_config):
    from ssodkit.errors import ConfigError

    with pytest.raises(ConfigError, match="train.unlabeled_batch_size = 0: method 'mean_teacher'"):
        Trainer(tiny_config(method__name="mean_teacher", train__unlabeled_batch_size=0))


def test_method_parameter_typos_are_refused_before_any_data_is_read(tiny_config):
    from ssodkit.errors import ConfigError

    cfg = tiny_config(output__name="typo")
    cfg.data.train_ann = cfg.data.train_ann.parent / "does_not_exist.json"  # would fail later
    cfg.method = MethodConfig(name="mean_teacher", score_trh=0.5)  # built without build_config
    with pytest.raises(ConfigError, match="unknown config key 'method.score_trh'; did you mean 'score_thr'"):
        Trainer(cfg)
    assert not (cfg.output.runs_dir / "typo").exists()
    with pytest.raises(ConfigError, match="unknown config key 'method.score_trh'"):
        tiny_config(method__name="mean_teacher", method__score_trh=0.5)  # refused when the config is loaded


def test_config_yaml_records_every_value_the_run_used_and_reproduces_it(tiny_config):
    from ssodkit.config import build_config, load_saved_config

    trainer = Trainer(tiny_config(method__name="mean_teacher", output__name="resolved"))
    try:
        saved = load_saved_config(trainer.run_dir / "config.yaml")
        assert saved.method.params["score_thr"] == pytest.approx(math.sqrt(0.3))  # FCOS's default, resolved once at start-up
        assert saved.teacher.gamma == 4.0 and saved.method.params["filters"] == ["score"]
        assert build_config(trainer.run_dir / "config.yaml") == saved == trainer.cfg
    finally:
        trainer.close()


def test_init_from_starts_student_and_teacher_from_a_checkpoint_and_refuses_another_detector(tiny_config):
    from ssodkit.errors import ConfigError

    _, first = train(tiny_config(schedule__iters=2, output__name="supervised"))
    ckpt = first.run_dir / "checkpoints" / "last.pt"
    weights = load_checkpoint(ckpt)["student"]
    trainer = Trainer(tiny_config(method__name="mean_teacher", train__unlabeled_batch_size=2, train__init_from=str(ckpt)))
    try:
        for model in (trainer.model, trainer.teacher):
            assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
        assert trainer.iteration == 0
    finally:
        trainer.close()
    with pytest.raises(ConfigError, match=r"train.init_from = .*detector differs .*head_convs 1 vs 2"):
        Trainer(tiny_config(detector__head_convs=2, train__init_from=str(ckpt)))
