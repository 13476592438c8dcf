"""benchmarks/cost.py's pure parts and one tiny pair end to end. No timing assertion: the
speed targets live in the benchmark (docs/benchmarks.md), never in unit tests."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import cost
from benchmarks.cost_evaluate import compare_stats, ssodkit_stats


def made_up(method: float, sup: float, floor: float, n: int = 3) -> dict[str, list[float]]:
    return {"method": [method] * n, "supervised": [sup] * n, "floor": [floor] * n}


def test_targets_follow_the_issue() -> None:
    for m in ("mean_teacher", "unbiased_teacher", "mixpl"):
        assert cost.target_for(m) == 1.3
    for m in ("soft_teacher", "sed", "pseco"):
        assert cost.target_for(m) == 1.6


def test_pair_entry_ratios_use_medians() -> None:
    times = {"method": [1.3, 9.0, 1.2], "supervised": [1.0, 1.0, 5.0], "floor": [1.25, 1.2, 1.3]}
    mems = {"method": [100.0, 120.0], "supervised": [90.0], "floor": [95.0]}
    e = cost.pair_entry("mean_teacher", times, mems, {"pseudo_per_image": 8.0})
    assert e["ratio"] == pytest.approx(1.3)  # median 1.3 / median 1.0: one slow step does not count
    assert e["floor_ratio"] == pytest.approx(1.25)
    assert e["sec_per_iter"] == pytest.approx(1.3)
    assert e["peak_mem_mb"] == 120.0
    assert e["target"] == 1.3 and e["above_target"] is False
    assert e["pseudo_per_image"] == 8.0 and e["repeats"] == 3


def test_above_target_is_marked_in_the_table() -> None:
    steps = {
        "mean_teacher/fcos": cost.pair_entry("mean_teacher", made_up(1.5, 1.0, 1.2), made_up(1, 1, 1)),
        "sed/fcos": cost.pair_entry("sed", made_up(1.5, 1.0, 1.2), made_up(1, 1, 1)),
    }
    assert steps["mean_teacher/fcos"]["above_target"] and not steps["sed/fcos"]["above_target"]
    table = cost.format_table(steps)
    rows = {line.split()[0]: line for line in table.splitlines() if "/" in line.split()[0]}
    assert rows["mean_teacher/fcos"].endswith("!")
    assert not rows["sed/fcos"].endswith("!")
    assert "above target (!): mean_teacher/fcos" in table


def test_rotations_put_each_kind_first_in_turn() -> None:
    orders = list(cost.rotations(["a", "b", "c"], 4))
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_schema_check() -> None:
    good = {
        "device": "cpu",
        "steps": {"mixpl/fcos": cost.pair_entry("mixpl", made_up(1, 1, 1), made_up(1, 1, 1))},
        "evaluate": {"speedup": 3.2, "identical": True},
        "pseudolabel": {"ratio": 1.0},
    }
    assert cost.check_schema(good) == []
    json.dumps(good)  # serialisable as written
    bad = {"steps": {"mixpl/fcos": {"ratio": 1.0}}, "evaluate": {"speedup": 1.0}}
    problems = cost.check_schema(bad)
    assert "device" in problems and "steps.mixpl/fcos.floor_ratio" in problems and "evaluate.identical" in problems


def test_evaluate_comparison() -> None:
    metrics = {k: 0.5 for k in ("map", "map50", "map75", "map_small", "map_medium", "map_large",
                                 "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")}
    metrics["map_small"] = None  # COCO's -1
    ours = ssodkit_stats(metrics)
    assert ours[3] == -1.0 and len(ours) == 12
    assert compare_stats(ours, list(ours)) == (True, 0.0)
    other = list(ours)
    other[0] += 1e-12
    identical, diff = compare_stats(ours, other)
    assert not identical and diff == pytest.approx(1e-12)


def test_peak_memory_measures_a_block() -> None:
    import torch

    memory = cost.PeakMemory(torch.device("cpu"))
    into: list[float] = []
    with memory.measure(into):
        torch.ones(4 * 2**20).sum()  # 16 MB
    assert len(into) == 1 and into[0] > 0 and not math.isnan(into[0])


def test_flags_give_each_step_its_images(tmp_path: Path) -> None:
    """The method steps n_l labeled + n_u unlabeled images, supervised n_l + n_u labeled."""
    from types import SimpleNamespace

    data = SimpleNamespace(train=tmp_path / "t.json", images=tmp_path, unlabeled=tmp_path / "u.json")
    args = cost.parse_args(["--labeled", "1", "--unlabeled", "4"])
    sup = cost.cost_flags("supervised", "fcos", data, tmp_path, args)
    assert sup["train.batch_size"] == 5
    for method in ("mean_teacher", "unbiased_teacher", "mixpl", "sed"):
        flags = cost.cost_flags(method, "fcos", data, tmp_path, args)
        assert (flags["train.batch_size"], flags["train.unlabeled_batch_size"]) == (1, 4), method
        assert flags["teacher.burn_in"] == 0
    assert cost.cost_flags("mixpl", "fcos", data, tmp_path, args)["method.mosaic_size"] == [64, 128]


def test_one_tiny_pair_end_to_end(tmp_path: Path) -> None:
    """Mean Teacher on FCOS with a 64 px ResNet-18, one timed repeat: the record is complete."""
    import torch

    from benchmarks.trace import make_data

    args = cost.parse_args([
        "--only", "mean_teacher/fcos", "--labeled", "1", "--unlabeled", "1", "--warmup", "0", "--repeats", "1",
        "--batches", "2", "--short-side", "64", "64", "--max-size", "80", "--pseudo-boxes", "2",
    ])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        data = make_data(tmp_path)
        sup = cost.Stepper.build(cost.cost_flags("supervised", "fcos", data, tmp_path / "runs", args), 2)
        entry = cost.measure_pair("mean_teacher", "fcos", data, tmp_path / "runs", sup, args,
                                  cost.PeakMemory(torch.device("cpu")))
        sup.trainer.close()
    finally:
        torch.set_num_threads(threads)
    assert cost.check_schema({"device": "cpu", "steps": {"mean_teacher/fcos": entry}}) == []
    assert entry["repeats"] == 1 and entry["target"] == 1.3
    assert entry["sec_per_iter"] > 0 and entry["ratio"] > 0 and entry["floor_ratio"] > 0
    assert entry["images_per_step"] == {"labeled": 1, "unlabeled": 1}
    assert 0 <= entry["pseudo_per_image"] <= 2
