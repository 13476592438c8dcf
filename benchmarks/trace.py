"""Fixed-seed loss traces: every logged term of a short CPU run, per method × detector.

A refactor that claims "same behaviour" must leave these unchanged. Record once before the
change, compare after:

    python benchmarks/trace.py --out benchmarks/results/trace.json            # record
    python benchmarks/trace.py --compare benchmarks/results/trace.json        # check

Each pair trains `--iters` iterations on a small synthetic set (96–128 px, ResNet-18, a
64-channel FPN, 2 labeled + 2 unlabeled images per step, CPU, no data workers) with a low
pseudo-label threshold so that the teacher's boxes reach the student from random init, and a
burn-in of 5 iterations so that the copy at its end and the EMA after it are both exercised.
`metrics.jsonl` is written every iteration; the trace is its `train` records.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PAIRS: list[tuple[str, str]] = [
    (method, detector)
    for method in ("supervised", "mean_teacher", "unbiased_teacher", "mixpl", "sed")
    for detector in ("fcos", "retinanet", "faster_rcnn")
] + [("soft_teacher", "faster_rcnn")]

COMMON: dict[str, Any] = {
    "detector.backbone": "resnet18",
    "detector.fpn_channels": 64,
    "detector.head_convs": 1,
    "views.train_short_side": [96, 128],
    "views.max_size": 160,
    "views.eval_short_side": 112,
    "train.batch_size": 2,
    "train.unlabeled_batch_size": 2,
    "train.log_interval": 1,
    "train.device": "cpu",
    "train.seed": 0,
    "data.num_workers": 0,
    "schedule.warmup_iters": 2,
    "eval.interval": 100000,
    "eval.pseudo_images": 0,
}
# Method settings that make 20 iterations from random init reach every branch. The keys
# are the config's own; `TEACHER_KEYS` says where the teacher's settings live.
METHOD_OVERRIDES: dict[str, dict[str, Any]] = {
    "mean_teacher": {"method.score_thr": 0.05},
    "unbiased_teacher": {"method.score_thr": 0.05},
    "mixpl": {"method.score_thr": 0.05},
    "soft_teacher": {"method.score_thr": 0.05, "method.rpn_pseudo_thr": 0.1, "method.cls_pseudo_thr": 0.1,
                     "method.reg_pseudo_thr": 0.5},
    "sed": {},
}
BURN_IN = 5
# Counters a run logs beside its loss terms, not part of the trace (added over time).
BOOKKEEPING = {"unreadable_images", "wall_s"}  # counters and clock readings, not loss terms


def teacher_keys() -> dict[str, Any]:
    """Burn-in set where this version of ssodkit keeps the teacher's settings."""
    from ssodkit.config import RunConfig

    section = "teacher" if "teacher" in RunConfig.model_fields else "method"
    return {f"{section}.burn_in": BURN_IN}


def make_data(root: Path) -> Any:
    from ssodkit.data.synthetic import generate_synthetic

    return generate_synthetic(root / "data", seed=3, n_train=12, n_val=4, n_unlabeled=12)


def pair_flags(method: str, detector: str, iters: int, data: Any, runs_dir: Path) -> dict[str, Any]:
    """The config flags of one pair's trace run (benchmarks/cost.py builds its pairs from them)."""
    flags = {
        **COMMON,
        "method.name": method,
        "detector.name": detector,
        "schedule.iters": iters,
        "data.train_ann": str(data.train),
        "data.train_images": str(data.images),
        "data.unlabeled": str(data.unlabeled),
        "data.unlabeled_images": str(data.images),
        "output.runs_dir": str(runs_dir),
        "output.name": f"{method}-{detector}",
        **METHOD_OVERRIDES.get(method, {}),
    }
    if method != "supervised":
        flags.update(teacher_keys())
    return flags


def trace_pair(method: str, detector: str, iters: int, data: Any, runs_dir: Path) -> list[dict[str, float]]:
    from ssodkit.config import build_config
    from ssodkit.engine.trainer import Trainer

    flags = pair_flags(method, detector, iters, data, runs_dir)
    torch.manual_seed(0)
    trainer = Trainer(build_config(None, flags, []))
    try:
        trainer.run()
    finally:
        trainer.close()
    records = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    drop = {"type", "sec_per_iter", "lr", *BOOKKEEPING}
    return [{k: v for k, v in r.items() if k not in drop} for r in records if r.get("type") == "train"]


def compare(old: dict[str, list[dict[str, float]]], new: dict[str, list[dict[str, float]]], rtol: float) -> list[str]:
    problems = []
    for pair, rows in old.items():
        if pair not in new:
            continue
        for i, (a, b) in enumerate(zip(rows, new[pair])):
            for key in sorted(set(a) | set(b)):
                x, y = a.get(key), b.get(key)
                if x is None or y is None:
                    problems.append(f"{pair} iter {a.get('iter', i)}: '{key}' only in {'old' if y is None else 'new'}")
                elif not math.isclose(x, y, rel_tol=rtol, abs_tol=1e-6):
                    problems.append(f"{pair} iter {a.get('iter', i)}: {key} {x!r} → {y!r}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, help="write the traces here")
    parser.add_argument("--compare", type=Path, help="compare with traces written before")
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--only", nargs="*", help="method/detector pairs to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pairs = [p for p in PAIRS if not args.only or f"{p[0]}/{p[1]}" in args.only]
    traces: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp))
        for method, detector in pairs:
            start = time.monotonic()
            traces[f"{method}/{detector}"] = trace_pair(method, detector, args.iters, data, Path(tmp) / "runs")
            print(f"{method}/{detector}: {args.iters} iterations in {time.monotonic() - start:.0f} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(traces, indent=1) + "\n")
    if args.compare:
        problems = compare(json.loads(args.compare.read_text()), traces, args.rtol)
        for line in problems:
            print(line)
        print(f"{len(traces)} pairs compared: {'identical within rtol ' + str(args.rtol) if not problems else str(len(problems)) + ' differences'}")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
