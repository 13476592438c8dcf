"""One training process per run folder.

Two trainers on one folder — a `--resume` started twice, a benchmark script restarted while
its first copy still runs — both append to `metrics.jsonl` and overwrite each other's
checkpoints: the log interleaves two runs and nothing says so. The trainer holds an
exclusive `flock` on `<run>/.lock` for its lifetime (rank 0 only: the other ranks of a
torchrun job share the folder by design); the operating system releases it when the process
ends, however it ends, so a crash leaves no stale lock behind. Where `fcntl` does not exist
(Windows) no lock is taken.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from ssodkit.errors import SsodkitError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class RunLock:
    """The exclusive lock on a run folder; `release` (or process exit) frees it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise one line naming the process that holds it."""
        if fcntl is None or not self.path.parent.is_dir():
            return self
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise SsodkitError(
                f"run folder {self.path.parent} is in use by another training process (pid {holder}): "
                "wait for it to finish, or train under another --name"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None
