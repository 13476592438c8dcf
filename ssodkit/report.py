"""`ssodkit report`: one run's results.csv / results.png, several runs side by side.

A run is read from what its folder holds while training or after: `metrics.jsonl` (required;
a half-written last line is skipped, since training may be appending to it), `config.yaml`
and `summary.json` (optional: an older or running run has no summary). Comparing runs asks
one question before any number: were they trained on the same labeled split? A different
split moves mAP by more than most method changes, so differing `repro.split_hash` values
are reported first.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ssodkit.engine.metrics import read_metrics
from ssodkit.engine.results import results_rows, write_results_csv
from ssodkit.errors import SsodkitError
from ssodkit.io import write_text_atomic

RESULTS_PNG = "results.png"
OVERLAY_PNG = "overlay.png"
REPORT_HTML = "report.html"
ROLES = ("teacher", "student")
MISSING = object()  # a config key one run lacks (a different method's parameters, an older version)


@dataclass
class Best:
    """A model's best evaluation: mAP as a fraction in [0, 1] and its iteration."""

    map: float
    iter: int


@dataclass
class RunReport:
    name: str
    path: Path
    rows: list[dict[str, Any]]
    config: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    last_iter: int | None = None
    wall_s: float | None = None
    best: dict[str, Best] = field(default_factory=dict)

    @property
    def split_hash(self) -> str | None:
        repro = (self.summary or {}).get("repro")
        value = repro.get("split_hash") if isinstance(repro, Mapping) else None
        return str(value) if value else None

    @property
    def title(self) -> str:
        """The run's name with its method and detector, when its config says them."""
        cfg = self.config or {}
        method, detector = (cfg.get(k) for k in ("method", "detector"))
        parts = [
            part.get("name") for part in (method, detector) if isinstance(part, Mapping) and part.get("name")
        ]
        return f"{self.name} ({', '.join(map(str, parts))})" if parts else self.name


# --------------------------------------------------------------------------- reading a run
def check_run_dir(path: Path) -> None:
    """Refuse anything but a run folder, in one line, before anything is written."""
    if not path.exists():
        raise SsodkitError(f"{path}: no such run folder")
    if not path.is_dir():
        raise SsodkitError(f"{path}: not a folder")
    if not (path / "metrics.jsonl").is_file():
        raise SsodkitError(f"{path}: not a run folder (no metrics.jsonl)")


def _read_optional(path: Path, parse: Any) -> dict[str, Any] | None:
    """A mapping from an optional file; None when absent or unreadable (a report must not fail
    on a summary a crashed run left half-written)."""
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def best_by_role(rows: Sequence[Mapping[str, Any]]) -> dict[str, Best]:
    """Each model's highest mAP and the first iteration that reached it."""
    best: dict[str, Best] = {}
    for row in rows:
        for role in ROLES:
            value = row.get(f"{role}_map")
            if value is not None and (role not in best or value > best[role].map):
                best[role] = Best(float(value), int(row["iter"]))
    return best


def load_run(path: Path, name: str | None = None) -> RunReport:
    """Read a run folder and rewrite its `results.csv` from `metrics.jsonl`."""
    check_run_dir(path)
    records = read_metrics(path / "metrics.jsonl")
    iters = [r["iter"] for r in records if isinstance(r.get("iter"), int)]
    walls = [r["wall_s"] for r in records if r.get("type") == "train" and r.get("wall_s") is not None]
    summary = _read_optional(path / "summary.json", json.loads)
    wall = summary.get("wall_s") if summary else None
    rows = results_rows(records)
    write_results_csv(path, rows)
    return RunReport(
        name=name or path.name,
        path=path,
        rows=rows,
        config=_read_optional(path / "config.yaml", yaml.safe_load),
        summary=summary,
        last_iter=max(iters) if iters else None,
        wall_s=float(wall) if isinstance(wall, (int, float)) else (float(walls[-1]) if walls else None),
        best=best_by_role(rows),
    )


def run_names(paths: Sequence[Path]) -> list[str]:
    """Folder names, or the paths as given where two runs share a folder name."""
    names = [p.name or str(p) for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths, strict=True)]


