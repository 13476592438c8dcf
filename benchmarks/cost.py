"""What an SSOD step costs against its floor, measured side by side (issue 18).

    PYTHONPATH=. python benchmarks/cost.py                    # everything, a few minutes on 2 CPU cores
    PYTHONPATH=. python benchmarks/cost.py --only sed/fcos --repeats 3 --skip-evaluate --skip-pseudolabel

**Steps.** For each method × detector pair of `benchmarks/trace.py` (its set-up: synthetic
data, ResNet-18 with a 64-channel FPN, 96–128 px images, CPU — `--short-side`, `--max-size`,
`--backbone` change the size), in one process, three trainers step in turn, the order
rotated every repeat so that machine noise hits all three alike:

* the method: `Trainer.train_step` (forward, backward, optimiser, EMA update) on
  `--labeled` + `--unlabeled` images, after its burn-in (`teacher.burn_in: 0`);
* supervised: the same detector's supervised step on `labeled + unlabeled` labeled images;
* the floor: that supervised step plus one teacher forward (`eval()`, `no_grad`, `predict`)
  on the method's weak views of its `unlabeled` images, and the EMA update.

The batches are drawn once before timing (data loading is not in the step) and cycled.
After `--warmup` steps of each, `--repeats` steps of each are timed; the medians give
`ratio` (method / supervised) and `floor_ratio` (floor / supervised). Peak memory of each
step: the process's peak RSS during it on CPU (`VmHWM`, reset before each step through
`/proc/self/clear_refs`; `ru_maxrss` where that is not possible, which never goes down), or
`torch.cuda.max_memory_allocated` on CUDA. On CPU that peak is the whole process's (the
models of the pairs measured before included), so it tells little about one method against
another; `step_mem_mb` (peak minus the RSS at the step's start) is a lower bound, often near
0, because the allocator reuses the pages that earlier steps freed. The CUDA figures are
per step.

**Evaluate** (`--skip-evaluate` leaves it out): a synthetic ground truth and a results file
(`--eval-images` × `--eval-dets`) are written to a temporary folder; `ssodkit evaluate
--predictions` and a plain pycocotools `COCOeval` script run end to end as subprocesses
(JSON loading included), interleaved `--eval-repeats` times; the speedup is the ratio of
median wall times and `identical` compares the twelve summary numbers.

**Loaders** (`--skip-loaders`; `benchmarks/cost_loader.py`): each method's batch stream
(the run's own loaders: decoding, views, collation) drained with no step, images/s for each
`--loader-workers` count, against the step's demand (images per step / the method's step
time above).

**Pseudolabel** (`--skip-pseudolabel`): `ssodkit pseudolabel`'s images/s against a bare
`torch.inference_mode()` batched loop over the same model, images and DataLoader workers.

Writes `benchmarks/results/cost.json` and prints the table of ratios with their targets.
The figures are only comparable within one run: the machine may be shared.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch

OUT = ROOT / "benchmarks" / "results" / "cost.json"

# Issue 18's targets: method step / supervised step over the same number of images.
TARGETS: dict[str, float] = {
    "mean_teacher": 1.3,
    "unbiased_teacher": 1.3,
    "mixpl": 1.3,
    "soft_teacher": 1.6,  # extra views or jitter passes by design
    "sed": 1.6,
    "pseco": 1.6,
}
DEFAULT_TARGET = 1.3


def target_for(method: str) -> float:
    return TARGETS.get(method, DEFAULT_TARGET)


# ---------------------------------------------------------------------------- pure parts
def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def pair_entry(
    method: str, times: dict[str, list[float]], mems: dict[str, list[float]], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One pair's record in cost.json from its timed steps (`times[kind]`, seconds) and peak
    memories (`mems[kind]`, MB), kind ∈ method / supervised / floor."""
    sup = median(times["supervised"])
    entry = {
        "ratio": median(times["method"]) / sup,
        "floor_ratio": median(times["floor"]) / sup,
        "target": target_for(method),
        "sec_per_iter": median(times["method"]),
        "peak_mem_mb": max(mems["method"]) if mems.get("method") else math.nan,
        "supervised_sec_per_iter": sup,
        "floor_sec_per_iter": median(times["floor"]),
        "supervised_peak_mem_mb": max(mems["supervised"]) if mems.get("supervised") else math.nan,
        "floor_peak_mem_mb": max(mems["floor"]) if mems.get("floor") else math.nan,
        "repeats": len(times["method"]),
    }
    entry["above_target"] = entry["ratio"] > entry["target"]
    entry.update(extra or {})
    return entry


