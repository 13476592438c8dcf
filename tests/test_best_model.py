"""best.pt holds the better of teacher and student, and whatever runs a checkpoint uses that
one; a teacher started from a checkpoint with a fast EMA schedule is warned about."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console

from ssodkit.engine.checkpoint import (
    BestEval,
    better_role,
    load_checkpoint,
    save_checkpoint,
)
from ssodkit.engine.ema import EMA
from ssodkit.engine.metrics import read_metrics
from ssodkit.engine.runtime import inference_weights, load_model_from_checkpoint
from ssodkit.engine.trainer import Trainer, fast_teacher_warning
from ssodkit.evaluation.coco_eval import STAT_FIELDS, EvalResult
from tests.conftest import run_cli
from tests.test_cli import data_args, tiny_set_args

# mAP the fake evaluation reports: the student wins at iteration 2, the teacher at 3 but
# below the student's 0.4, so best.pt stays the student's at iteration 2
FAKE_MAPS = {2: {"student": 0.4, "teacher": 0.3}, 3: {"student": 0.2, "teacher": 0.35}}
BEST_LINE = "best.pt: student at iter 2 (mAP 40.0; teacher 30.0)"
WEIGHTS_LINE = "weights: student (best at iter 2: mAP 40.0; teacher 30.0)"


def fake_result(value: float) -> EvalResult:
    stats = {**{name: None for name in STAT_FIELDS}, "map": value}
    return EvalResult(**stats, per_class={"a": value}, num_images=6, num_detections=0, backend="fake")


def fake_evaluate(self: Trainer) -> dict[str, EvalResult]:
    return {role: fake_result(m) for role, m in FAKE_MAPS[self.iteration].items()}


@pytest.fixture(scope="module")
def student_wins(tiny_data, tmp_path_factory):
    """A 3-iteration Mean Teacher run through the CLI whose (faked) evaluations find the
    student better than the teacher at iteration 2."""
    runs = tmp_path_factory.mktemp("best_runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "evaluate", fake_evaluate)
        result = run_cli(
            "train", "--method", "mean_teacher", *data_args(tiny_data), "--unlabeled", str(tiny_data.unlabeled),
            "--runs-dir", str(runs), "--name", "mt",
            *tiny_set_args(**{
                "schedule.iters": 3, "data.unlabeled_images": str(tiny_data.images), "train.unlabeled_batch_size": 2,
                "eval.interval": 2, "eval.pseudo_images": 0, "method.score_thr": 0.05,
            }),
        )
    assert result.exit_code == 0, result.output
    return runs / "mt", result


def test_better_role_prefers_the_teacher_on_a_tie_and_counts_a_missing_map_as_minus_one():
    assert better_role({"student": 0.4, "teacher": 0.3}) == "student"
    assert better_role({"student": 0.3, "teacher": 0.3}) == "teacher"
    assert better_role({"student": 0.0, "teacher": None}) == "student"
    assert better_role({"student": 0.1}) == "student" and better_role({}) is None
    best = BestEval(3000, "student", {"student": 0.312, "teacher": 0.304})
    assert best.describe() == "student at iter 3000 (mAP 31.2; teacher 30.4)"
    assert BestEval.from_state(best.to_state()) == best and BestEval.from_state(None) is None


def test_best_pt_records_the_student_when_it_beats_the_teacher_and_the_summary_says_so(student_wins):
    run, result = student_wins
    assert BEST_LINE in result.stdout
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["iteration"] == 2 and best["best_role"] == "student" and best["best"] == 0.4
    assert best["best_eval"] == {"iter": 2, "role": "student", "map": {"student": 0.4, "teacher": 0.3}}
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert "best_role" not in last and last["best_eval"] == best["best_eval"]  # the run's record, for resume
    evals = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "eval"]
    assert [(r["iter"], r["best_role"]) for r in evals] == [(2, "student"), (3, "teacher")]


def test_inference_on_best_pt_uses_the_student_and_on_last_pt_the_teacher(student_wins):
    run, _ = student_wins
    state = load_checkpoint(run / "checkpoints" / "best.pt")
    assert any(not torch.equal(v, state["teacher"][k]) for k, v in state["student"].items())  # not vacuous
    loaded = load_model_from_checkpoint(run / "checkpoints" / "best.pt")
    assert loaded.weights == "student" and loaded.note == "best at iter 2: mAP 40.0; teacher 30.0"
    assert all(torch.equal(v, state["student"][k]) for k, v in loaded.model.state_dict().items())
    assert load_model_from_checkpoint(run / "checkpoints" / "best.pt", weights="teacher").weights == "teacher"
    last = load_model_from_checkpoint(run / "checkpoints" / "last.pt")
    assert (last.weights, last.note) == ("teacher", "")


def test_pseudolabel_on_best_pt_uses_the_student(student_wins, tiny_data, tmp_path):
    from ssodkit.engine.pseudolabel import pseudolabel

    best = student_wins[0] / "checkpoints" / "best.pt"
    auto = pseudolabel(best, tiny_data.unlabeled, score_thr=0.0)
    assert auto.weights == "student" and not auto.teacher_missing
    assert auto.entries == pseudolabel(best, tiny_data.unlabeled, score_thr=0.0, weights="student").entries
    assert auto.entries != pseudolabel(best, tiny_data.unlabeled, score_thr=0.0, weights="teacher").entries
    said = run_cli("pseudolabel", "--checkpoint", best, "--images", tiny_data.unlabeled, "--out", tmp_path / "p.json")
    assert said.exit_code == 0, said.output
    assert WEIGHTS_LINE in said.stdout


def test_evaluate_on_best_pt_scores_the_student(student_wins, tiny_data, tmp_path):
    best = student_wins[0] / "checkpoints" / "best.pt"
    maps = {}
    for weights in ("auto", "student", "teacher"):
        out = tmp_path / f"{weights}.json"
        said = run_cli("evaluate", "--checkpoint", best, "--ann", tiny_data.val, "--images", tiny_data.images,
                       "--weights", weights, "--out", out)
        assert said.exit_code == 0, said.output
        maps[weights] = json.loads(out.read_text())
        if weights == "auto":
            assert WEIGHTS_LINE in said.stdout
    assert maps["auto"] == maps["student"]


def old_checkpoint(path, tmp_path):
    """`path` as a checkpoint written before the student competed for best.pt."""
    state = load_checkpoint(path)
    for key in ("best_role", "best_eval", "version"):
        state.pop(key, None)
    old = tmp_path / "old.pt"
    save_checkpoint(state, old)
    return old, state


def test_an_old_best_pt_without_a_recorded_role_still_loads_its_teacher(student_wins, tmp_path):
    old, state = old_checkpoint(student_wins[0] / "checkpoints" / "best.pt", tmp_path)
    loaded = load_model_from_checkpoint(old)
    assert (loaded.weights, loaded.note) == ("teacher", "")
    assert all(torch.equal(v, state["teacher"][k]) for k, v in loaded.model.state_dict().items())
    assert inference_weights({"student": {}, "teacher": None}) == ("student", "the checkpoint has no teacher")


def trainer_output(cfg) -> tuple[Trainer, str]:
    """A trainer set up (not run) with `cfg`, and what it printed at start-up."""
    buffer = io.StringIO()
    trainer = Trainer(cfg, console=Console(file=buffer, width=10_000))
    trainer.close()
    return trainer, buffer.getvalue()


def test_init_from_takes_the_recorded_best_model_and_warns_about_a_fast_teacher(student_wins, tiny_config, tmp_path):
    best = student_wins[0] / "checkpoints" / "best.pt"
    state = load_checkpoint(best)
    mt = dict(method__name="mean_teacher", train__unlabeled_batch_size=2)

    trainer, said = trainer_output(tiny_config(output__name="from_best", train__init_from=str(best), **mt))
    for model in (trainer.model, trainer.teacher):
        assert all(torch.equal(v, state["student"][k]) for k, v in model.state_dict().items())
    assert f"init from {best}: student weights (best at iter 2: mAP 40.0; teacher 30.0)" in said
    warning = [line for line in said.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "--set teacher.momentum=0.001" in warning[0]

    # an old checkpoint gives its teacher; a constant momentum of 0.001 gives no warning
    old, old_state = old_checkpoint(best, tmp_path)
    trainer, said = trainer_output(
        tiny_config(output__name="from_old", train__init_from=str(old), teacher__momentum=0.001, **mt)
    )
    assert all(torch.equal(v, old_state["teacher"][k]) for k, v in trainer.model.state_dict().items())
    assert f"init from {old}: teacher weights" in said and "warning:" not in said

    # without init_from the schedule is the right start: no warning
    _, said = trainer_output(tiny_config(output__name="scratch", **mt))
    assert "warning:" not in said


@pytest.mark.parametrize(
    ("momentum", "gamma", "warns"),
    [(None, 4.0, True), (0.001, 4.0, False), (0.01, 4.0, False), (0.05, 4.0, True), (None, 0.5, False)],
)
def test_the_fast_teacher_rule_is_momentum_above_001_after_100_updates(momentum, gamma, warns):
    assert (fast_teacher_warning(EMA(momentum, gamma)) is not None) == warns


def test_the_schedule_continues_from_the_init_checkpoints_iterations_and_its_first_update_uses_that_t(
    student_wins, tiny_config
):
    """A teacher made from a checkpoint trained 3 iterations starts at t = 3 (m = γ/(γ+3)),
    not at m = 1: t counts every iteration the student has trained. The resolved offset is
    in config.yaml; a checkpoint trained long enough gives no fast-teacher warning."""
    from ssodkit.config import load_saved_config
    from ssodkit.engine.runtime import initial_weights

    best = student_wins[0] / "checkpoints" / "best.pt"
    cfg = tiny_config(output__name="offset", train__init_from=str(best), method__name="mean_teacher",
                      train__unlabeled_batch_size=2, method__score_thr=0.0)
    state = load_checkpoint(best)
    assert initial_weights(best, cfg, state["classes"]).trained_iterations == state["iteration"]
    trainer = Trainer(cfg)
    try:
        trained = state["iteration"]
        assert trainer.cfg.teacher.schedule_offset == trained
        assert load_saved_config(trainer.run_dir / "config.yaml").teacher.schedule_offset == trained
        before = [p.clone() for p in trainer.teacher.parameters()]
        assert trainer.train_step(next(trainer.data.batches(0))) is not None
        m = 4.0 / (4.0 + trained)
        for t, s, b in zip(trainer.teacher.parameters(), trainer.model.parameters(), before):
            assert torch.allclose(t, (1 - m) * b + m * s, atol=1e-6)
    finally:
        trainer.close()
    assert fast_teacher_warning(EMA(None, 4.0), offset=1000) is None
    assert fast_teacher_warning(EMA(None, 4.0), offset=0) is not None
