"""Teacher-student engine: EMA, projection, the empty-image rule, Unbiased Teacher, resume."""

from __future__ import annotations

import copy

import pytest
import torch

from ssodkit.data.sampler import InfiniteBatchSampler
from ssodkit.detectors import DetectorConfig, build_detector
from ssodkit.detectors.protocol import Detections
from ssodkit.engine.ema import EMA
from ssodkit.methods.base import ModelHandle, ViewBatch
from ssodkit.methods.mean_teacher import MeanTeacher
from ssodkit.methods.unbiased_teacher import UnbiasedTeacher
from ssodkit.pseudo.filters import ScoreThreshold
from ssodkit.pseudo.labeler import apply_empty_image_rule
from ssodkit.pseudo.labels import PseudoLabels, project_detections
from ssodkit.views.geometry import hflip_matrix, identity_matrix, resize_matrix


def test_ema_moves_every_parameter_exactly_by_m():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in teacher.parameters()]
    m = EMA(momentum=0.25).update(teacher, student, iteration=7)
    assert m == 0.25
    for t, s, b in zip(teacher.parameters(), student.parameters(), before):
        assert torch.allclose(t, b + 0.25 * (s - b), atol=1e-7)


def test_ema_averages_buffers_by_default_and_an_interval_skips_steps():
    torch.manual_seed(0)
    student = torch.nn.BatchNorm1d(3)
    teacher = copy.deepcopy(student)
    student.running_mean.fill_(1.0)
    EMA(momentum=0.25).update(teacher, student, iteration=0)
    assert torch.allclose(teacher.running_mean, torch.full((3,), 0.25))  # averaged, not copied
    every_third = EMA(momentum=0.5, interval=3)
    moved = [every_third.update(teacher, student, iteration=t) for t in range(6)]
    assert moved == [0.0, 0.0, 0.5, 0.0, 0.0, 0.5]  # after steps 3 and 6, as MixPL's hook
    assert torch.allclose(teacher.running_mean, torch.full((3,), 1 - 0.75 * 0.25))


def test_ema_schedule_follows_gamma_over_gamma_plus_t_with_a_floor():
    ema = EMA(gamma=4.0, min_momentum=2e-4)
    assert ema.momentum_at(0) == 1.0  # teacher = student after the first step
    assert ema.momentum_at(4) == pytest.approx(0.5)
    assert ema.momentum_at(10**7) == 2e-4


def test_projection_follows_flip_and_resize_and_drops_erased_boxes():
    det = Detections(torch.tensor([[10.0, 10, 30, 30], [50, 50, 90, 80]]), torch.tensor([0.9, 0.8]),
                     torch.tensor([0, 1]), torch.rand(2, 2))
    m_weak = identity_matrix()
    m_strong = hflip_matrix(200) @ resize_matrix(2.0, 2.0)  # resize ×2, then flip a 200 px wide image
    erased = torch.tensor([[20.0, 100, 80, 170]])  # covers the second box (strong coords) fully
    out = project_detections(det, m_weak, m_strong, (200, 200), erased)
    assert len(out) == 1
    assert torch.allclose(out.boxes[0], torch.tensor([140.0, 20, 180, 60]))
    assert out.labels.tolist() == [0] and out.scores.tolist() == [pytest.approx(0.9)]


def test_filters_keep_scores_above_tau_and_zero_empty_images():
    dets = [
        Detections(torch.tensor([[0.0, 0, 5, 5], [1, 1, 6, 6]]), torch.tensor([0.9, 0.2]), torch.tensor([0, 1])),
        Detections(torch.tensor([[0.0, 0, 5, 5]]), torch.tensor([0.25]), torch.tensor([1])),
    ]
    pseudo = ScoreThreshold(0.3, {1: 0.1}, num_classes=2)(PseudoLabels.from_detections(dets))
    assert pseudo.counts == [2, 1]  # class 1 has its own, lower threshold
    strict = ScoreThreshold(0.5, num_classes=2)(PseudoLabels.from_detections(dets))
    ruled = apply_empty_image_rule(strict, "per_image")
    assert ruled.counts == [1, 0] and ruled.weights.tolist() == [1.0, 0.0]
    assert apply_empty_image_rule(strict, "none").weights.tolist() == [1.0, 1.0]  # the rule can be switched off


