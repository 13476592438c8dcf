"""`metrics.jsonl`: one JSON object per line, appended and flushed as training goes."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from ssodkit.errors import DataError


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; null keeps the file parseable everywhere
    return value


class MetricsSink(Protocol):
    """Another place each record goes (e.g. TensorBoard); metrics.jsonl stays the record of the run."""

    def write(self, record: dict[str, Any]) -> None: ...


class MetricsLog:
    """Appends records to metrics.jsonl and forwards each to `sinks` (rank 0 only: `enabled`).

    A sink with a `truncate_after(iteration)` method is told where a resumed run starts again."""

    def __init__(self, path: Path, enabled: bool = True, sinks: Sequence[MetricsSink] = ()) -> None:
        self.path = path
        self.enabled = enabled
        self.sinks = list(sinks)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        for sink in self.sinks:  # after the line: the file holds whatever a sink shows
            sink.write(record)

    def truncate_after(self, iteration: int) -> None:
        """On resume, drop records written after the checkpoint (they will be written again)."""
        if not self.enabled:
            return
        for sink in self.sinks:
            truncate = getattr(sink, "truncate_after", None)
            if truncate is not None:
                truncate(iteration)
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("iter", 0) <= iteration:
                    kept.append(line)
            except json.JSONDecodeError:
                continue
        self.path.write_text("".join(line + "\n" for line in kept))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """`metrics.jsonl`'s records. A last line cut short (a run killed mid-write, or one still
    appending while a report reads it) is skipped; a malformed line elsewhere is an error
    naming it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue
            raise DataError(f"{path}: line {number} is not a JSON record") from None
        if isinstance(record, dict):
            records.append(record)
    return records
