"""The labeled probe (pseudo-label quality on labeled images) and `teacher.burn_in: auto`."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from torch import nn

from ssodkit.config import TeacherConfig
from ssodkit.data.coco import load_coco
from ssodkit.detectors.protocol import Detections
from ssodkit.engine.burn_in import BurnIn, rule_fires
from ssodkit.engine.checkpoint import load_checkpoint
from ssodkit.engine.metrics import read_metrics
from ssodkit.engine.probe import LabeledProbe, spread
from ssodkit.engine.trainer import Trainer
from ssodkit.plugins import build_view
from ssodkit.pseudo.labeler import PseudoLabeler, PseudoLabelParams
from ssodkit.views.config import ViewConfig
from tests.test_trainer import StopAfter, train


class Scripted(nn.Module):
    """A 'detector' that answers `predict` with the next detections of a list."""

    def __init__(self, answers: list[Detections]) -> None:
        super().__init__()
        self.answers = list(answers)

    def forward(self, mode: str, images: list[torch.Tensor]) -> list[Detections]:
        assert mode == "predict"
        return [self.answers.pop(0) for _ in images]


def _probe(tiny_data, n=5):
    coco = load_coco(tiny_data.train, tiny_data.images)
    ids = spread(coco.image_ids, n)
    return coco, LabeledProbe(coco, ids, build_view("weak", ViewConfig()), seed=0, report=lambda marker: None)


def _ground_truth_in_view(probe, *, score, label_shift=0):
    """Each probe image's own boxes in its weak view (what an oracle teacher would say)."""
    out = []
    for i in range(len(probe)):
        sample = probe.dataset[i]
        n = len(sample["labels"])
        out.append(Detections(sample["boxes"].float(), torch.full((n,), score), sample["labels"] + label_shift))
    return out


def _score(probe, coco, answers):
    keep = PseudoLabeler(PseudoLabelParams(score_thr=0.5), coco.class_names).keep
    return probe.score(Scripted(answers), keep, coco.index_to_cat_id, batch_size=2, device=torch.device("cpu"))


def test_probe_views_are_the_weak_view_fixed_per_image_and_spread_over_the_labeled_set(tiny_data):
    assert spread(list(range(10)), 4) == [0, 2, 5, 7] and spread([1, 2], 5) == [1, 2]
    coco, probe = _probe(tiny_data)
    assert len(probe) == 5 and probe.coco.image_ids == spread(coco.image_ids, 5)
    first, again = probe.dataset[0], probe.dataset[0]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["matrix"], again["matrix"])
    sizes = {tuple(probe.dataset[i]["image"].shape[-2:]) for i in range(len(probe))}
    assert len(sizes) > 1  # scale jitter drawn per image, not one eval size


def test_probe_of_a_teacher_that_predicts_the_ground_truth_is_perfect_and_of_one_that_predicts_nothing_recalls_zero(tiny_data):
    coco, probe = _probe(tiny_data)
    oracle = _score(probe, coco, _ground_truth_in_view(probe, score=0.9))
    assert oracle["probe/precision50"] == pytest.approx(1.0) and oracle["probe/recall50"] == pytest.approx(1.0)
    assert oracle["probe/pseudo_per_image"] == oracle["probe/gt_per_image"] > 0

    empty = [Detections(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64))] * len(probe)
    nothing = _score(probe, coco, empty)
    assert nothing["probe/recall50"] == 0.0 and nothing["probe/pseudo_per_image"] == 0.0

    # the run's τ applies (score 0.4 is not > 0.5: nothing kept), and matching is class-aware
    assert _score(probe, coco, _ground_truth_in_view(probe, score=0.4))["probe/recall50"] == 0.0
    wrong = _score(probe, coco, _ground_truth_in_view(probe, score=0.9, label_shift=1))
    assert wrong["probe/precision50"] < 0.5 and wrong["probe/recall50"] < 0.5


