"""benchmarks/long_horizon.py: the plan (burn-in first, continuations from its checkpoint,
oracle variants through the diagnostic) and the report (mean ± sample spread over seeds)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lh():
    spec = importlib.util.spec_from_file_location("long_horizon", ROOT / "benchmarks" / "long_horizon.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["long_horizon"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _args(tmp_path: Path, methods: list[str], seeds: list[int]) -> argparse.Namespace:
    return argparse.Namespace(
        detector="fcos", methods=methods, seeds=seeds, burn_in=1000, iters=4000, eval_interval=500,
        variant=None, set=[], runs_dir=tmp_path,
    )


def test_plan_continues_every_method_from_its_seeds_burn_in_and_oracles_run_the_diagnostic(lh, tmp_path):
    jobs = {j.name: j for j in lh.plan(_args(tmp_path, ["supervised", "oracle", "oracle:drop50"], [0, 1]))}
    assert set(jobs) == {
        f"{m}-fcos-s{s}" for m in ("burnin", "supervised", "oracle", "oracle-drop50") for s in (0, 1)
    }
    cont = jobs["oracle-drop50-fcos-s1"]
    assert cont.after == ["burnin-fcos-s1"]
    assert cont.args[cont.args.index("--init-from") + 1] == str(tmp_path / "burnin-fcos-s1" / "checkpoints" / "last.pt")
    assert cont.program == ["benchmarks/diagnostics/oracle_teacher.py", "--mode", "drop50", "--"]
    assert cont.args[cont.args.index("--config") + 1].endswith("mean_teacher_fcos.yaml")
    assert jobs["oracle-fcos-s0"].program[2] == "oracle"
    assert jobs["supervised-fcos-s0"].program[-1] == "train"  # ssodkit train itself


def _fake_run(runs: Path, name: str, iters: int, maps: list[tuple[int, float, float | None]]) -> None:
    run = runs / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"schedule:\n  iters: {iters}\n")
    records = [{"type": "eval", "iter": i, "student/map": s, **({"teacher/map": t} if t is not None else {})}
               for i, s, t in maps]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_gives_the_final_teacher_mean_and_sample_spread_and_skips_unfinished_runs(lh, tmp_path):
    for seed, t in enumerate((0.30, 0.34, 0.32)):
        _fake_run(tmp_path, f"mean_teacher-fcos-s{seed}", 100, [(50, 0.1, 0.1), (100, t - 0.01, t)])
    _fake_run(tmp_path, "mean_teacher-fcos-s3", 100, [(50, 0.5, 0.5)])  # still running
    _fake_run(tmp_path, "burnin-fcos-s0", 100, [(100, 0.2, None)])
    result = lh.report([tmp_path])
    row = result["rows"]["mean_teacher-fcos"]
    assert row["seeds"] == 3 and set(result["runs"]) == {f"mean_teacher-fcos-s{s}" for s in range(3)}
    assert row["map"] == pytest.approx(32.0) and row["map_std"] == pytest.approx(statistics.stdev([30, 34, 32]))
    assert row["student_map"] == pytest.approx(31.0)
    assert "| mean_teacher-fcos | 32.0 ± 2.0 | 31.0 ± 2.0 | 3 | 100 |" in lh.markdown(result)


def test_archive_keeps_the_reported_runs_small_files_and_reports_the_same(lh, tmp_path):
    runs, archived = tmp_path / "runs", tmp_path / "archive"
    _fake_run(runs, "supervised-fcos-s0", 100, [(100, 0.3, None)])
    _fake_run(runs, "burnin-fcos-s0", 100, [(100, 0.2, None)])
    _fake_run(runs, "supervised-fcos-s1", 100, [(50, 0.3, None)])  # unfinished: not archived
    (runs / "supervised-fcos-s0" / "checkpoints").mkdir()
    result = lh.report([runs])
    assert lh.archive(result, [runs], archived) == 2
    assert sorted(p.name for p in archived.iterdir()) == ["burnin-fcos-s0", "supervised-fcos-s0"]
    assert not (archived / "supervised-fcos-s0" / "checkpoints").exists()
    assert lh.report([archived]) == result
