"""The collapse warning: silent on a healthy run, one line (and optionally a stop) when the
teacher's pseudo-labels vanish; thresholds documented in docs/troubleshooting.md."""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

import pytest

from ssodkit.engine import collapse
from ssodkit.engine.collapse import REFERENCE_WINDOWS, SMOOTH_WINDOWS, CollapseWatcher

DOC = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"


def train_record(it: int, pseudo: float, empty: float, cls: float, box: float = 0.3) -> dict:
    return {"type": "train", "iter": it, "loss": cls + box, "sup_loss_cls": cls, "sup_loss_box": box,
            "unsup_loss_cls": 0.1, "pseudo_per_image": pseudo, "pseudo_empty_frac": empty}


def noisy(value: float, rng: random.Random) -> float:
    return value * rng.uniform(0.9, 1.1)


def feed(watcher: CollapseWatcher, records: list[dict]) -> list[tuple[int, str]]:
    return [(r["iter"], line) for r in records if (line := watcher.observe_train(r)) is not None]


# ------------------------------------------------------------------ unit: train records
@pytest.mark.parametrize("seed", range(5))
def test_a_healthy_run_with_ten_percent_noise_stays_silent(seed):
    rng = random.Random(seed)
    watcher = CollapseWatcher()
    records = [train_record(10 * i, noisy(2.3, rng), noisy(0.06, rng), noisy(0.19, rng)) for i in range(1, 200)]
    assert feed(watcher, records) == [] and watcher.messages == []


def test_a_collapse_fires_once_within_the_documented_window_naming_the_signals():
    watcher = CollapseWatcher()
    healthy = [train_record(10 * i, 2.3, 0.06, 0.19) for i in range(1, 11)]
    collapsed = [train_record(10 * i, 0.9, 0.41, 0.38) for i in range(11, 60)]
    fired = feed(watcher, healthy + collapsed)
    assert len(fired) == 1, fired
    it, line = fired[0]
    assert it == 120  # the change's second window: the median of the last three moved
    assert 110 < it <= 100 + 10 * SMOOTH_WINDOWS  # within the documented SMOOTH_WINDOWS windows
    assert line.startswith(f"collapse warning at iter {it}: ")
    assert "pseudo boxes/img 2.3 → " in line and "empty images 6 % → " in line
    assert "teacher.momentum=0.001" in line and "docs/troubleshooting.md" in line and "ssodkit stats pseudo" in line
    # every signal is named with its size
    watcher = CollapseWatcher()
    steady = feed(watcher, healthy[:REFERENCE_WINDOWS] + [train_record(200, 0.9, 0.41, 0.38)] * 2)
    assert len(steady) == 1
    line = steady[0][1]
    assert "pseudo boxes/img 2.3 → 0.9 (−61 %)" in line and "empty images 6 % → 41 %" in line
    assert "supervised cls loss 0.19 → 0.38 (×2.0)" in line and "supervised loss 0.49 → 0.68 (×1.4)" in line
    assert set(watcher.signals) == {"pseudo_per_image", "pseudo_empty_frac", "sup_loss_cls", "sup_loss"}
    assert watcher.signals["pseudo_per_image"] == pytest.approx({"reference": 2.3, "now": 0.9})


def test_one_noisy_window_does_not_fire_and_a_recovered_signal_re_arms():
    watcher = CollapseWatcher()
    base = [train_record(10 * i, 2.3, 0.06, 0.19) for i in range(1, 6)]
    one_bad = [*base, train_record(60, 0.0, 1.0, 9.0), *base, train_record(70, 0.0, 1.0, 9.0), *base]
    assert feed(watcher, one_bad) == []  # one window alone, however bad, never fires
    watcher = CollapseWatcher()
    down = [train_record(0, 0.5, 0.06, 0.19)] * 5
    fired = feed(watcher, base + down + base + down)  # collapse, recovery, collapse again
    assert len(fired) == 2
    assert feed(watcher, down * 3) == []  # still the second episode


def test_a_sustained_supervised_loss_rise_fires_alone_and_a_tiny_pseudo_reference_is_ignored():
    watcher = CollapseWatcher()
    records = [train_record(10 * i, 0.05, 0.9, 0.2) for i in range(1, 4)]
    records += [train_record(10 * i, 0.0, 1.0, 0.2) for i in range(4, 10)]  # 0.05 → 0: nothing to lose
    assert feed(watcher, records) == []
    fired = feed(watcher, [train_record(100 + i, 0.0, 1.0, 0.5) for i in range(5)])
    assert len(fired) == 1 and "supervised cls loss 0.2 → " in fired[0][1]