def test_probing_leaves_the_global_rng_alone(tiny_data):
    coco, probe = _probe(tiny_data, n=2)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    _score(probe, coco, _ground_truth_in_view(probe, score=0.9))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("history", "fires"),
    [
        ([(0.6, 0.2), (0.6, 0.4)], False),  # too few probes to call recall flat
        ([(0.6, 0.2), (0.6, 0.4), (0.6, 0.405)], False),  # still rising over the last two
        ([(0.6, 0.2), (0.6, 0.4), (0.6, 0.405), (0.6, 0.39)], True),  # flat for two probes
        ([(0.6, 0.2), (0.6, 0.4), (0.6, 0.405), (0.4, 0.39)], False),  # flat, but not precise
    ],
)
def test_auto_burn_in_rule_needs_precision_above_the_floor_and_a_recall_that_stopped_rising(history, fires):
    assert rule_fires(history, TeacherConfig(burn_in="auto")) is fires


def test_a_fixed_burn_in_is_a_plain_iteration_count():
    burn_in = BurnIn(TeacherConfig(burn_in=3))
    assert [burn_in.active(i) for i in range(5)] == [True, True, True, False, False]
    assert not any(burn_in.due(i) for i in range(10))


# --------------------------------------------------------------------------- in the trainer


def _train_records(run_dir):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "train"]


def test_a_run_with_the_probe_trains_bit_identically_to_one_without_and_logs_it(tiny_config):
    """Faster R-CNN samples RoIs with the global RNG: a probe that drew from it would change
    the training; the probe runs at the mid-run evaluation."""
    common = dict(method__name="mean_teacher", detector__name="faster_rcnn", schedule__iters=4,
                  eval__interval=2, train__unlabeled_batch_size=2, method__score_thr=0.0)
    on, with_probe = train(tiny_config(**common, eval__probe_images=4, output__name="on"))
    off, without = train(tiny_config(**common, eval__probe_images=0, output__name="off"))
    assert _train_records(with_probe.run_dir) == [
        {**r, "sec_per_iter": a["sec_per_iter"], "wall_s": a["wall_s"]}  # the clock's, not the training's
        for r, a in zip(_train_records(without.run_dir), _train_records(with_probe.run_dir))
    ]
    for (name, a), b in zip(on.model.state_dict().items(), off.model.state_dict().values()):
        assert torch.equal(a, b), name
    evals = [r for r in read_metrics(with_probe.run_dir / "metrics.jsonl") if r["type"] == "eval"]
    assert [r["iter"] for r in evals] == [2, 4]
    assert {"probe/precision50", "probe/recall50", "probe/pseudo_per_image", "probe/gt_per_image"} <= set(evals[0])
    assert evals[0]["probe/gt_per_image"] > 0
    assert not any(k.startswith("probe/") for r in read_metrics(without.run_dir / "metrics.jsonl") for k in r)


def test_supervised_runs_probe_the_student(tiny_config):
    _, summary = train(tiny_config(schedule__iters=2, eval__interval=2, eval__probe_images=3))
    (record,) = [r for r in read_metrics(summary.run_dir / "metrics.jsonl") if r["type"] == "eval"]
    assert record["probe/gt_per_image"] > 0 and "probe/recall50" in record


def _scripted_probe(monkeypatch, sequence):
    """Replace the probe by a script of (precision, recall); return the iterations it ran at."""
    calls: list[int] = []

    def probe_quality(self):
        calls.append(self.iteration)
        p, r = sequence[min(len(calls), len(sequence)) - 1]
        return {"probe/precision50": p, "probe/recall50": r, "probe/pseudo_per_image": 1.0, "probe/gt_per_image": 1.0}

    monkeypatch.setattr(Trainer, "probe_quality", probe_quality)
    return calls


def _auto(tiny_config, **overrides):
    return tiny_config(**{"method__name": "mean_teacher", "method__score_thr": 0.0, "train__unlabeled_batch_size": 2,
                          "teacher__burn_in": "auto", "teacher__burn_in_check": 1, **overrides})