def rotations(kinds: list[str], repeats: int) -> Iterator[list[str]]:
    """`kinds` in a rotated order each repeat (a, b, c; b, c, a; c, a, b; …)."""
    for r in range(repeats):
        k = r % len(kinds)
        yield kinds[k:] + kinds[:k]


def format_table(steps: dict[str, dict[str, Any]]) -> str:
    """The table of ratios, one pair a row; `!` marks a ratio above its target."""
    head = (f"{'pair':<30} {'s/it':>7} {'sup s/it':>8} {'ratio':>6} {'floor':>6} {'target':>6} {'peak MB':>8} "
            f"{'pl/img':>6}")
    lines = [head, "-" * len(head)]
    for pair, e in steps.items():
        mark = " !" if e["above_target"] else ""
        pl_key = next((k for k in ("pseudo_per_image", "mixup_pseudo_per_image", "plain_pseudo_per_image") if k in e), None)
        pl = f"{e[pl_key]:.1f}" if pl_key else "-"
        lines.append(
            f"{pair:<30} {e['sec_per_iter']:>7.3f} {e['supervised_sec_per_iter']:>8.3f} {e['ratio']:>5.2f}× "
            f"{e['floor_ratio']:>5.2f}× {e['target']:>5.1f}× {e['peak_mem_mb']:>8.0f} {pl:>6}{mark}"
        )
    above = [p for p, e in steps.items() if e["above_target"]]
    lines.append(f"above target (!): {', '.join(above) if above else 'none'}")
    return "\n".join(lines)


def format_loader_table(loaders: dict[str, dict[str, Any]]) -> str:
    """Loader images/s per worker count against the step's demand, one method a row."""
    workers = sorted({w for e in loaders.values() for w in e["images_per_s"]}, key=int)
    head = f"{'loader (method)':<20} " + " ".join(f"{w + ' wk':>8}" for w in workers) + f" {'step needs':>10} {'0 wk share':>10}"
    lines = [head, "-" * len(head)]
    for method, e in loaders.items():
        rates = " ".join(f"{e['images_per_s'].get(w, math.nan):>8.1f}" for w in workers)
        demand = e.get("demand_images_per_s", math.nan)
        share = e.get("serial_share", math.nan)
        lines.append(f"{method:<20} {rates} {demand:>10.1f} {share:>9.0%}")
    lines.append("images/s of the run's own batch stream with no step; 'step needs': images per step / step time; "
                 "'0 wk share': share of a step spent loading when loading is serial (0 workers)")
    return "\n".join(lines)


def check_schema(result: dict[str, Any]) -> list[str]:
    """What cost.json lacks of the schema issue 18 gives (empty when complete)."""
    problems = []
    if "device" not in result:
        problems.append("device")
    for pair, e in result.get("steps", {}).items():
        for key in ("ratio", "floor_ratio", "target", "sec_per_iter", "peak_mem_mb"):
            if key not in e:
                problems.append(f"steps.{pair}.{key}")
    if "evaluate" in result:
        for key in ("speedup", "identical"):
            if key not in result["evaluate"]:
                problems.append(f"evaluate.{key}")
    if "pseudolabel" in result and "ratio" not in result["pseudolabel"]:
        problems.append("pseudolabel.ratio")
    return problems


