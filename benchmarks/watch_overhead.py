"""What the run folder's figures cost: the same short Mean Teacher run with results.png and
the sample grid on and off, interleaved (on, off, on, off, …) so machine noise hits both.

    python benchmarks/watch_overhead.py [--iters 40] [--eval-interval 10] [--repeats 2]

Prints and writes `benchmarks/results/watch_overhead.json`: seconds per training step
(steps only, as the trainer reports it) and wall time of each run, and the run files of one evaluation (results.csv, summary.json, and with
figures results.png and the sample grid's inference and drawing) timed on their own. A training step never
draws (figures are written after an evaluation, on rank 0), so its time must be level.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "watch_overhead.json"


def one_run(data, runs: Path, name: str, iters: int, interval: int, figures: bool) -> dict[str, float]:
    from ssodkit.config import build_config
    from ssodkit.engine.trainer import Trainer

    cfg = build_config(None, {
        "method.name": "mean_teacher", "detector.name": "fcos", "detector.backbone": "resnet10t",
        "detector.fpn_channels": 64, "detector.head_convs": 1,
        "views.train_short_side": [112, 144], "views.max_size": 192, "views.eval_short_side": 128,
        "data.train_ann": str(data.train), "data.train_images": str(data.images),
        "data.val_ann": str(data.val), "data.val_images": str(data.images),
        "data.unlabeled": str(data.unlabeled), "data.unlabeled_images": str(data.images),
        "data.num_workers": 0, "train.batch_size": 4, "train.unlabeled_batch_size": 4,
        "teacher.burn_in": 0, "schedule.iters": iters, "schedule.warmup_iters": 1,
        "eval.interval": interval, "eval.pseudo_images": 0, "eval.probe_images": 0,
        "output.runs_dir": str(runs), "output.name": name,
        "output.plots": figures, "output.samples": 4 if figures else 0,
    })
    trainer = Trainer(cfg)
    start = time.monotonic()
    try:
        summary = trainer.run()
        wall = time.monotonic() - start
        writes = []  # what one evaluation's run files cost on their own, three times
        for _ in range(3):
            t0 = time.monotonic()
            trainer._write_run_files(status="running")
            writes.append(time.monotonic() - t0)
    finally:
        trainer.close()
    return {"sec_per_iter": summary.sec_per_iter, "wall_s": wall, "run_files_s": statistics.median(writes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--eval-interval", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from ssodkit.data.synthetic import generate_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        data = generate_synthetic(Path(tmp) / "data", seed=0, n_train=32, n_val=16, n_unlabeled=32)
        runs: dict[str, list[dict[str, float]]] = {"figures": [], "none": []}
        for r in range(args.repeats):
            for kind in ("figures", "none"):
                runs[kind].append(
                    one_run(data, Path(tmp) / "runs", f"{kind}-{r}", args.iters, args.eval_interval, kind == "figures")
                )
    evals = args.iters // args.eval_interval
    result = {
        "command": "python benchmarks/watch_overhead.py " + " ".join(sys.argv[1:]),
        "iters": args.iters, "evaluations": evals, "runs": runs,
        **{f"{kind}_median_sec_per_iter": statistics.median(r["sec_per_iter"] for r in rs) for kind, rs in runs.items()},
        **{f"{kind}_median_wall_s": statistics.median(r["wall_s"] for r in rs) for kind, rs in runs.items()},
    }
    result["figure_cost_per_eval_s"] = (result["figures_median_wall_s"] - result["none_median_wall_s"]) / evals
    for kind, rs in runs.items():  # measured directly: results.csv + summary.json (+ results.png, samples)
        result[f"{kind}_run_files_s"] = statistics.median(r["run_files_s"] for r in rs)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    for kind in runs:
        print(f"{kind:8s} {result[f'{kind}_median_sec_per_iter']:.3f} s/step, {result[f'{kind}_median_wall_s']:.1f} s wall")
    print(f"run files per evaluation, timed alone: {result['figures_run_files_s']:.2f} s with figures, "
          f"{result['none_run_files_s']:.2f} s without")
    print(f"wall-time difference per evaluation {result['figure_cost_per_eval_s']:.2f} s ({evals} evaluations); wrote {OUT}")


if __name__ == "__main__":
    main()
