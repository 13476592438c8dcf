"""Training progress: a live rich bar on a terminal, periodic plain lines otherwise (CI, logs)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def format_losses(losses: dict[str, float], limit: int = 6) -> str:
    items = list(losses.items())[:limit]
    return " ".join(f"{k}={v:.3f}" for k, v in items)


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
        """`iteration` is the number of completed iterations."""
        if not self.enabled:
            return
        info = f"{format_losses(losses)} lr={lr:.2e}"
        if self._progress is not None:
            self._progress.update(self._task, completed=iteration, info=info)
        elif iteration % self.log_interval == 0 or iteration == self.total:
            elapsed = time.monotonic() - self._start_time
            done = iteration - self._start_iter
            eta = elapsed / max(1, done) * (self.total - iteration)
            self.console.print(
                f"[{iteration}/{self.total}] {info} ({elapsed / max(1, done):.2f}s/it, eta {eta / 60:.1f} min)",
                highlight=False,
            )

    def print(self, *args: object) -> None:
        if self.enabled:
            self.console.print(*args)