def test_auto_burn_in_ends_at_the_probe_where_the_rule_fires(tiny_config, monkeypatch):
    calls = _scripted_probe(monkeypatch, [(0.3, 0.1), (0.6, 0.3), (0.6, 0.305), (0.7, 0.30), (0.0, 0.0)])
    cfg = _auto(tiny_config, schedule__iters=6, teacher__burn_in_max=5)
    trainer, summary = train(cfg)
    assert calls == [1, 2, 3, 4, 6] and trainer.burn_in.end == 4  # 6: the final evaluation
    records = read_metrics(summary.run_dir / "metrics.jsonl")
    (end,) = [r for r in records if r["type"] == "burn_in_end"]
    assert (end["iter"], end["reason"], end["probe/precision50"]) == (4, "probe", 0.7)
    assert [r["iter"] for r in records if r["type"] == "probe"] == [1, 2, 3, 4]
    # steps 0-3 were supervised only, steps 4 and 5 used the unlabeled images
    assert [("pseudo_per_image" in r) for r in _train_records(summary.run_dir)] == [False] * 4 + [True] * 2
    assert yaml.safe_load((summary.run_dir / "config.yaml").read_text())["teacher"]["burn_in"] == "auto"


def test_auto_burn_in_ends_at_its_maximum_when_the_rule_never_fires(tiny_config, monkeypatch):
    calls = _scripted_probe(monkeypatch, [(0.2, 0.5)])  # recall flat, never precise enough
    trainer, summary = train(_auto(tiny_config, schedule__iters=5, teacher__burn_in_max=3, teacher__burn_in_check=2))
    assert calls == [2, 3, 5] and trainer.burn_in.end == 3
    (end,) = [r for r in read_metrics(summary.run_dir / "metrics.jsonl") if r["type"] == "burn_in_end"]
    assert (end["iter"], end["reason"]) == (3, "max")


def test_resume_after_the_auto_burn_in_ended_keeps_the_chosen_iteration(tiny_config, monkeypatch):
    script = [(0.6, 0.5), (0.6, 0.5), (0.6, 0.5)]  # fires at the third probe: iteration 3
    _scripted_probe(monkeypatch, script)
    straight, _ = train(_auto(tiny_config, schedule__iters=6, output__name="straight"))
    assert straight.burn_in.end == 3

    calls = _scripted_probe(monkeypatch, script)
    cfg = _auto(tiny_config, schedule__iters=6, output__name="interrupted")
    interrupted = type("StopAt4", (StopAfter,), {"stop_after": 4})(cfg)
    try:
        first = interrupted.run()
    finally:
        interrupted.close()
    assert first.iterations == 4 and calls == [1, 2, 3]
    assert load_checkpoint(first.run_dir / "checkpoints" / "last.pt")["burn_in"]["end"] == 3

    calls = _scripted_probe(monkeypatch, [(0.0, 0.0)])  # a probe now would never end it
    resumed, second = train(cfg, resume=first.run_dir)
    assert second.iterations == 6 and resumed.burn_in.end == 3 and calls == [6]  # the final evaluation only
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_auto_burn_in_needs_the_probe(tiny_config):
    from ssodkit.errors import ConfigError

    with pytest.raises(ConfigError, match="eval.probe_images"):
        _auto(tiny_config, eval__probe_images=0)
    assert _auto(tiny_config, schedule__iters=100).teacher.burn_in_max == 50  # half the schedule
    assert tiny_config(method__name="mean_teacher").teacher.burn_in_max is None  # unused: not resolved


def test_an_unreadable_probe_image_is_reported_and_left_out_not_scored_as_missed(tiny_data, tmp_path):
    coco = dataclasses.replace(load_coco(tiny_data.train, tiny_data.images), image_root=tmp_path)  # no files
    reported = []
    probe = LabeledProbe(coco, coco.image_ids[:1], build_view("weak", ViewConfig()), 0, reported.append)
    quality = _score(probe, coco, [])
    assert len(reported) == 1 and quality["probe/recall50"] == 0.0 and quality["probe/gt_per_image"] == 0.0
