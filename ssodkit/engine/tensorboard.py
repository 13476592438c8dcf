"""Optional TensorBoard logging (`output.tensorboard: true`), to watch a run while it trains.

metrics.jsonl stays the record of a run; TensorBoard gets a copy of every numeric value in
it (as a sink of `MetricsLog`) plus images such as the sample grid. The `tensorboard`
package is an optional extra, so it is imported only when the option is on.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssodkit.errors import SsodkitError

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

MISSING_PACKAGE = "output.tensorboard: true needs the tensorboard package: pip install 'ssodkit[tensorboard]'"


def scalar_items(record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard tags and values of one metrics record: `<type>/<key>` for each finite number.

    Keys keep their own '/' (`eval/teacher/map`, `probe/probe/precision50`), so a tag's first
    part always names the record type and TensorBoard groups the charts by it. "iter" is the
    step, not a value; bools, strings, None and NaN/inf are left out (none of them plot)."""
    kind = str(record.get("type", "metrics"))
    items: dict[str, float] = {}
    for key, value in record.items():
        if key in ("iter", "type") or isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            continue
        value = float(value)
        if math.isfinite(value):
            items[f"{kind}/{key}"] = value
    return items


class TensorBoardLog:
    """Writes metrics records and images to `<run_dir>/tensorboard/` through a `SummaryWriter`.

    The writer opens on the first write, so a run that fails at start-up leaves no event file,
    and a resumed run can first say where it resumes from (`truncate_after`)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._writer: SummaryWriter | None = None
        self._purge_step: int | None = None

    @property
    def writer(self) -> SummaryWriter:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(self.log_dir), purge_step=self._purge_step)
        return self._writer

    def truncate_after(self, iteration: int) -> None:
        """On resume, hide the steps after the checkpoint that the previous session logged.

        They are logged again; TensorBoard drops the older copies on reading (its purge_step),
        as `MetricsLog.truncate_after` drops them from metrics.jsonl."""
        if self._writer is None:
            self._purge_step = iteration + 1

    def write(self, record: dict[str, Any]) -> None:
        """Log each numeric value of a metrics record at step `record["iter"]`; flushed at once
        so a watching TensorBoard sees it (records come every log_interval, not every step)."""
        step = record.get("iter")
        items = scalar_items(record)
        if not isinstance(step, int) or not items:
            return
        for tag, value in items.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """Log one uint8 HxWx3 image (e.g. the sample grid) at `step`."""
        self.writer.add_image(tag, image, global_step=step, dataformats="HWC")
        self.writer.flush()

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def open_tensorboard(enabled: bool, run_dir: Path) -> TensorBoardLog | None:
    """The run's TensorBoard log, or None when `output.tensorboard` is off.

    The package check happens here, before training starts, so a missing extra is one
    line at start-up rather than a failure at the first log interval."""
    if not enabled:
        return None
    try:
        import tensorboard  # noqa: F401  (only checks that the extra is installed)
    except ImportError:
        raise SsodkitError(MISSING_PACKAGE) from None
    return TensorBoardLog(run_dir / "tensorboard")
