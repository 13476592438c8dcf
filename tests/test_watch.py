"""The run folder a user looks at: results.csv, results.png, samples/, summary.json."""

from __future__ import annotations

import json
import math

import pytest

from ssodkit.engine.results import FIXED_COLUMNS, read_results_csv, results_rows
from ssodkit.engine.summary import split_hash
from tests.test_cli import data_args, tiny_set_args


def test_results_rows_average_the_train_windows_between_evaluations():
    records = [
        {"type": "train", "iter": 1, "lr": 0.1, "wall_s": 1.0, "loss": 2.0, "sup_loss_cls": 1.0, "sup_loss_box": 1.0},
        {"type": "train", "iter": 2, "lr": 0.2, "wall_s": 2.0, "loss": 4.0, "sup_loss_cls": 3.0, "sup_loss_box": 1.0},
        {"type": "eval", "iter": 2, "wall_s": 2.5, "student/map": 0.1, "student/map50": 0.2},
        {"type": "train", "iter": 3, "lr": 0.3, "wall_s": 3.0, "loss": 1.0, "sup_loss_cls": 0.5, "sup_loss_box": 0.25,
         "unsup_loss_cls": 0.25, "pseudo_per_image": 2.0, "pseudo_empty_frac": 0.5},
        {"type": "collapse", "iter": 3, "message": "pseudo boxes fell"},
        {"type": "eval", "iter": 3, "wall_s": 3.5, "student/map": 0.3, "teacher/map": 0.4, "best_role": "teacher",
         "probe/precision50": 0.7, "probe/recall50": 0.6},
    ]
    first, second = results_rows(records)
    assert first["iter"] == 2 and first["lr"] == 0.2 and first["wall_s"] == 2.5
    assert first["loss"] == 3.0 and first["sup_loss_cls"] == 2.0 and first["sup_loss"] == 3.0
    assert first["unsup_loss"] is None and first["teacher_map"] is None and first["collapse"] == ""
    assert second["sup_loss"] == 0.75 and second["unsup_loss"] == 0.25 and second["pseudo_per_image"] == 2.0
    assert second["teacher_map"] == 0.4 and second["probe_recall50"] == 0.6 and second["collapse"] == "pseudo boxes fell"
    # a warning raised by an evaluation belongs to that evaluation's row
    (row,) = results_rows([records[2], {"type": "collapse", "iter": 2, "message": "teacher mAP fell"}])
    assert row["collapse"] == "teacher mAP fell"


def test_split_hash_ignores_order_and_tells_splits_apart():
    assert split_hash([3, 1, 2]) == split_hash([1, 2, 3]) != split_hash([1, 2, 4])
    assert len(split_hash([1])) == 12


@pytest.mark.slow
def test_a_two_evaluation_run_leaves_results_csv_png_samples_and_summary(cli, tiny_data, tmp_path):
    args = [
        "train", "--method", "mean_teacher", *data_args(tiny_data),
        "--unlabeled", str(tiny_data.unlabeled), "--set", f"data.unlabeled_images={tiny_data.images}",
        "--runs-dir", str(tmp_path), "--name", "mt",
        *tiny_set_args(**{"schedule.iters": 4, "eval.interval": 2, "eval.probe_images": 2, "output.samples": 2, "output.plots": "true",
                          "train.log_interval": 1, "teacher.burn_in": 1, "train.unlabeled_batch_size": 2}),
    ]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "mt"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval"]
    rows = read_results_csv(run / "results.csv")
    assert [r["iter"] for r in rows] == [e["iter"] for e in evals] == [2, 4]
    header = (run / "results.csv").read_text().splitlines()[0].split(",")
    assert header[: len(FIXED_COLUMNS)] == list(FIXED_COLUMNS) and header[-1] == "collapse"
    for row, rec in zip(rows, evals, strict=True):  # the csv's numbers are the log's
        assert math.isclose(row["teacher_map"], rec["teacher/map"], rel_tol=1e-5, abs_tol=1e-9)
        assert math.isclose(row["student_ap50"], rec["student/map50"], rel_tol=1e-5, abs_tol=1e-9)
        assert math.isclose(row["probe_precision50"], rec["probe/precision50"], rel_tol=1e-5, abs_tol=1e-9)
    train_2 = [r["sup_loss_cls"] for r in records if r["type"] == "train" and r["iter"] in (3, 4)]
    assert math.isclose(rows[1]["sup_loss_cls"], sum(train_2) / 2, rel_tol=1e-5)
    assert (run / "results.png").stat().st_size > 0
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["iter_0000002.jpg", "iter_0000004.jpg"]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["iterations"] == 4
    assert summary["best_teacher"]["map"] == max(e["teacher/map"] for e in evals)
    assert summary["best_pt"]["role"] in ("teacher", "student")
    repro = summary["repro"]
    labeled_ids = [img["id"] for img in json.loads(tiny_data.train.read_text())["images"]]
    assert repro["split_hash"] == split_hash(labeled_ids) and repro["split_hash_per_rank"] == [repro["split_hash"]]
    assert repro["world_size"] == 1 and repro["batch_per_device"] == {"labeled": 2, "unlabeled": 2}
    assert repro["ema"]["gamma"] == 4.0 and repro["burn_in"] == {"configured": 1, "ended_at": 1}
    assert "best teacher: mAP" in result.output and "results.csv" in result.output


def test_without_plots_no_figure_is_written(cli, tiny_data, tmp_path):
    args = [
        "train", *data_args(tiny_data), "--runs-dir", str(tmp_path), "--name", "sup",
        *tiny_set_args(**{"schedule.iters": 2, "eval.interval": 2, "output.plots": "false", "output.samples": 0}),
    ]
    assert cli(*args).exit_code == 0
    run = tmp_path / "sup"
    assert (run / "results.csv").is_file() and (run / "summary.json").is_file()
    assert not (run / "results.png").exists() and not (run / "samples").exists()


def test_the_shared_plot_module_loads_no_diagnostics():
    """The trainer draws results.png through `ssodkit.plots`, which must not pull `stats` in."""
    import subprocess
    import sys

    code = "import sys, ssodkit.plots; print(sorted(m for m in sys.modules if m.startswith('ssodkit.stats')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_methods_that_log_pseudo_boxes_per_input_kind_fill_the_column_and_feed_the_watcher():
    from ssodkit.engine.collapse import CollapseWatcher

    mixpl = {"type": "train", "iter": 1, "mosaic_pseudo_per_image": 4.0, "mixup_pseudo_per_image": 2.0}
    (row,) = results_rows([mixpl, {"type": "eval", "iter": 1}])
    assert row["pseudo_per_image"] == 3.0
    watcher = CollapseWatcher()
    lines = [
        watcher.observe_train({**mixpl, "iter": i, "sup_loss_cls": 0.2, **(
            {"mosaic_pseudo_per_image": 0.4, "mixup_pseudo_per_image": 0.2} if i > 3 else {})})
        for i in range(1, 7)
    ]
    assert any(line and "pseudo boxes/img" in line for line in lines)
