"""Where a step's time goes: `torch.profiler` over a few steps of the method, of the
supervised step on the same number of images and of the floor (benchmarks/cost.py's set-up).

    PYTHONPATH=. python benchmarks/cost_profile.py [--only sed/fcos mixpl/fcos] [--steps 3]

The step is split by `record_function` labels put around the trainer's parts (no code of
the package changes): `teacher` (every call into the teacher model: predict, dense
outputs, RoI outputs), `forward` (the method's step module, the teacher's share taken out),
`optimizer` and `ema`; `backward and the rest` is the step's total minus these. Each part
is reported in seconds per step; the top operators by self CPU time are listed too.
Writes `benchmarks/results/cost_profile.json`.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks import cost

OUT = ROOT / "benchmarks" / "results" / "cost_profile.json"
PARTS = ("step", "floor", "forward", "teacher", "optimizer", "ema")


@contextmanager
def labelled() -> Any:
    """`record_function` labels around the trainer's parts, for the duration of the block."""
    from ssodkit.engine.ema import EMA
    from ssodkit.engine.trainer import MethodStep, Trainer

    def wrap(owner: Any, name: str, label: Callable[[Any], str | None]) -> Callable[[], None]:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            tag = label(self)
            if tag is None:
                return original(self, *args, **kwargs)
            with record_function(tag):
                return original(self, *args, **kwargs)

        setattr(owner, name, wrapped)
        return lambda: setattr(owner, name, original)

    teachers: dict[int, Any] = {}  # id → hook handles: every forward of a teacher is labelled

    def watch(module: torch.nn.Module) -> None:
        frames: list[Any] = []

        def enter(*_: Any) -> None:
            frames.append(record_function("teacher"))
            frames[-1].__enter__()

        def leave(*_: Any) -> None:
            frames.pop().__exit__(None, None, None)

        teachers[id(module)] = (module.register_forward_pre_hook(enter), module.register_forward_hook(leave))

    def clear() -> None:
        for handles in teachers.values():
            for h in handles:
                h.remove()
        teachers.clear()

    undo = [
        wrap(Trainer, "train_step", lambda _: "step"),
        wrap(MethodStep, "forward", lambda _: "forward"),
        wrap(EMA, "update", lambda _: "ema"),
    ]
    try:
        yield watch, clear  # the optimiser's step is labelled by torch itself (Optimizer.step#SGD.step)
    finally:
        clear()
        for u in undo:
            u()


def _teacher_modules(stepper: cost.Stepper, floor: cost.Floor | None) -> list[torch.nn.Module]:
    found = []
    if stepper.trainer.teacher is not None:
        found.append(stepper.trainer.teacher)
    if floor is not None:
        found.append(floor.teacher)
    return found


def breakdown(prof: Any, steps: int) -> dict[str, Any]:
    """Seconds per step of each part. The floor is labelled `floor` as a whole, its teacher
    call outside the step module; a method calls its teacher inside it."""
    totals: dict[str, float] = {}
    for evt in prof.key_averages():
        if evt.key in PARTS or evt.key.startswith("Optimizer.step#"):
            key = "optimizer" if evt.key.startswith("Optimizer.step#") else evt.key
            totals[key] = totals.get(key, 0.0) + evt.cpu_time_total / 1e6 / steps
    is_floor = "floor" in totals
    step = totals.get("floor" if is_floor else "step", 0.0)
    parts = {k: totals.get(k, 0.0) for k in ("teacher", "optimizer", "ema")}
    parts["forward"] = totals.get("forward", 0.0) - (0.0 if is_floor else parts["teacher"])
    parts["backward and the rest"] = step - sum(parts.values())
    parts["step"] = step
    ops = sorted(
        (e for e in prof.key_averages() if e.key not in PARTS and not e.key.startswith(("Optimizer.step#", "autograd::", "aten::to"))),
        key=lambda e: e.self_cpu_time_total, reverse=True,
    )[:8]
    parts["top_ops"] = {e.key: e.self_cpu_time_total / 1e6 / steps for e in ops}
    return parts


def profile_steps(fn: Callable[[], Any], steps: int) -> dict[str, Any]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    return breakdown(prof, steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps of each (after 2 untimed)")
    parser.add_argument("--out", type=Path, default=OUT)
    own = parser.parse_args()
    args = cost.parse_args([])
    torch.set_num_threads(args.threads)
    from benchmarks.trace import PAIRS, make_data

    pairs = [(m, d) for m, d in PAIRS if m != "supervised" and (not own.only or f"{m}/{d}" in own.only)]
    result: dict[str, Any] = {"setup": {"steps": own.steps, "threads": args.threads, "labeled": args.labeled,
                                        "unlabeled": args.unlabeled, "short_side": args.short_side}}
    with tempfile.TemporaryDirectory() as tmp, labelled() as (watch, clear):
        data = make_data(Path(tmp))
        runs = Path(tmp) / "runs"
        sups: dict[str, cost.Stepper] = {}
        for method, detector in pairs:
            if detector not in sups:
                sups[detector] = cost.Stepper.build(cost.cost_flags("supervised", detector, data, runs, args), args.batches)
            sup = sups[detector]
            stepper = cost.Stepper.build(cost.cost_flags(method, detector, data, runs, args), args.batches)
            weak = [unl["weak"] for _, unl in stepper.batches if unl is not None]
            floor = cost.Floor(sup, weak)
            clear()
            for module in _teacher_modules(stepper, floor):
                watch(module)
            entry = {}
            for kind, fn in (("method", stepper.step), ("supervised", sup.step), ("floor", floor.step)):
                for _ in range(2):
                    fn()
                if kind == "floor":  # the floor's teacher call is outside the trainer: label it here
                    entry[kind] = profile_steps(functools.partial(_labelled_floor, floor), own.steps)
                else:
                    entry[kind] = profile_steps(fn, own.steps)
            stepper.trainer.close()
            result[f"{method}/{detector}"] = entry
            print(format_entry(f"{method}/{detector}", entry), flush=True)
        for s in sups.values():
            s.trainer.close()
    own.out.parent.mkdir(parents=True, exist_ok=True)
    own.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {own.out}")
    return 0


def _labelled_floor(floor: cost.Floor) -> None:
    with record_function("floor"):
        floor.step()


def format_entry(pair: str, entry: dict[str, Any]) -> str:
    lines = [pair]
    for kind, parts in entry.items():
        shown = ", ".join(
            f"{k} {v:.3f}" for k, v in parts.items() if k != "top_ops" and k != "step"
        )
        top = ", ".join(f"{k} {v:.3f}" for k, v in list(parts["top_ops"].items())[:4])
        lines.append(f"  {kind:<10} step {parts['step']:.3f} s: {shown}\n             top ops: {top}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