# ---------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of a block: CUDA's allocator peak, or the process's peak RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = False
        if device.type != "cuda":
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.resettable = True
            except OSError:
                pass

    @contextmanager
    def measure(self, into: list[float], growth: list[float] | None = None) -> Iterator[None]:
        """Append the block's peak (MB) to `into` and, to `growth`, how far above the memory
        in use when it started that peak was (what the step itself needs, the process's
        other models and allocator caches left out)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device) / 2**20
        elif self.resettable:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            before = proc_status_mb("VmRSS")
        else:
            before = math.nan
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.resettable:
            peak = proc_status_mb("VmHWM")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        into.append(peak)
        if growth is not None:
            growth.append(peak - before)

    @property
    def how(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated"
        return "process peak RSS (VmHWM, reset per step)" if self.resettable else "ru_maxrss (never reset)"


def proc_status_mb(key: str) -> float:
    """`VmHWM` (peak RSS since the last reset) or `VmRSS` of this process, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return math.nan


# ---------------------------------------------------------------------------- steps
def cost_flags(method: str, detector: str, data: Any, runs: Path, args: argparse.Namespace) -> dict[str, Any]:
    """trace.py's flags for the pair, sized by the options, the burn-in over from step 0."""
    from benchmarks.trace import pair_flags

    flags = pair_flags(method, detector, 100_000, data, runs)
    flags.update({
        "detector.backbone": args.backbone,
        "views.train_short_side": args.short_side,
        "views.max_size": args.max_size,
        "train.batch_size": args.labeled,
        "train.unlabeled_batch_size": args.unlabeled,
        "train.device": args.device,
        "eval.probe_images": 0,
        "output.samples": 0,
        "output.plots": False,
    })
    if method != "supervised":
        key = next(k for k in flags if k.endswith(".burn_in"))
        flags[key] = 0
        # From random init a teacher's scores sit at the heads' priors (0.01): a threshold
        # keeps nothing on one detector and everything on another, and an empty pseudo-label
        # batch skips the student's unlabeled forward. The teacher's top `pseudo_boxes`
        # boxes per image, whatever their score, give every pair the same load.
        flags["detector.score_thresh"] = 0.0
        flags["detector.detections_per_img"] = args.pseudo_boxes
        for k in ("method.score_thr", "method.rpn_pseudo_thr", "method.cls_pseudo_thr"):
            if k in flags:
                flags[k] = 0.0
    else:
        flags["train.batch_size"] = args.labeled + args.unlabeled
    if method == "mixpl":
        # Mosaic tiles in the recipes' proportion to the images (synthetic 96–192 for short
        # sides up to 208, COCO 400–800 for 800): half to all of the largest short side.
        flags["method.mosaic_size"] = [args.short_side[1] // 2, args.short_side[1]]
    return flags


@dataclass
class Stepper:
    """A trainer stepped as `Trainer.run` steps it, on batches drawn before timing."""

    trainer: Any
    batches: list[Any]
    k: int = 0

    @classmethod
    def build(cls, flags: dict[str, Any], n_batches: int) -> Stepper:
        from ssodkit.config import build_config
        from ssodkit.engine.trainer import Trainer

        torch.manual_seed(0)
        trainer = Trainer(build_config(None, flags, []))
        stream = trainer.data.batches(start_batch=0)
        batches = [next(stream) for _ in range(n_batches)]
        trainer.data.close()
        return cls(trainer, batches)

    def next_batch(self) -> Any:
        batch = self.batches[self.k % len(self.batches)]
        self.k += 1
        return batch

    def step(self, batch: Any | None = None) -> dict[str, float] | None:
        t = self.trainer
        losses = t.train_step(batch if batch is not None else self.next_batch())
        t.scheduler.step()
        t.iteration += 1
        return losses


@dataclass
class Floor:
    """The supervised step plus a teacher forward on the weak views and the EMA update."""

    sup: Stepper
    weak: list[Any]  # the method's unlabeled weak-view samples, one list per batch
    teacher: torch.nn.Module = field(init=False)
    k: int = 0

    def __post_init__(self) -> None:
        from ssodkit.engine.ema import EMA

        self.teacher = copy.deepcopy(self.sup.trainer.model).eval().requires_grad_(False)
        self.ema = EMA()

    def step(self) -> None:
        from ssodkit.engine.data_setup import samples_to_batch
        from ssodkit.methods.base import ModelHandle

        t = self.sup.trainer
        weak = samples_to_batch(self.weak[self.k % len(self.weak)], t.device)
        self.k += 1
        with torch.no_grad():
            ModelHandle(self.teacher).predict(weak.images)
        self.sup.step()
        self.ema.update(self.teacher, t.model, t.iteration)


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure_pair(
    method: str, detector: str, data: Any, runs: Path, sup: Stepper, args: argparse.Namespace, memory: PeakMemory
) -> dict[str, Any]:
    """Warm-up, then `args.repeats` interleaved steps of the method, supervised and the floor."""
    n_batches = max(2, args.batches)
    stepper = Stepper.build(cost_flags(method, detector, data, runs, args), n_batches)
    device = stepper.trainer.device
    weak = [unl["weak"] for _, unl in stepper.batches if unl is not None and "weak" in unl]
    floor = Floor(sup, weak)
    runs_of: dict[str, Callable[[], Any]] = {"method": stepper.step, "supervised": sup.step, "floor": floor.step}
    times: dict[str, list[float]] = {k: [] for k in runs_of}
    mems: dict[str, list[float]] = {k: [] for k in runs_of}
    growth: dict[str, list[float]] = {k: [] for k in runs_of}
    stats: dict[str, list[float]] = {}
    for _ in range(args.warmup):
        for run in runs_of.values():
            run()
    for order in rotations(list(runs_of), args.repeats):
        for kind in order:
            with memory.measure(mems[kind], growth[kind]):
                times[kind].append(time_call(runs_of[kind], device))
            if kind == "method":
                for key, value in stepper.trainer.method.stats.items():
                    if key.endswith("pseudo_per_image") or key == "teacher_fg_cells":
                        stats.setdefault(key, []).append(float(value))
    stepper.trainer.close()
    extra: dict[str, Any] = {key: median(v) for key, v in stats.items()}
    for kind, values in growth.items():
        extra[f"{'' if kind == 'method' else kind + '_'}step_mem_mb"] = max(values) if values else math.nan
    extra["images_per_step"] = {"labeled": args.labeled, "unlabeled": args.unlabeled}
    return pair_entry(method, times, mems, extra)


def run_steps(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, Any]]:
    from benchmarks.trace import PAIRS, make_data

    data = make_data(tmp)
    runs = tmp / "runs"
    memory = PeakMemory(torch.device(args.device))
    pairs = [(m, d) for m, d in PAIRS if m != "supervised" and (not args.only or f"{m}/{d}" in args.only)]
    supervised: dict[str, Stepper] = {}
    steps: dict[str, dict[str, Any]] = {}
    for method, detector in pairs:
        if detector not in supervised:
            supervised[detector] = Stepper.build(cost_flags("supervised", detector, data, runs, args), max(2, args.batches))
        start = time.monotonic()
        try:
            steps[f"{method}/{detector}"] = entry = measure_pair(method, detector, data, runs, supervised[detector], args, memory)
        except Exception as exc:  # noqa: BLE001 - a pair that does not run is reported, not fatal
            print(f"{method}/{detector}: does not run ({type(exc).__name__}: {exc})", flush=True)
            continue
        print(
            f"{method}/{detector}: {entry['sec_per_iter']:.3f} s/it, supervised {entry['supervised_sec_per_iter']:.3f}, "
            f"ratio {entry['ratio']:.2f}× (floor {entry['floor_ratio']:.2f}×, target {entry['target']:.1f}×) "
            f"[{time.monotonic() - start:.0f} s]",
            flush=True,
        )
    for s in supervised.values():
        s.trainer.close()
    return steps


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="method/detector pairs (default: every pair of trace.py but supervised)")
    parser.add_argument("--labeled", type=int, default=1, help="labeled images per step (n_l)")
    parser.add_argument("--unlabeled", type=int, default=4, help="unlabeled images per step (n_u; the CLI's 1:4)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each kind first")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps of each kind")
    parser.add_argument("--batches", type=int, default=4, help="batches drawn before timing and cycled")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--short-side", type=int, nargs=2, default=[96, 128], help="views.train_short_side: min and max")
    parser.add_argument("--max-size", type=int, default=160, help="views.max_size")
    parser.add_argument("--pseudo-boxes", type=int, default=8,
                        help="the teacher's top boxes per image kept as pseudo-labels (score threshold 0)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--skip-evaluate", action="store_true")
    parser.add_argument("--skip-pseudolabel", action="store_true")
    parser.add_argument("--skip-loaders", action="store_true")
    parser.add_argument("--loader-workers", type=int, nargs="+", default=[0, 1, 2],
                        help="data.num_workers values whose loader rate is measured")
    parser.add_argument("--loader-batches", type=int, default=10, help="batches timed per loader")
    parser.add_argument("--loader-scale", type=float, default=1.0,
                        help="images resized ×K and saved as JPEG for the loader rows (2: ~600 px, COCO-like)")
    parser.add_argument("--loader-short-side", type=int, nargs=2, default=None,
                        help="views.train_short_side of the loader rows (default: --short-side)")
    parser.add_argument("--loader-max-size", type=int, default=1333, help="views.max_size with --loader-short-side")
    parser.add_argument("--eval-images", type=int, default=5000)
    parser.add_argument("--eval-dets", type=int, default=100, help="detections per image in the results file")
    parser.add_argument("--eval-repeats", type=int, default=3)
    parser.add_argument("--pl-images", type=int, default=128, help="images pseudo-labelled")
    parser.add_argument("--pl-repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    return parser.parse_args(argv)


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "device": device_name(args.device),
        "setup": {
            "command": "python benchmarks/cost.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "cpu_count": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__,
            "python": platform.python_version(), "backbone": args.backbone, "short_side": args.short_side,
            "max_size": args.max_size, "labeled": args.labeled, "unlabeled": args.unlabeled,
            "warmup": args.warmup, "repeats": args.repeats, "pseudo_boxes": args.pseudo_boxes,
            "memory": PeakMemory(torch.device(args.device)).how,
            "load_average_at_start": os.getloadavg(),
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_steps:
            result["steps"] = run_steps(args, Path(tmp))
        if not args.skip_loaders:
            from benchmarks.cost_loader import run_loaders

            result["loaders"] = run_loaders(args, Path(tmp) / "loaders", result.get("steps"))
        if not args.skip_evaluate:
            from benchmarks.cost_evaluate import run_evaluate

            result["evaluate"] = run_evaluate(args, Path(tmp) / "evaluate")
        if not args.skip_pseudolabel:
            from benchmarks.cost_pseudolabel import run_pseudolabel

            result["pseudolabel"] = run_pseudolabel(args, Path(tmp) / "pseudolabel")
    result["setup"]["load_average_at_end"] = os.getloadavg()
    problems = check_schema(result)
    assert not problems, problems
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    if result.get("steps"):
        print(format_table(result["steps"]))
    if result.get("loaders"):
        print(format_loader_table(result["loaders"]))
    if "evaluate" in result:
        e = result["evaluate"]
        print(f"evaluate: ssodkit {e['ssodkit_s']:.2f} s, pycocotools {e['pycocotools_s']:.2f} s, "
              f"speedup {e['speedup']:.2f}× (target ≥ {e['target']:g}×), twelve numbers identical: {e['identical']}")
    if "pseudolabel" in result:
        p = result["pseudolabel"]
        print(f"pseudolabel: ssodkit {p['ssodkit_images_per_s']:.1f} img/s, bare loop {p['bare_images_per_s']:.1f} img/s, "
              f"ratio {p['ratio']:.2f}× (target ≥ {p['target']:g}×)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
