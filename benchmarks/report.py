"""Print the Markdown table of `benchmarks/results/synthetic.json` (for docs/benchmarks.md).

    python benchmarks/report.py [--results benchmarks/results/synthetic.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "synthetic.json"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def iterations(r: dict) -> str:
    """`1000+500` for a run continued from another's checkpoint (`--init-from`)."""
    init = r.get("init_from")
    return f"{init['iterations']}+{r['iters']}" if init else str(r["iters"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    print("| method / detector | mAP | AP50 | APs | APm | APl | student mAP | s / iter | iters | device |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for key, r in sorted(results.items(), key=lambda kv: (kv[0].split("/")[1], kv[0])):
        print(
            f"| {key} | {pct(r['map'])} | {pct(r['map50'])} | {pct(r.get('map_small'))} | "
            f"{pct(r.get('map_medium'))} | {pct(r.get('map_large'))} | {pct(r.get('student_map'))} | "
            f"{r['sec_per_iter']:.2f} | {iterations(r)} | {r.get('device', '')} |"
        )


if __name__ == "__main__":
    main()
