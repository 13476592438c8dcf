"""What splitting a batch into several student calls costs: the same labeled images through
the detector's loss and backward in one call, in two (1 + 4) and in three (1 + 2 + 2),
interleaved, at benchmarks/cost.py's size. A teacher–student step calls the student once
per view; the floor's supervised step calls it once.

    PYTHONPATH=. python benchmarks/cost_split.py [--detector fcos] [--repeats 7]

Writes `benchmarks/results/cost_split.json` (median seconds per forward + backward).
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch

from benchmarks import cost

OUT = ROOT / "benchmarks" / "results" / "cost_split.json"
SPLITS = {"1 call (5)": [5], "2 calls (1 + 4)": [1, 4], "3 calls (1 + 2 + 2)": [1, 2, 2]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", default="fcos")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=OUT)
    own = parser.parse_args()
    args = cost.parse_args([])
    torch.set_num_threads(args.threads)
    from benchmarks.trace import make_data
    from ssodkit.engine.data_setup import samples_to_batch

    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp))
        stepper = cost.Stepper.build(cost.cost_flags("supervised", own.detector, data, Path(tmp) / "runs", args), 4)
        model = stepper.trainer.model.train()

        def run(splits: list[int]) -> float:
            labeled, _ = stepper.next_batch()
            batch = samples_to_batch(labeled, torch.device("cpu"))
            start = time.perf_counter()
            total, i = torch.zeros(()), 0
            for n in splits:
                losses = model("loss", batch.images[i : i + n], batch.targets[i : i + n])
                total, i = total + sum(losses.values()), i + n
            total.backward()
            model.zero_grad(set_to_none=True)
            return time.perf_counter() - start

        for _ in range(2):
            for splits in SPLITS.values():
                run(splits)
        times: dict[str, list[float]] = {k: [] for k in SPLITS}
        for order in cost.rotations(list(SPLITS), own.repeats):
            for key in order:
                times[key].append(run(SPLITS[key]))
        stepper.trainer.close()
    medians = {k: statistics.median(v) for k, v in times.items()}
    base = medians["1 call (5)"]
    result = {
        "detector": own.detector, "repeats": own.repeats,
        "sec": medians, "ratio_to_one_call": {k: v / base for k, v in medians.items()},
    }
    for k, v in medians.items():
        print(f"{own.detector} {k}: {v:.3f} s ({v / base:.2f}×)")
    own.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {own.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
