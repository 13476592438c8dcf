"""Long-horizon SSOD benchmark on the synthetic set: several seeds, learning curves, spread.

    python benchmarks/long_horizon.py run --detector fcos \
        --methods supervised mean_teacher mixpl --seeds 0 1 2 [--burn-in 1000] [--iters 4000] \
        [--jobs 1] [--variant NAME --set key=value ...] [--runs-dir runs/long]
    python benchmarks/long_horizon.py report [--runs-dir runs/long]

Protocol (issue: accuracy at a horizon where the teacher can move): per seed, one supervised
burn-in on the 10 % labeled split (`recipes/_base_/synthetic_long.yaml`, a model and image
size cheap enough for 2 CPU cores), then every method continues from that checkpoint for
`--iters` iterations with the same seed — `supervised` is the baseline trained for the same
total iterations. `--variant full --set data.labeled_percent=null` gives the fully-labeled
ceiling; `--methods oracle` (or `oracle:drop50`, `oracle:fp100`, `oracle:wrongclass`) is Mean
Teacher with the unlabeled images' hidden boxes as pseudo-labels
(`benchmarks/diagnostics/oracle_teacher.py`), the ceiling of the teacher's side; any other `--variant` names a set of overrides (e.g. a threshold policy) so that its
rows sit beside the defaults'. Runs are subprocesses of `ssodkit train`; a finished run is
skipped, an interrupted one resumed, so the command can simply be run again.

`report` reads every run's `metrics.jsonl` (nothing is typed in) and writes
`benchmarks/results/long_horizon.json` (per run: the eval series; per method × detector:
teacher and student mAP as mean ± sample std over seeds), one learning-curve plot per
method and detector, and prints the markdown table that `docs/benchmarks.md` leads with.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "recipes" / "_base_" / "synthetic_long.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "long_horizon.json"
PLOTS = ROOT / "benchmarks" / "results" / "long_horizon"
ARCHIVE = PLOTS / "runs"  # each finished run's metrics.jsonl, config.yaml, bench_wall.json: the report's input
ARCHIVED_FILES = ("metrics.jsonl", "config.yaml", "bench_wall.json")


@dataclass
class Job:
    name: str
    args: list[str]
    iters: int
    after: list[str] = field(default_factory=list)
    # What runs the args: `ssodkit train` from this checkout, or a script that takes its
    # options after `--` (the oracle-teacher diagnostic).
    program: list[str] = field(default_factory=lambda: ["-c", "from ssodkit.cli.app import main; main()", "train"])


ORACLE = "oracle"  # `--methods oracle` or `oracle:drop50` etc.: Mean Teacher with the hidden boxes as pseudo-labels


def method_program(method: str) -> tuple[str, list[str] | None]:
    """The recipe's method and, for an oracle variant, the diagnostic's command prefix."""
    if method == ORACLE or method.startswith(ORACLE + ":"):
        mode = method.partition(":")[2] or "oracle"
        return "mean_teacher", ["benchmarks/diagnostics/oracle_teacher.py", "--mode", mode, "--"]
    return method, None


def run_dir_state(run_dir: Path, iters: int) -> str:
    """'done' (evaluated at the last iteration), 'resume' (has a checkpoint) or 'new'."""
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("type") == "eval" and rec.get("iter") == iters:
                return "done"
    return "resume" if (run_dir / "checkpoints" / "last.pt").exists() else "new"


def method_recipe(method: str, detector: str) -> Path:
    """The method's synthetic recipe supplies its own parameters; the model and image size
    come from the long-horizon base (the recipe's own sizes are overridden below). A plugin
    method's recipe lives in its package (`plugins/*/recipes/synthetic/`)."""
    name = f"{method}_{detector}.yaml"
    builtin = ROOT / "recipes" / "synthetic" / name
    if builtin.exists():
        return builtin
    return next(iter(sorted(ROOT.glob(f"plugins/*/recipes/synthetic/{name}"))), builtin)


def plan(args: argparse.Namespace) -> list[Job]:
    jobs: list[Job] = []
    size_flags = [
        "--set", "detector.backbone=resnet10t", "--set", "detector.fpn_channels=64",
        "--set", "detector.head_convs=1", "--set", "views.train_short_side=[112,144]",
        "--set", "views.max_size=320", "--set", "views.eval_short_side=128",
        "--set", "data.num_workers=1",
    ]
    common = ["--runs-dir", str(args.runs_dir), "--set", f"eval.interval={args.eval_interval}"]
    for seed in args.seeds:
        burn = f"burnin-{args.detector}-s{seed}"
        jobs.append(Job(burn, [
            "--config", str(BASE), "--method", "supervised", "--detector", args.detector,
            "--seed", str(seed), "--iters", str(args.burn_in), "--name", burn,
            "--set", f"schedule.warmup_iters={min(100, args.burn_in // 10)}", *common,
        ], args.burn_in))
        for method in args.methods:
            recipe_method, program = method_program(method)
            tag = method.replace(":", "-") if args.variant is None else f"{method.replace(':', '-')}+{args.variant}"
            name = f"{tag}-{args.detector}-s{seed}"
            overrides = [x for kv in args.set for x in ("--set", kv)]
            extra = {"program": program} if program is not None else {}
            jobs.append(Job(name, [
                "--config", str(method_recipe(recipe_method, args.detector)), *size_flags,
                "--seed", str(seed), "--iters", str(args.iters), "--name", name,
                "--init-from", str(args.runs_dir / burn / "checkpoints" / "last.pt"),
                "--set", "schedule.warmup_iters=100", *common, *overrides,
            ], args.iters, after=[burn], **extra))
    return jobs


def execute(jobs: list[Job], runs_dir: Path, parallel: int) -> None:
    """Run the jobs as `ssodkit train` subprocesses, `parallel` at a time (each with
    cores/parallel threads), dependencies first; each run's console goes to <run>.log."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // parallel)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": path}
    pending = {j.name: j for j in jobs if run_dir_state(runs_dir / j.name, j.iters) != "done"}
    done = {j.name for j in jobs} - set(pending)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    while pending or running:
        for name, (proc, start) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            wall = time.monotonic() - start
            if proc.returncode == 0:
                done.add(name)
                (runs_dir / name / "bench_wall.json").write_text(json.dumps({"wall_s": wall, "threads": threads}))
                print(f"done {name} ({wall / 60:.1f} min)", flush=True)
            else:
                print(f"FAILED {name} (exit {proc.returncode}); see {runs_dir / (name + '.log')}", flush=True)
                pending = {n: j for n, j in pending.items() if name not in j.after}
        for name, job in list(pending.items()):
            if len(running) >= parallel:
                break
            if not all(dep in done for dep in job.after):
                continue
            run_dir = runs_dir / name
            state = run_dir_state(run_dir, job.iters)
            if state == "new" and run_dir.exists():
                shutil.rmtree(run_dir)  # a benchmark-owned folder killed before its first checkpoint
            # This checkout's code (not whatever `ssodkit` is installed): runs started hours apart
            # stay comparable while the working tree changes elsewhere.
            cmd = [sys.executable, *job.program, *(["--resume", str(run_dir)] if state == "resume" else job.args)]
            log = open(runs_dir / f"{name}.log", "a")  # noqa: SIM115 - closed with the process
            print(f"start {name} ({state})", flush=True)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            running[name] = (proc, time.monotonic())
            del pending[name]
        time.sleep(2)


# ---------------------------------------------------------------------------- report
def eval_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("type") != "eval":
            continue
        for key in ("teacher/map", "student/map", "pseudo/precision50", "pseudo/recall50"):
            if rec.get(key) is not None:
                series.setdefault(key, []).append((rec["iter"], 100 * rec[key]))
    return series


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def run_dirs(runs_dirs: list[Path]) -> list[Path]:
    """Every run folder of the given folders (a name in a later folder replaces an earlier one's),
    so that runs of several sessions — the archive and today's runs — report together."""
    found: dict[str, Path] = {}
    for runs_dir in runs_dirs:
        if runs_dir.is_dir():
            found.update({p.name: p for p in runs_dir.iterdir() if p.is_dir() and (p / "metrics.jsonl").exists()})
    return [found[name] for name in sorted(found)]


def archive(result: dict, dirs: list[Path], out: Path) -> int:
    """Copy the reported runs' (and their burn-ins') small files into `out`, so that the
    report can be rebuilt from the repository after the run folders are gone."""
    names = set(result["runs"]) | {f"burnin-{n.rsplit('-', 2)[-2]}-{n.rsplit('-', 1)[-1]}" for n in result["runs"]}
    copied = 0
    for run_dir in run_dirs(dirs):
        if run_dir.name not in names or run_dir.resolve().parent == out.resolve():
            continue
        (out / run_dir.name).mkdir(parents=True, exist_ok=True)
        for file in ARCHIVED_FILES:
            if (run_dir / file).exists():
                shutil.copyfile(run_dir / file, out / run_dir.name / file)
        copied += 1
    return copied


def report(runs_dirs: list[Path]) -> dict:
    rows: dict[str, dict] = {}
    runs: dict[str, dict] = {}
    for run_dir in run_dirs(runs_dirs):
        tag, _, seed = run_dir.name.rpartition("-s")
        if run_dir.name.startswith("burnin-") or not seed.isdigit():
            continue
        series = eval_series(run_dir)
        if not series.get("student/map"):
            continue
        cfg = (run_dir / "config.yaml").read_text()
        iters = int(next(line.split(":")[1] for line in cfg.splitlines() if line.strip().startswith("iters:")))
        if series["student/map"][-1][0] != iters:
            continue  # still running
        wall = json.loads((run_dir / "bench_wall.json").read_text())["wall_s"] if (run_dir / "bench_wall.json").exists() else None
        runs[run_dir.name] = {"series": series, "iters": iters, "seed": int(seed), "wall_s": wall}
        row = rows.setdefault(tag, {"runs": [], "iters": iters})
        row["runs"].append(run_dir.name)
    for tag, row in rows.items():
        finals = [runs[r]["series"] for r in row["runs"]]
        student = [s["student/map"][-1][1] for s in finals]
        teacher = [s["teacher/map"][-1][1] for s in finals if s.get("teacher/map")]
        primary = teacher or student
        row.update({
            "seeds": len(row["runs"]),
            "map": statistics.fmean(primary), "map_std": spread(primary),
            "student_map": statistics.fmean(student), "student_map_std": spread(student),
            "per_seed": primary,
            "wall_min": statistics.fmean(walls) if (walls := [runs[r]["wall_s"] / 60 for r in row["runs"] if runs[r]["wall_s"]]) else None,
        })
    result = {"protocol": "benchmarks/long_horizon.py", "rows": rows, "runs": runs}
    return result


def markdown(result: dict) -> str:
    lines = [
        "| method / detector | teacher mAP | student mAP | seeds | SSOD iters | wall / run |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for tag, row in sorted(result["rows"].items()):
        def cell(mean: float, std: float) -> str:  # one seed has no spread: none is shown
            return f"{mean:.1f} ± {std:.1f}" if row["seeds"] > 1 else f"{mean:.1f}"

        teacher = cell(row["map"], row["map_std"]) if not tag.startswith("supervised") else "—"
        wall = "—" if row["wall_min"] is None else f"{row['wall_min']:.0f} min"
        lines.append(
            f"| {tag} | {teacher} | {cell(row['student_map'], row['student_map_std'])} | "
            f"{row['seeds']} | {row['iters']} | {wall} |"
        )
    return "\n".join(lines)


def plot(result: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    by_detector: dict[str, list[str]] = {}
    for tag in result["rows"]:
        by_detector.setdefault(tag.rsplit("-", 1)[1], []).append(tag)
    for detector, tags in by_detector.items():
        baseline = next((t for t in tags if t.startswith("supervised-")), None)
        for tag in tags:
            if tag == baseline:
                continue
            fig, ax = plt.subplots(figsize=(6, 4))
            curves = [(tag, "teacher/map", "teacher"), (tag, "student/map", "student")]
            if baseline:
                curves.append((baseline, "student/map", "supervised"))
            for src, key, label in curves:
                per_seed = [result["runs"][r]["series"].get(key, []) for r in result["rows"][src]["runs"]]
                if not per_seed or not per_seed[0]:
                    continue
                iters = [i for i, _ in per_seed[0]]
                vals = [[dict(s).get(i) for s in per_seed] for i in iters]
                mean = [statistics.fmean([v for v in vs if v is not None]) for vs in vals]
                std = [spread([v for v in vs if v is not None]) for vs in vals]
                ax.plot(iters, mean, label=label)
                ax.fill_between(iters, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
            ax.set(xlabel="SSOD iteration (after the supervised burn-in)", ylabel="val mAP", title=tag)
            ax.legend()
            path = out_dir / f"{tag}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--detector", default="fcos")
    run.add_argument("--methods", nargs="+", default=["supervised", "mean_teacher", "mixpl"])
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    run.add_argument("--burn-in", type=int, default=1000)
    run.add_argument("--iters", type=int, default=4000)
    run.add_argument("--eval-interval", type=int, default=500)
    run.add_argument("--jobs", type=int, default=1, help="runs at a time (threads split between them)")
    run.add_argument("--variant", default=None, help="name for the --set overrides (rows stay apart)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "long")
    rep = sub.add_parser("report")
    rep.add_argument(
        "--runs-dir", type=Path, nargs="+", default=[ARCHIVE, ROOT / "runs" / "long"],
        help="folders of runs (default: the archive, then runs/long)",
    )
    rep.add_argument("--results", type=Path, default=RESULTS)
    rep.add_argument("--archive", type=Path, default=ARCHIVE, help="copy the reported runs' small files here")
    args = parser.parse_args()
    if args.command == "run":
        execute(plan(args), args.runs_dir.resolve(), args.jobs)
        return
    sys.path.insert(0, str(ROOT))  # this checkout's ssodkit, as the runs use
    from ssodkit.io import write_json_atomic

    result = report(args.runs_dir)
    copied = archive(result, args.runs_dir, args.archive)
    print(f"archived {copied} run(s) in {args.archive}", file=sys.stderr)
    result["plots"] = [str(p.relative_to(ROOT)) for p in plot(result, PLOTS)]
    write_json_atomic(args.results, result)
    print(markdown(result))
    print(f"wrote {args.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
