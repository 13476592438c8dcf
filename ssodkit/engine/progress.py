"""Training progress: a live rich bar on a terminal, periodic plain lines otherwise (CI, logs)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def format_losses(losses: dict[str, float]) -> str:
    """Every term, as metrics.jsonl names it: a method's unsupervised terms (SED on Faster
    R-CNN logs eight) are what a user reads to see why pseudo-labels help or hurt, so none
    may be cut off. The total comes first. An adaptive threshold's τ per class (`thr/…`, one
    per class) stays in metrics.jsonl only."""
    items = sorted(((k, v) for k, v in losses.items() if not k.startswith("thr/")), key=lambda kv: kv[0] != "loss")
    return " ".join(f"{k}={v:.3f}" for k, v in items)


def summarize_losses(losses: dict[str, float]) -> str:
    """One short field for the live bar: the total and its supervised and unsupervised parts."""
    parts = {"loss": losses.get("loss")}
    for group in ("sup", "unsup"):
        terms = [v for k, v in losses.items() if k.startswith(f"{group}_")]
        parts[group] = sum(terms) if terms else None
    return " ".join(f"{k}={v:.3f}" for k, v in parts.items() if v is not None)


class TrainProgress:
    def __init__(self, total: int, start: int, enabled: bool, log_interval: int, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.total = total
        self.log_interval = log_interval
        self.live = enabled and self.console.is_terminal
        self._start_time = time.monotonic()
        self._start_iter = start
        self._progress: Progress | None = None
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                TimeRemainingColumn(), console=self.console, transient=False,
            )
            self._task = self._progress.add_task("train", total=total, completed=start, info="")

    def __enter__(self) -> TrainProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, iteration: int, losses: dict[str, float], lr: float) -> None:
        """`iteration` is the number of completed iterations; `losses`, the means since the last log line."""
        if not self.enabled:
            return
        if self._progress is not None:
            info = f"{summarize_losses(losses)} lr={lr:.2e}"
            self._progress.update(self._task, completed=iteration, info=info)
        if iteration % self.log_interval == 0 or iteration == self.total:
            # on a terminal the line goes above the live bar, which has room for the sums only
            self.console.print(self.log_line(iteration, losses, lr), highlight=False)

    def log_line(self, iteration: int, losses: dict[str, float], lr: float) -> str:
        elapsed = time.monotonic() - self._start_time
        done = max(1, iteration - self._start_iter)
        eta = elapsed / done * (self.total - iteration)
        return (
            f"[{iteration}/{self.total}] {format_losses(losses)} lr={lr:.2e} "
            f"({elapsed / done:.2f}s/it, eta {eta / 60:.1f} min)"
        )

    def print(self, *args: object) -> None:
        if self.enabled:
            self.console.print(*args)