def test_records_without_the_signals_or_with_null_values_are_ignored():
    watcher = CollapseWatcher()
    assert watcher.observe_train({"type": "train", "iter": 1, "loss": 1.0, "lr": 0.01}) is None
    assert watcher.first == []
    records = [train_record(i, 2.3, 0.06, 0.19) for i in range(1, 5)]
    records.append({**train_record(5, 2.3, 0.06, 0.19), "pseudo_per_image": None})
    assert feed(watcher, records) == []


# ------------------------------------------------------------------ unit: eval records
def test_a_teacher_map_drop_fires_once_and_the_probe_recall_is_named():
    watcher = CollapseWatcher()
    assert watcher.observe_eval({"iter": 200, "teacher/map": 0.12}, burn_in=True) is None
    assert watcher.observe_eval({"iter": 400, "teacher/map": 0.19, "probe/recall50": 0.6}) is None
    assert watcher.observe_eval({"iter": 600, "teacher/map": 0.15, "probe/recall50": 0.55}) is None  # 79 % of best
    line = watcher.observe_eval({"iter": 800, "teacher/map": 0.06, "probe/recall50": 0.2, "probe/precision50": 0.8})
    assert line is not None and line.startswith("collapse warning at iter 800: ")
    assert "teacher mAP 19.0 (best) → 6.0 (−68 %)" in line and "labeled probe recall 60 % → 20 % (precision 80 %)" in line
    assert watcher.observe_eval({"iter": 1000, "teacher/map": 0.05, "probe/recall50": 0.2}) is None  # same episode
    assert watcher.messages == [line]


def test_eval_drops_below_the_minimum_best_map_or_in_the_burn_in_stay_silent():
    watcher = CollapseWatcher()
    for it, m in [(100, 0.04), (200, 0.01), (300, 0.0)]:  # best never above MIN_BEST_MAP
        assert watcher.observe_eval({"iter": it, "teacher/map": m}) is None
    watcher = CollapseWatcher()
    assert watcher.observe_eval({"iter": 100, "teacher/map": 0.3}, burn_in=True) is None
    assert watcher.observe_eval({"iter": 200, "teacher/map": 0.1}, burn_in=True) is None
    assert watcher.observe_eval({"iter": 300, "teacher/map": 0.1, "probe/recall50": 0.5}) is not None  # 0.3 was the best


def test_the_state_round_trips_so_a_resumed_run_keeps_its_reference():
    watcher = CollapseWatcher()
    records = [train_record(10 * i, 2.3, 0.06, 0.19) for i in range(1, 5)] + [train_record(50, 0.5, 0.06, 0.19)]
    feed(watcher, records)
    watcher.observe_eval({"iter": 50, "teacher/map": 0.2, "probe/recall50": 0.6})
    resumed = CollapseWatcher()
    resumed.load_state_dict(watcher.state_dict())
    assert resumed.state_dict() == watcher.state_dict()
    rest = [train_record(60 + i, 0.5, 0.06, 0.19) for i in range(3)]
    assert feed(resumed, rest) == feed(watcher, rest) != []
    fresh = CollapseWatcher()
    fresh.load_state_dict(None)  # a checkpoint of an earlier version
    assert fresh.state_dict() == CollapseWatcher().state_dict()


def test_the_troubleshooting_page_states_every_threshold():
    text = DOC.read_text()
    assert "## The teacher collapsed" in text and "train.stop_on_collapse=true" in text
    for name in ("REFERENCE_WINDOWS", "SMOOTH_WINDOWS", "PSEUDO_DROP", "MIN_PSEUDO_REFERENCE", "EMPTY_RISE",
                 "SUP_LOSS_RISE", "MAP_DROP", "MIN_BEST_MAP", "PROBE_RECALL_DROP", "MIN_PROBE_REFERENCE", "RECOVERY"):
        value = getattr(collapse, name)
        assert re.search(rf"`{name}`[^\n]*\b{value:g}\b", text), f"docs/troubleshooting.md: {name} = {value:g}"


# ------------------------------------------------------------------ integration: real runs
BURN_IN, LOG, ITERS, FADE_AT = 4, 2, 20, 12


@pytest.fixture
def mean_teacher(tiny_config):
    """A tiny Mean Teacher run in-process: BURN_IN burn-in iterations, a train record every LOG."""
    from ssodkit.engine.metrics import read_metrics
    from ssodkit.engine.trainer import Trainer

    def run(resume=None, **overrides):
        cfg = tiny_config(**{
            "method.name": "mean_teacher", "schedule.iters": ITERS, "teacher.burn_in": BURN_IN,
            "train.log_interval": LOG, "train.unlabeled_batch_size": 2, "method.score_thr": 0.05,
            "eval.pseudo_images": 0, "eval.probe_images": 0, **overrides,
        })
        trainer = Trainer(cfg, resume=resume)
        try:
            summary = trainer.run()
        finally:
            trainer.close()
        return summary, read_metrics(summary.run_dir / "metrics.jsonl")

    return run


