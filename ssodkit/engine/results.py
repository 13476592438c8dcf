"""`results.csv`: one row per evaluation, derived from `metrics.jsonl` (never typed in).

`metrics.jsonl` is the run's record (one line per log window, per evaluation, per probe);
`results.csv` is the view a user opens in a spreadsheet or plots: at each evaluation the
teacher's and the student's mAP beside what the student was taught since the previous one
(mean loss terms, pseudo boxes per image, empty-image fraction) and how good those
pseudo-labels were (precision / recall against hidden or probe ground truth). Because it is
recomputed from `metrics.jsonl`, its numbers equal the log's and a resumed run's file is
rewritten whole.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ssodkit.io import write_text_atomic

RESULTS_CSV = "results.csv"

# Always present, in this order; loss terms (`sup_*`, `unsup_*`) follow in first-seen order,
# then `collapse` (the collapse watcher's line at that evaluation, empty when healthy).
FIXED_COLUMNS: tuple[str, ...] = (
    "iter", "wall_s", "lr",
    "teacher_map", "teacher_ap50", "student_map", "student_ap50", "best_role",
    "loss", "sup_loss", "unsup_loss",
    "pseudo_per_image", "pseudo_empty_frac",
    "pseudo_precision50", "pseudo_recall50", "probe_precision50", "probe_recall50",
)
LAST_COLUMN = "collapse"
LOSS_PREFIXES = ("sup_", "unsup_")  # methods name their loss terms so (`methods.base.prefixed`)
# eval-record key → column
EVAL_KEYS = {
    "teacher/map": "teacher_map", "teacher/map50": "teacher_ap50",
    "student/map": "student_map", "student/map50": "student_ap50",
    "best_role": "best_role",
    "pseudo/precision50": "pseudo_precision50", "pseudo/recall50": "pseudo_recall50",
    "probe/precision50": "probe_precision50", "probe/recall50": "probe_recall50",
}
# train-record statistics averaged over the window since the previous row
WINDOW_STATS = ("loss", "pseudo_per_image", "pseudo_empty_frac")


def pseudo_boxes_per_image(record: Mapping[str, Any]) -> float | None:
    """A train record's pseudo boxes per unlabeled image: `pseudo_per_image`, or for a method
    that logs it per kind of student input (MixPL's `mosaic_…`/`mixup_pseudo_per_image`, Soft
    Teacher's `pseudo_cls_…`/`pseudo_rpn_per_image`) the mean of those."""
    value = record.get("pseudo_per_image")
    if isinstance(value, (int, float)):
        return float(value)
    parts = [
        float(v) for k, v in record.items()
        if "pseudo" in k and k.endswith("_per_image") and isinstance(v, (int, float)) and math.isfinite(v)
    ]
    return sum(parts) / len(parts) if parts else None


def is_loss_term(key: str) -> bool:
    return key.startswith(LOSS_PREFIXES)


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def results_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per `eval` record: its metrics, the last train record's lr and wall time, the
    mean of each train-record term logged since the previous evaluation (a term absent from
    every window — e.g. `unsup_*` during burn-in — stays empty), `sup_loss` / `unsup_loss` the
    sums of the `sup_*` / `unsup_*` term means, and the collapse line at that iteration."""
    rows: list[dict[str, Any]] = []
    window: dict[str, list[float]] = {}
    lr: float | None = None
    wall: float | None = None
    collapse: list[str] = []
    for rec in records:
        kind = rec.get("type")
        if kind == "train":
            lr, wall = rec.get("lr", lr), rec.get("wall_s", wall)
            for key, value in rec.items():
                if (key in WINDOW_STATS or is_loss_term(key)) and isinstance(value, (int, float)):
                    window.setdefault(key, []).append(float(value))
            if "pseudo_per_image" not in rec and (boxes := pseudo_boxes_per_image(rec)) is not None:
                window.setdefault("pseudo_per_image", []).append(boxes)
        elif kind == "collapse":
            message = str(rec.get("message", ""))
            if rows and rows[-1]["iter"] == rec.get("iter"):  # raised by that evaluation itself
                rows[-1][LAST_COLUMN] = "; ".join(filter(None, [rows[-1][LAST_COLUMN], message]))
            else:
                collapse.append(message)
        elif kind == "eval":
            row: dict[str, Any] = {"iter": rec["iter"], "wall_s": rec.get("wall_s", wall), "lr": lr}
            row.update({col: rec.get(key) for key, col in EVAL_KEYS.items()})
            means = {key: _mean(values) for key, values in window.items()}
            row.update({key: means.get(key) for key in WINDOW_STATS})
            terms = {k: v for k, v in means.items() if is_loss_term(k)}
            for prefix in LOSS_PREFIXES:
                part = [v for k, v in terms.items() if k.startswith(prefix) and v is not None]
                row[f"{prefix}loss"] = sum(part) if part else None
            row.update(terms)
            row[LAST_COLUMN] = "; ".join(collapse)
            rows.append(row)
            window, collapse = {}, []
    return rows


def columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The fixed columns, then every loss term in first-seen order, then `collapse`."""
    extra: list[str] = []
    for row in rows:
        extra += [k for k in row if k not in FIXED_COLUMNS and k != LAST_COLUMN and k not in extra]
    return [*FIXED_COLUMNS, *extra, LAST_COLUMN]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_results_csv(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """(Re)write `run_dir/results.csv` from `results_rows(records)` (computed once by the
    caller, which also plots them)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return write_text_atomic(run_dir / RESULTS_CSV, buffer.getvalue())


def read_results_csv(path: Path) -> list[dict[str, Any]]:
    """`results.csv` back as rows of numbers (empty cells → None; `best_role`, `collapse` stay text)."""
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for key, text in raw.items():
                if text == "" or text is None:
                    row[key] = None
                elif key in ("best_role", LAST_COLUMN):
                    row[key] = text
                else:
                    row[key] = int(text) if key == "iter" else float(text)
            rows.append(row)
    return rows
