"""`ssodkit report` and the run figures (`plot_results`, `plot_runs_overlay`), on hand-written
run folders: no training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ssodkit.engine.metrics import read_metrics
from ssodkit.errors import DataError
from ssodkit.plots import plot_results, plot_runs_overlay
from ssodkit.report import config_differences, flatten, load_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _records(teacher: bool, collapse: bool = False) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for it in (100, 200, 300):
        train: dict[str, Any] = {"type": "train", "iter": it, "lr": 0.01, "wall_s": it / 10, "loss": 1.0,
                                 "sup_loss_cls": 0.5}
        if teacher and it > 100:  # burn-in: no unsup loss, no pseudo-labels at 100
            train.update(unsup_loss_cls=0.3, pseudo_per_image=2.5, pseudo_empty_frac=0.1)
        records.append(train)
        if collapse and it == 200:
            records.append({"type": "collapse", "iter": it, "message": "pseudo-labels vanished"})
        ev: dict[str, Any] = {"type": "eval", "iter": it, "student/map": 0.1 * it / 100,
                              "student/map50": 0.2}
        if teacher:
            ev.update({"teacher/map": 0.11 * it / 100, "teacher/map50": 0.21, "best_role": "teacher",
                       "pseudo/precision50": None if it == 100 else 0.7,
                       "pseudo/recall50": None if it == 100 else 0.5})
        records.append(ev)
    return records


def make_run(
    root: Path, name: str, *, teacher: bool = True, lr: float = 0.01, split_hash: str | None = None,
    collapse: bool = False, evals: bool = True,
) -> Path:
    run = root / name
    run.mkdir(parents=True)
    records = [r for r in _records(teacher, collapse) if evals or r["type"] != "eval"]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = {"method": {"name": "mean_teacher" if teacher else "supervised"},
              "detector": {"name": "fcos"}, "optim": {"lr": lr, "momentum": 0.9}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    if split_hash is not None:
        summary = {"best_teacher": {"iter": 300, "map": 0.33}, "wall_s": 42.0,
                   "repro": {"split_hash": split_hash}}
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------- figures
def test_plot_results_with_and_without_teacher(tmp_path):
    for teacher in (True, False):
        run = load_run(make_run(tmp_path, f"t{teacher}", teacher=teacher, collapse=True))
        assert (run.best.get("teacher") is not None) == teacher
        assert is_png(plot_results(run.rows, tmp_path / f"{teacher}.png", title="x"))
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed


def test_plot_results_survives_empty_cells(tmp_path):
    rows = [
        {"iter": 100, "teacher_map": None, "student_map": None, "collapse": ""},
        {"iter": 200, "student_map": 0.2, "sup_loss": None, "pseudo_empty_frac": 0.4, "collapse": "x"},
        {"iter": 300, "teacher_map": 0.3, "probe_recall50": 0.5},
    ]
    assert is_png(plot_results(rows, tmp_path / "gaps.png"))
    assert is_png(plot_results([], tmp_path / "none.png"))
    assert is_png(plot_runs_overlay({"a": rows, "b": []}, tmp_path / "overlay.png"))


def test_config_differences_flatten_and_keep_only_differing_keys(tmp_path):
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": [1, 2], "d": {}}
    a = load_run(make_run(tmp_path, "a", lr=0.01))
    b = load_run(make_run(tmp_path, "b", lr=0.02, teacher=False))
    keys = dict(config_differences([a, b]))
    assert keys == {"method.name": ["mean_teacher", "supervised"], "optim.lr": [0.01, 0.02]}


# --------------------------------------------------------------------------- the command
def test_report_one_run(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path, "mt", collapse=True)
    result = cli("report", run)
    assert result.exit_code == 0, result.output
    assert is_png(run / "results.png")
    lines = (run / "results.csv").read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("iter,") and "pseudo-labels vanished" in lines[2]
    assert "33.0 @ 300" in result.stdout and "30.0 @ 300" in result.stdout  # best teacher, student
    assert not (tmp_path / "report").exists()  # one run: no comparison unless --out


def test_report_two_runs_writes_overlay_and_html(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = make_run(tmp_path, "a", lr=0.01, split_hash="abcdef012345")
    b = make_run(tmp_path, "b", lr=0.02, teacher=False, split_hash="abcdef012345")
    result = cli("report", a, b)
    assert result.exit_code == 0, result.output
    out = tmp_path / "report"
    assert sorted(p.name for p in out.iterdir()) == ["overlay.png", "report.html"]
    assert is_png(out / "overlay.png") and is_png(a / "results.png") and is_png(b / "results.png")
    page = (out / "report.html").read_text()
    assert "optim.lr" in page and "0.02" in page and "optim.momentum" not in page
    assert page.count("data:image/png;base64,") == 3  # overlay + each run's results.png
    assert "different labeled splits" not in result.output + page
    assert "0:00:42" in result.stdout  # wall time from summary.json


def test_split_hash_warning_only_when_hashes_differ(cli, tmp_path):
    a = make_run(tmp_path, "a", split_hash="aaaaaaaaaaaa")
    b = make_run(tmp_path, "b", split_hash="bbbbbbbbbbbb")
    c = make_run(tmp_path, "c")  # no summary.json: not judged
    result = cli("report", a, b, c, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    expected = (
        "warning: runs a and b were trained on different labeled splits "
        "(split hash aaaaaaaaaaaa vs bbbbbbbbbbbb): their mAPs are not comparable"
    )
    assert result.output.count(expected) == 1
    assert result.output.count("different labeled splits") == 1
    assert "different labeled splits" in (tmp_path / "out" / "report.html").read_text()


def test_report_run_without_evaluation_warns_and_writes_csv(cli, tmp_path):
    run = make_run(tmp_path, "early", evals=False)
    result = cli("report", run)
    assert result.exit_code == 0, result.output
    assert "no evaluation in metrics.jsonl yet" in result.output
    assert (run / "results.csv").read_text().startswith("iter,") and not (run / "results.png").exists()


def test_report_errors_are_one_line(cli, tmp_path):
    missing = cli("report", tmp_path / "nope")
    assert missing.exit_code == 2
    assert missing.stderr.strip() == f"error: {tmp_path / 'nope'}: no such run folder"
    (tmp_path / "empty").mkdir()
    empty = cli("report", tmp_path / "empty")
    assert empty.exit_code == 2
    assert empty.stderr.strip() == f"error: {tmp_path / 'empty'}: not a run folder (no metrics.jsonl)"
    assert "Traceback" not in missing.output + empty.output
    good = make_run(tmp_path, "good")
    both = cli("report", good, tmp_path / "empty")
    assert both.exit_code == 2 and not (good / "results.csv").exists()  # checked before writing


def test_half_written_last_line_is_skipped(cli, tmp_path):
    run = make_run(tmp_path, "live")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"type": "train", "iter": 4')
    result = cli("report", run)
    assert result.exit_code == 0, result.output
    assert len((run / "results.csv").read_text().splitlines()) == 4


def test_metrics_reader_skips_a_last_line_cut_short_and_names_a_malformed_one(tmp_path):
    """A run still appending (or killed mid-write) leaves a partial last line: reports and
    resumes read the rest; a broken line in the middle is corruption, named with its number."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "train", "iter": 1}\n\n{"type": "eval", "iter": 2}\n{"type": "tra')
    assert [r["iter"] for r in read_metrics(path)] == [1, 2]
    path.write_text('{"type": "train", "iter": 1}\nnot json\n{"type": "eval", "iter": 2}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl: line 2 is not a JSON record"):
        read_metrics(path)