# --------------------------------------------------------------------------- comparing runs
def split_warnings(runs: Sequence[RunReport]) -> list[str]:
    """One line per run whose labeled split differs from the first hashed run's; runs without
    a `summary.json` hash are not judged."""
    hashed = [r for r in runs if r.split_hash is not None]
    if not hashed:
        return []
    first = hashed[0]
    return [
        f"runs {first.name} and {r.name} were trained on different labeled splits "
        f"(split hash {first.split_hash} vs {r.split_hash}): their mAPs are not comparable"
        for r in hashed[1:]
        if r.split_hash != first.split_hash
    ]


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (`optim.lr`); lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def config_differences(runs: Sequence[RunReport]) -> list[tuple[str, list[Any]]]:
    """The dotted config keys whose values differ between runs, in first-seen order, with each
    run's value (`MISSING` where a run's config lacks the key or the run has no config)."""
    flats = [flatten(r.config or {}) for r in runs]
    keys: dict[str, None] = {}
    for flat in flats:
        keys.update(dict.fromkeys(flat))
    differences = []
    for key in keys:
        values = [flat.get(key, MISSING) for flat in flats]
        if any(v is MISSING for v in values) or any(v != values[0] for v in values[1:]):
            differences.append((key, values))
    return differences


# --------------------------------------------------------------------------- formatting
def format_best(best: Best | None) -> str:
    return "-" if best is None else f"{100.0 * best.map:.1f} @ {best.iter}"


def format_wall(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def summary_cells(run: RunReport) -> list[str]:
    """The per-run table's cells: run, best teacher, best student, last iteration, wall time."""
    last = "-" if run.last_iter is None else str(run.last_iter)
    return [run.name, format_best(run.best.get("teacher")), format_best(run.best.get("student")),
            last, format_wall(run.wall_s)]


SUMMARY_HEADERS = ("run", "best teacher mAP @ iter", "best student mAP @ iter", "last iter", "wall time")


def _config_value(value: Any) -> str:
    if value is MISSING:
        return "–"
    return value if isinstance(value, str) else json.dumps(value)


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(
    runs: Sequence[RunReport], overlay: Path, warnings: Sequence[str]
) -> str:
    """A self-contained page (PNGs as data URIs): it can be mailed or attached to an issue."""
    parts = ["<h1>ssodkit report</h1>"]
    parts += [f'<p class="warning">warning: {html.escape(w)}</p>' for w in warnings]
    parts += ["<h2>Runs (mAP × 100)</h2>", _table(SUMMARY_HEADERS, [summary_cells(r) for r in runs])]
    parts += ["<h2>mAP by run</h2>", f'<img alt="mAP by run" src="{_png_uri(overlay)}">']
    parts.append("<h2>Config differences</h2>")
    differences = config_differences(runs)
    if differences:
        rows = [[key, *(_config_value(v) for v in values)] for key, values in differences]
        parts.append(_table(["key", *(r.name for r in runs)], rows))
    else:
        parts.append("<p>The runs' configs are identical.</p>")
    for run in runs:
        parts.append(f"<h2>{html.escape(run.title)}</h2>")
        png = run.path / RESULTS_PNG
        if run.rows and png.is_file():
            parts.append(f'<img alt="results of {html.escape(run.name)}" src="{_png_uri(png)}">')
        else:
            parts.append("<p>No evaluation in metrics.jsonl yet.</p>")
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}img{max-width:100%}"
        ".warning{color:#b00;font-weight:bold}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>ssodkit report</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


# --------------------------------------------------------------------------- writing
def write_run_figure(run: RunReport) -> Path | None:
    """`RUN/results.png`; None (and nothing written) before the first evaluation."""
    if not run.rows:
        return None
    from ssodkit.plots import plot_results

    return plot_results(run.rows, run.path / RESULTS_PNG, title=run.title)


def write_comparison(
    runs: Sequence[RunReport], out_dir: Path, warnings: Sequence[str]
) -> tuple[Path, Path]:
    """`out_dir/overlay.png` and `out_dir/report.html` (the runs' figures written first)."""
    from ssodkit.plots import plot_runs_overlay

    os.makedirs(out_dir, exist_ok=True)
    overlay = plot_runs_overlay({r.name: r.rows for r in runs}, out_dir / OVERLAY_PNG)
    page = write_text_atomic(out_dir / REPORT_HTML, render_html(runs, overlay, warnings))
    return overlay, page
