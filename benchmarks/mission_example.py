"""The mission's example command, timed as a user runs it (issue 18, item 3).

    python benchmarks/mission_example.py [--iters 4] [--before REV] [--out FILE]

Runs `ssodkit train --method sed --detector faster_rcnn` with the CLI defaults (random
initialisation, the synthetic set, batch 8 labeled + 32 unlabeled) for `--iters`
iterations, and beside it the supervised command on the same 40 images per step
(`--batch-size 40`) and the plain supervised command (8 images). Only the iteration count,
a record every iteration and a fresh run folder are set: no evaluation happens before the
last iteration, whose evaluation is not timed. Per command: the time from launch to the
first training log line, and the median `sec_per_iter` of the iterations after the first.

`--before REV` runs the same commands on another commit as well (a detached worktree of this
repository, on `PYTHONPATH`), so that "before" and "after" come from one machine in one run.
Writes `benchmarks/results/mission_example.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "mission_example.json"
COMMANDS = {
    "sed": ["--method", "sed", "--detector", "faster_rcnn"],
    "supervised_same_images": ["--method", "supervised", "--detector", "faster_rcnn", "--batch-size", "40"],
    "supervised": ["--method", "supervised", "--detector", "faster_rcnn"],
}
FIRST_LOG = re.compile(r"^\[1/\d+\]")


def run_command(code: Path, args: list[str], iters: int, runs: Path, name: str) -> dict[str, Any]:
    """One `ssodkit train` subprocess on the checkout `code`: time to its first log line and
    the step times it logged."""
    cmd = [
        sys.executable, "-c", "from ssodkit.cli.app import main; main()", "train", *args,
        "--iters", str(iters), "--runs-dir", str(runs), "--name", name, "--set", "train.log_interval=1",
    ]
    env = {**os.environ, "PYTHONPATH": str(code)}
    start = time.monotonic()
    first_log: float | None = None
    with subprocess.Popen(cmd, cwd=runs, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            if first_log is None and FIRST_LOG.match(line.strip()):
                first_log = time.monotonic() - start
            tail = (tail + [line])[-20:]
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"{' '.join(args)} on {code} failed (exit {rc}):\n{''.join(tail)}")
    records = [json.loads(x) for x in (runs / name / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r["sec_per_iter"] for r in records if r.get("type") == "train" and r.get("iter", 0) > 1]
    return {
        "first_log_s": first_log,
        "sec_per_iter": statistics.median(steps) if steps else None,
        "step_times": steps,
        "wall_s": time.monotonic() - start,
    }


def measure(code: Path, iters: int, tmp: Path, label: str) -> dict[str, Any]:
    runs = tmp / label
    runs.mkdir(parents=True)
    result: dict[str, Any] = {}
    for key, args in COMMANDS.items():
        result[key] = entry = run_command(code, args, iters, runs, key)
        print(f"{label} {key}: first log line after {entry['first_log_s']:.1f} s, "
              f"{entry['sec_per_iter']:.2f} s/it", flush=True)
    sed, same = result["sed"]["sec_per_iter"], result["supervised_same_images"]["sec_per_iter"]
    result["ratio_to_supervised_same_images"] = sed / same
    result["ratio_to_supervised_command"] = sed / result["supervised"]["sec_per_iter"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=4, help="iterations per command (the first is not timed)")
    parser.add_argument("--before", help="a git revision to time as well")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "command": "python benchmarks/mission_example.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
        "head": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.strip(),
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.before:
            before = tmp / "before-code"
            subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True,
                           capture_output=True)
            try:
                result["before"] = {"rev": args.before, **measure(before, args.iters, tmp, "before")}
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
        result["after"] = measure(ROOT, args.iters, tmp, "after")
    result["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for label in ("before", "after"):
        if label in result:
            r = result[label]
            print(f"{label}: sed {r['sed']['sec_per_iter']:.2f} s/it (first log {r['sed']['first_log_s']:.1f} s); "
                  f"{r['ratio_to_supervised_same_images']:.2f}× supervised on the same 40 images, "
                  f"{r['ratio_to_supervised_command']:.2f}× the plain supervised command")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