def test_empty_image_rule_scopes_per_image_batch_all_and_batch_any():
    """per_image: only the empty image; batch_all (MixPL's fork): the whole batch unless every
    image keeps a box; batch_any (mmdet): the batch only when no image keeps one."""
    box = Detections(torch.tensor([[0.0, 0, 5, 5]]), torch.tensor([0.9]), torch.tensor([0]))
    none = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    mixed = PseudoLabels.from_detections([box, none, box])
    empty = PseudoLabels.from_detections([none, none])
    full = PseudoLabels.from_detections([box, box])
    weights = {rule: [apply_empty_image_rule(p, rule).weights.tolist() for p in (mixed, empty, full)]
               for rule in ("per_image", "batch_all", "batch_any")}
    assert weights["per_image"] == [[1.0, 0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    assert weights["batch_all"] == [[0.0, 0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
    assert weights["batch_any"] == [[1.0, 1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]


def test_a_score_equal_to_tau_is_not_a_pseudo_label():
    """One comparison rule everywhere: score > τ (mmdet's filter_gt_instances)."""
    det = Detections(torch.tensor([[0.0, 0, 5, 5], [1, 1, 6, 6]]), torch.tensor([0.5, 0.5001]), torch.tensor([0, 0]))
    assert ScoreThreshold(0.5, num_classes=1)(PseudoLabels.from_detections([det])).counts == [1]


def _view_batch(images, targets=None):
    n = len(images)
    targets = targets or [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * n
    return ViewBatch(images, targets, [identity_matrix()] * n, list(range(n)), [{} for _ in range(n)])


def _method(cls, tiny_config, name, **params):
    cfg = tiny_config(method__name=name, **{f"method__{k}": v for k, v in params.items()})
    method = cls.from_config(cfg, ["a", "b", "c"])
    detector = build_detector(DetectorConfig(name="fcos", backbone="resnet18", fpn_channels=64, head_convs=1), 3)
    method.check_detector(detector)
    return method, detector


def test_image_without_pseudo_box_above_tau_adds_exactly_zero_unsup_loss(tiny_config):
    method, student = _method(MeanTeacher, tiny_config, "mean_teacher", score_thr=1.0)
    teacher = copy.deepcopy(student).eval()
    images = [torch.rand(3, 96, 96), torch.rand(3, 96, 96)]
    labeled = _view_batch(images[:1], [{"boxes": torch.tensor([[10.0, 10, 50, 50]]), "labels": torch.tensor([1])}])
    unlabeled = {"weak": _view_batch(images), "strong": _view_batch(images)}
    losses = method.step(ModelHandle(student), teacher, labeled, unlabeled, it=5)
    assert not any(k.startswith("unsup") for k in losses)  # τ = 1: no box survives
    assert method.stats["pseudo_per_image"] == 0 and method.stats["pseudo_empty_frac"] == 1.0

    # with τ = 0 the teacher's boxes become targets and the unsupervised loss appears
    method, student = _method(MeanTeacher, tiny_config, "mean_teacher", score_thr=0.0)
    losses = method.step(ModelHandle(student), copy.deepcopy(student).eval(), labeled, unlabeled, it=5)
    assert {"unsup_loss_cls", "unsup_loss_box", "unsup_loss_ctr"} <= set(losses)


def test_unbiased_teacher_unsup_loss_has_no_regression_term(tiny_config):
    method, student = _method(UnbiasedTeacher, tiny_config, "unbiased_teacher", score_thr=0.0)
    images = [torch.rand(3, 96, 96)]
    labeled = _view_batch(images, [{"boxes": torch.tensor([[10.0, 10, 50, 50]]), "labels": torch.tensor([1])}])
    losses = method.step(ModelHandle(student), copy.deepcopy(student).eval(),
                         labeled, {"weak": _view_batch(images), "strong": _view_batch(images)}, it=0)
    unsup = {k for k in losses if k.startswith("unsup")}
    assert unsup == {"unsup_loss_cls"}
    assert {"sup_loss_box", "sup_loss_ctr"} <= set(losses)  # labeled data still regresses


def test_trainer_owns_the_teacher_burn_in_copies_the_student_then_ema_moves_it_by_exactly_m(tiny_config):
    """Unbiased Teacher declares keep-rate 0.9996 (m = 4e-4); the trainer runs the burn-in
    (supervised steps, teacher = student after each) and then the EMA."""
    from ssodkit.engine.trainer import Trainer

    cfg = tiny_config(method__name="unbiased_teacher", method__score_thr=0.0, teacher__burn_in=2,
                      train__unlabeled_batch_size=2)
    assert cfg.teacher.momentum == 4e-4 and cfg.teacher.burn_in == 2  # declared default, user's burn-in
    trainer = Trainer(cfg)
    try:
        stream = trainer.data.batches(0)
        for _ in range(2):
            losses = trainer.train_step(next(stream))
            assert losses is not None and not any(k.startswith("unsup") for k in losses)
            for t, s in zip(trainer.teacher.state_dict().values(), trainer.model.state_dict().values()):
                assert torch.equal(t, s)
            trainer.iteration += 1
        before = [p.clone() for p in trainer.teacher.parameters()]
        losses = trainer.train_step(next(stream))
        assert "unsup_loss_cls" in losses
        for t, s, b in zip(trainer.teacher.parameters(), trainer.model.parameters(), before):
            assert torch.allclose(t, (1 - 4e-4) * b + 4e-4 * s, atol=1e-7)
    finally:
        trainer.close()


def test_unbiased_teacher_trains_labeled_images_in_both_views_in_and_after_burn_in(tiny_config, monkeypatch):
    """Official trainer: burn-in on label_data_q + label_data_k, then the same supervised batch
    beside the pseudo-labeled strong view; the teacher averages the BatchNorm statistics too."""
    from ssodkit.engine.trainer import Trainer

    calls: list[tuple[int, bool]] = []  # (images, unsupervised?) of every student loss call
    real_loss = ModelHandle.loss

    def spy(self, images, targets, **kwargs):
        calls.append((len(images), "image_weights" in kwargs))
        return real_loss(self, images, targets, **kwargs)

    monkeypatch.setattr(ModelHandle, "loss", spy)
    cfg = tiny_config(method__name="unbiased_teacher", method__score_thr=0.0, teacher__burn_in=1,
                      train__unlabeled_batch_size=2)
    assert cfg.teacher.buffers == "ema" and cfg.method.params["labeled_views"] == "weak_strong"
    n = cfg.train.batch_size
    trainer = Trainer(cfg)
    try:
        stream = trainer.data.batches(0)
        losses = trainer.train_step(next(stream))  # burn-in
        assert calls == [(2 * n, False)] and not any(k.startswith("unsup") for k in losses)
        trainer.iteration += 1
        calls.clear()
        t_buffers = [b.clone() for b in trainer.teacher.buffers()]
        batch = next(stream)
        for views in (batch[0][:n], batch[0][n:]), (batch[1]["weak"], batch[1]["strong"]):
            for weak, strong in zip(*views):  # the strong views continue the weak ones
                assert torch.equal(weak["matrix"], strong["matrix"]) and torch.equal(weak["boxes"], strong["boxes"])
                assert weak["image_id"] == strong["image_id"] and not torch.equal(weak["image"], strong["image"])
        trainer.train_step(batch)
        assert calls == [(2 * n, False), (2, True)]  # weak + strong labeled, then the strong unlabeled view
        floats = [(t, s, b) for t, s, b in zip(trainer.teacher.buffers(), trainer.model.buffers(), t_buffers)
                  if t.is_floating_point()]
        assert floats and any(not torch.equal(s, b) for _, s, b in floats)  # BatchNorm statistics moved
        for t, s, b in floats:
            torch.testing.assert_close(t, (1 - 4e-4) * b + 4e-4 * s)
    finally:
        trainer.close()

    calls.clear()
    single = Trainer(tiny_config(method__name="unbiased_teacher", method__labeled_views="labeled", teacher__burn_in=1,
                                 train__unlabeled_batch_size=2, output__name="ut_single"))
    try:
        single.train_step(next(single.data.batches(0)))
        assert calls == [(n, False)]
    finally:
        single.close()


def test_unbiased_teacher_keeps_pseudo_boxes_under_erasing_mean_teacher_drops_them(tiny_config):
    det = Detections(torch.tensor([[10.0, 10, 30, 30], [50, 50, 90, 80]]), torch.tensor([0.9, 0.8]),
                     torch.tensor([0, 1]))
    weak = _view_batch([torch.rand(3, 100, 100)])
    strong = _view_batch([torch.rand(3, 100, 100)])
    strong.extras = [{"erased": torch.tensor([[0.0, 0.0, 40.0, 40.0]])}]  # covers the first box
    ut, _ = _method(UnbiasedTeacher, tiny_config, "unbiased_teacher")
    mt, _ = _method(MeanTeacher, tiny_config, "mean_teacher")
    assert ut.pseudo_labeler.project_all([det], weak, strong)[0].labels.tolist() == [0, 1]
    assert mt.pseudo_labeler.project_all([det], weak, strong)[0].labels.tolist() == [1]


def test_no_method_module_imports_the_engine():
    """The trainer owns the teacher: methods declare, the engine runs (no methods → engine edge)."""
    import ast
    from pathlib import Path

    import ssodkit.methods

    for path in Path(ssodkit.methods.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("ssodkit.engine"), f"{path.name} imports {node.module}"


def test_sampler_keeps_the_ratio_and_is_deterministic_by_seed():
    labeled = InfiniteBatchSampler(10, 2, seed=1)
    unlabeled = InfiniteBatchSampler(50, 8, seed=2)
    first = [(next(a), next(b)) for a, b in [(iter(labeled), iter(unlabeled))] for _ in range(5)]
    again = [(next(a), next(b)) for a, b in [(iter(InfiniteBatchSampler(10, 2, seed=1)), iter(InfiniteBatchSampler(50, 8, seed=2)))] for _ in range(5)]
    assert first == again
    assert all(len(lab) == 2 and len(unl) == 8 for lab, unl in first)
    other = [next(it) for it in [iter(InfiniteBatchSampler(10, 2, seed=3))] for _ in range(5)]
    assert other != [lab for lab, _ in first]
    # DDP: ranks read disjoint slices of each epoch
    r0 = {i for b in [next(it) for it in [iter(InfiniteBatchSampler(10, 5, seed=1, rank=0, world_size=2))]] for i, _ in b}
    r1 = {i for b in [next(it) for it in [iter(InfiniteBatchSampler(10, 5, seed=1, rank=1, world_size=2))]] for i, _ in b}
    assert r0.isdisjoint(r1) and len(r0 | r1) == 10


def test_mean_teacher_trains_and_resume_restores_the_teacher_exactly(tiny_config):
    from tests.test_trainer import StopAfter, train

    overrides = dict(method__name="mean_teacher", train__unlabeled_batch_size=2, schedule__iters=5, method__score_thr=0.05)
    straight, summary = train(tiny_config(output__name="mt", **overrides))
    assert summary.status == "finished"
    interrupted = StopAfter(tiny_config(output__name="mt_stop", **overrides))
    try:
        first = interrupted.run()
    finally:
        interrupted.close()
    resumed, _ = train(tiny_config(output__name="mt_stop", **overrides), resume=first.run_dir)
    for (name, a), b in zip(straight.teacher.state_dict().items(), resumed.teacher.state_dict().values()):
        assert torch.equal(a, b), name
    assert set(summary.final) == {"student", "teacher"}  # eval reports both
    from ssodkit.engine.metrics import read_metrics

    logged = [r for r in read_metrics(summary.run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert any("unsup_loss_cls" in r for r in logged) and "pseudo_per_image" in logged[-1]
    # benchmark mode: the unlabeled file has hidden boxes, so pseudo-label quality is logged
    evals = [r for r in read_metrics(summary.run_dir / "metrics.jsonl") if r["type"] == "eval"]
    assert {"pseudo/precision50", "pseudo/recall50", "pseudo/pseudo_per_image", "pseudo/gt_per_image"} <= set(evals[-1])
    assert evals[-1]["pseudo/gt_per_image"] > 0


def test_mean_teacher_with_zero_unsup_weight_trains_the_student_exactly_like_supervised(tiny_config):
    """Guards against the unlabeled branch leaking into training by any other path."""
    from tests.test_trainer import train

    common = dict(schedule__iters=3, train__unlabeled_batch_size=2)
    sup, _ = train(tiny_config(output__name="sup", **common))
    mt, _ = train(tiny_config(output__name="mt0", method__name="mean_teacher", method__unsup_weight=0.0,
                              method__score_thr=0.0, **common))
    for (name, a), b in zip(sup.model.named_parameters(), mt.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_class_agnostic_nms_keeps_one_box_per_object_whatever_its_class():
    from ssodkit.methods.teacher_student import TeacherStudentParams
    from ssodkit.pseudo.filters import ClassAgnosticNMS, build_filter_chain

    det = Detections(
        boxes=torch.tensor([[0.0, 0, 10, 10], [0.5, 0, 10, 10], [20, 20, 30, 30], [20, 20, 30, 31]]),
        scores=torch.tensor([0.6, 0.8, 0.5, 0.4]),
        labels=torch.tensor([0, 1, 2, 2]),
    )
    kept = ClassAgnosticNMS(0.7)(PseudoLabels.from_detections([det])).detections[0]
    assert kept.labels.tolist() == [1, 2] and kept.scores.tolist() == pytest.approx([0.8, 0.5])
    chain = build_filter_chain(["score", "class_agnostic_nms"], TeacherStudentParams(score_thr=0.45), ["a", "b", "c"])
    assert chain(PseudoLabels.from_detections([det])).counts == [2]


@pytest.mark.parametrize("mode", ["freeze", "update"])
def test_unlabeled_forwards_leave_batchnorm_running_statistics_alone_by_default(mode):
    from ssodkit.methods.teacher_student import frozen_bn_statistics

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    before = net[1].running_mean.clone()
    with frozen_bn_statistics(net, mode == "freeze"):
        out = net(torch.rand(2, 3, 8, 8) * 5)
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-5  # still normalised by the batch
    assert torch.equal(net[1].running_mean, before) == (mode == "freeze")
    assert net[1].momentum == 0.1  # restored


@pytest.mark.parametrize("mode", ["freeze", "running", "update"])
def test_unlabeled_batchnorm_modes_normalise_and_update_as_named(mode):
    from ssodkit.methods.teacher_student import unlabeled_batchnorm

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    net[1].running_mean.fill_(0.3)
    before = net[1].running_mean.clone()
    x = torch.rand(2, 3, 8, 8) * 5
    with unlabeled_batchnorm(net, mode):
        out = net(x)
    with torch.no_grad():
        as_evaluated = net.eval()(x) if mode != "update" else None
    net.train()
    batch_normalised = bool(out.mean(dim=(0, 2, 3)).abs().max() < 1e-5)
    assert batch_normalised == (mode != "running")
    if mode == "running":  # the output evaluation (and a teacher) would give on the same image
        assert torch.allclose(out, as_evaluated, atol=1e-6)
    assert torch.equal(net[1].running_mean, before) == (mode != "update")
    assert net[1].training and net[1].momentum == 0.1  # restored


def test_the_training_loop_does_not_import_the_diagnostics():
    """`engine/` (the loop, its data and checkpoints) never imports `stats/`: the pseudo-label
    quality log goes through `ssodkit.pseudo`."""
    import ast
    from pathlib import Path

    import ssodkit.engine

    for path in Path(ssodkit.engine.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("ssodkit.stats"), f"{path.name} imports {node.module}"
