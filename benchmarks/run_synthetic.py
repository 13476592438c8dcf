"""SSOD benchmark on the synthetic set: same data, seed and iterations for every method.

    python benchmarks/run_synthetic.py --pairs supervised/fcos mean_teacher/fcos \
        [--iters 1500] [--device auto] [--set key=value ...]

Each pair trains from `recipes/synthetic/<method>_<detector>.yaml` (10% labeled, fold 1),
then the teacher's val mAP (the student's for supervised) and the measured wall time per
training iteration are merged into `benchmarks/results/synthetic.json` and printed as a
table. Numbers come from the runs; nothing is typed in.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ssodkit.io import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "synthetic.json"


def run_pair(
    pair: str, iters: int | None, device: str, overrides: list[str], runs_dir: Path,
    init_from: Path | None = None, init_info: dict | None = None,
) -> dict:
    from ssodkit.config import build_config
    from ssodkit.engine.trainer import Trainer

    method, detector = pair.split("/")
    recipe = ROOT / "recipes" / "synthetic" / f"{method}_{detector}.yaml"
    flags = {"train.device": device, "output.runs_dir": str(runs_dir), "output.name": f"{method}-{detector}"}
    if iters is not None:
        flags["schedule.iters"] = iters
        flags["schedule.warmup_iters"] = min(100, iters // 10)
        flags["eval.interval"] = iters
    if init_from is not None:
        flags["train.init_from"] = str(init_from)
    cfg = build_config(recipe, flags, overrides)
    trainer = Trainer(cfg)
    try:
        start = time.monotonic()
        summary = trainer.run()
        wall = time.monotonic() - start
        device_name = torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else platform.processor() or "cpu"
    finally:
        trainer.close()
    result = summary.final.get("teacher") or summary.final["student"]
    train_log = [json.loads(line) for line in (summary.run_dir / "metrics.jsonl").read_text().splitlines()]
    step_times = [r["sec_per_iter"] for r in train_log if r.get("type") == "train"]
    return {
        "map": result.map,
        "map50": result.map50,
        "map_small": result.map_small,
        "map_medium": result.map_medium,
        "map_large": result.map_large,
        "student_map": summary.final["student"].map,
        "sec_per_iter": summary.sec_per_iter,
        "logged_sec_per_iter_median": sorted(step_times)[len(step_times) // 2] if step_times else None,
        "iters": summary.iterations,
        "labeled_percent": 100.0 if cfg.data.labeled_percent is None else cfg.data.labeled_percent,
        "wall_s": wall,
        "device": device_name,
        "amp": str(trainer.amp_dtype) if trainer.amp_dtype else "off",
        "recipe": str(recipe.relative_to(ROOT)),
        "run_dir": str(summary.run_dir),  # a rerun into the same --runs-dir gets a `-2` suffix
        "overrides": overrides,
        **({"init_from": init_info} if init_info is not None else {}),
    }


def describe_init(path: Path) -> dict:
    """Where a continued run started: the checkpoint, how long it had trained in all (its own
    iterations plus those of the checkpoint it was itself initialised from, recursively)."""
    from ssodkit.engine.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    info = {"checkpoint": str(path), "iterations": int(state["iteration"]), "method": state["config"]["method"]["name"]}
    parent = state["config"].get("train", {}).get("init_from")
    if parent:
        if Path(parent).is_file():
            info["iterations"] += describe_init(Path(parent))["iterations"]
            info["init_from"] = str(parent)
        else:
            info["note"] = f"its own init_from {parent} is gone; iterations count this checkpoint's only"
    return info


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="synthetic set, 10% labeled (val mAP of the teacher; student for supervised)")
    for col in ("method/detector", "mAP", "AP50", "APs", "APm", "APl", "s/iter", "iters", "device"):
        table.add_column(col, justify="right" if col != "method/detector" else "left")
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    for key, r in sorted(results.items()):
        table.add_row(key, pct(r["map"]), pct(r["map50"]), pct(r.get("map_small")), pct(r.get("map_medium")),
                      pct(r.get("map_large")), f"{r['sec_per_iter']:.3f}", str(r["iters"]), r.get("device", ""))
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", required=True, help="method/detector, e.g. mean_teacher/fcos")
    parser.add_argument("--iters", type=int, default=None, help="override the recipes' iterations")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override for every pair")
    parser.add_argument(
        "--init-from", type=Path, default=None,
        help="start every pair from this checkpoint (e.g. the supervised run's last.pt): SSOD after a burn-in",
    )
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "benchmarks")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    init_info = describe_init(args.init_from) if args.init_from is not None else None  # read once
    for pair in args.pairs:
        results[pair] = run_pair(
            pair, args.iters, args.device, args.overrides, args.runs_dir, args.init_from, init_info
        )
        write_json_atomic(args.results, results)  # after each pair: nothing lost
        row = results[pair]
        print(f"{pair}: mAP {100 * (row['map'] or 0):.1f}, {row['sec_per_iter']:.3f} s/it, run {row['run_dir']}", flush=True)
    print_table(results)


if __name__ == "__main__":
    main()