@pytest.fixture
def fading_teacher(monkeypatch):
    """From step FADE_AT on, the teacher's scores are × 0.01: its pseudo-labels vanish."""
    from ssodkit.engine.trainer import Trainer
    from ssodkit.pseudo.labeler import PseudoLabeler

    state = {"fade": False}
    step, predict = Trainer.train_step, PseudoLabeler.predict

    def train_step(self, batch):
        state["fade"] = self.iteration >= FADE_AT
        return step(self, batch)

    def faded(self, teacher, weak):
        dets = predict(self, teacher, weak)
        return [dataclasses.replace(d, scores=d.scores * 0.01) for d in dets] if state["fade"] else dets

    monkeypatch.setattr(Trainer, "train_step", train_step)
    monkeypatch.setattr(PseudoLabeler, "predict", faded)


def test_a_healthy_mean_teacher_run_writes_no_collapse_record(mean_teacher):
    summary, records = mean_teacher()
    train = [r for r in records if r["type"] == "train" and "pseudo_per_image" in r]
    assert len(train) >= REFERENCE_WINDOWS + 2 and min(r["pseudo_per_image"] for r in train) > 1
    assert [r for r in records if r["type"] == "collapse"] == [] and summary.collapse == []
    assert summary.status == "finished"


def test_vanishing_pseudo_labels_are_warned_about_within_the_documented_window(tiny_data, tmp_path, fading_teacher):
    from ssodkit.engine.metrics import read_metrics
    from ssodkit.engine.results import results_rows
    from tests.conftest import run_cli
    from tests.test_cli import data_args, tiny_set_args

    result = run_cli(
        "train", "--method", "mean_teacher", *data_args(tiny_data), "--unlabeled", str(tiny_data.unlabeled),
        "--runs-dir", str(tmp_path / "runs"), "--name", "mt",
        *tiny_set_args(**{
            "schedule.iters": ITERS, "teacher.burn_in": BURN_IN, "train.log_interval": LOG,
            "data.unlabeled_images": str(tiny_data.images), "train.unlabeled_batch_size": 2,
            "method.score_thr": 0.05, "eval.pseudo_images": 0, "eval.probe_images": 0,
        }),
    )
    assert result.exit_code == 0, result.output
    records = read_metrics(tmp_path / "runs" / "mt" / "metrics.jsonl")
    warnings = [r for r in records if r["type"] == "collapse"]
    assert len(warnings) == 1, warnings
    warning = warnings[0]
    assert FADE_AT < warning["iter"] <= FADE_AT + SMOOTH_WINDOWS * LOG
    assert warning["message"].startswith(f"collapse warning at iter {warning['iter']}: ")
    assert "empty images 0 % → " in warning["message"] and "pseudo_empty_frac" in warning["signals"]
    assert warning["message"] in " ".join(result.stdout.split())  # repeated beside the run's summary …
    assert f"finished: {ITERS} iterations" in result.stdout  # … and the run went on
    assert results_rows(records)[-1]["collapse"] == warning["message"]


def test_stop_on_collapse_stops_the_run_and_saves_last_pt(mean_teacher, fading_teacher):
    from ssodkit.engine.checkpoint import load_checkpoint

    summary, records = mean_teacher(**{"train.stop_on_collapse": True})
    warning = next(r for r in records if r["type"] == "collapse")
    assert summary.status == "collapsed" and summary.iterations == warning["iter"] < ITERS
    last = load_checkpoint(summary.run_dir / "checkpoints" / "last.pt")
    assert last["iteration"] == warning["iter"]
    assert last["collapse"]["messages"] == [warning["message"]] and last["collapse"]["episode"]["train"]
    # resumed, the watcher keeps its reference and episode: the still-faded teacher is not warned about again
    resumed, records = mean_teacher(resume=summary.run_dir, **{"train.stop_on_collapse": True})
    assert resumed.status == "finished" and resumed.iterations == ITERS
    assert [r["message"] for r in records if r["type"] == "collapse"] == resumed.collapse == [warning["message"]]


def test_the_reference_windows_start_after_the_burn_in_and_the_lr_warm_up(mean_teacher, monkeypatch):
    """An --init-from run has no burn-in, and its supervised loss rises with the LR during the
    warm-up: a reference taken there made the run "collapse" once the LR reached its base."""
    from ssodkit.engine.collapse import CollapseWatcher

    seen: list[int] = []
    observe = CollapseWatcher.observe_train

    def spy(self, record):
        seen.append(record["iter"])
        return observe(self, record)

    monkeypatch.setattr(CollapseWatcher, "observe_train", spy)
    mean_teacher(**{"teacher.burn_in": 0, "schedule.warmup_iters": 5, "schedule.iters": 10})
    assert seen == [8, 10]  # the windows (6, 8] and (8, 10]; (4, 6] began inside the warm-up
