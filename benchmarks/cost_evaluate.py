"""benchmarks/cost.py's evaluate section: `ssodkit evaluate --predictions` against a plain
pycocotools script, end to end (interpreter start, JSON loading and conversion included).

Both run as subprocesses on the same files, interleaved (ssodkit, pycocotools, then
pycocotools, ssodkit, …); the speedup is the ratio of median wall times, and `identical`
says whether the twelve COCO numbers are equal (ssodkit writes None where COCO says -1).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = 3.0  # issue 18: ≥ 3× faster than pycocotools
STAT_FIELDS = (
    "map", "map50", "map75", "map_small", "map_medium", "map_large",
    "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large",
)  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, done.stdout


def ssodkit_stats(metrics: dict[str, Any]) -> list[float]:
    """The twelve numbers of `ssodkit evaluate --out`, -1 where it wrote None (COCO's -1)."""
    return [-1.0 if metrics[k] is None else float(metrics[k]) for k in STAT_FIELDS]


def compare_stats(a: list[float], b: list[float]) -> tuple[bool, float]:
    """(all twelve equal, largest absolute difference)."""
    diff = max((abs(x - y) for x, y in zip(a, b)), default=math.nan)
    return len(a) == len(b) == 12 and all(x == y for x, y in zip(a, b)), diff


def run_evaluate(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from benchmarks.make_eval_files import make

    gt, results = make(work, images=args.eval_images, dets=args.eval_dets, seed=0)
    metrics = work / "metrics.json"
    ssodkit_cmd = [
        sys.executable, "-m", "ssodkit", "evaluate", "--ann", str(gt), "--predictions", str(results),
        "--out", str(metrics), "--no-per-class",
    ]
    pycoco_cmd = [sys.executable, str(ROOT / "benchmarks" / "pycocotools_eval.py"), str(gt), str(results)]
    times: dict[str, list[float]] = {"ssodkit": [], "pycocotools": []}
    ref: list[float] = []
    ours: list[float] = []
    for r in range(args.eval_repeats):
        order = ["ssodkit", "pycocotools"] if r % 2 == 0 else ["pycocotools", "ssodkit"]
        for who in order:
            if who == "ssodkit":
                wall, _ = timed(ssodkit_cmd)
                ours = ssodkit_stats(json.loads(metrics.read_text()))
                backend = json.loads(metrics.read_text()).get("backend")
            else:
                wall, out = timed(pycoco_cmd)
                ref = [float(x) for x in json.loads(out.strip().splitlines()[-1])]
            times[who].append(wall)
            print(f"evaluate: {who} {wall:.2f} s", flush=True)
    identical, diff = compare_stats(ours, ref)
    med = {k: sorted(v)[len(v) // 2] if len(v) % 2 else sum(sorted(v)[len(v) // 2 - 1: len(v) // 2 + 1]) / 2
           for k, v in times.items()}
    return {
        "speedup": med["pycocotools"] / med["ssodkit"],
        "identical": identical,
        "max_abs_diff": diff,
        "target": TARGET,
        "ssodkit_s": med["ssodkit"],
        "pycocotools_s": med["pycocotools"],
        "ssodkit_backend": backend,
        "images": args.eval_images,
        "detections": args.eval_images * args.eval_dets,
        "repeats": args.eval_repeats,
        "stats_ssodkit": ours,
        "stats_pycocotools": ref,
        "commands": {"ssodkit": "ssodkit evaluate --ann gt.json --predictions results.json --out metrics.json --no-per-class",
                     "pycocotools": "python benchmarks/pycocotools_eval.py gt.json results.json"},
    }
