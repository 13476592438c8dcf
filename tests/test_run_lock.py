"""One training process per run folder: a second trainer on a folder in use is refused in one
line, and the lock goes when the first one ends."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ssodkit.engine.run_lock import RunLock
from ssodkit.errors import SsodkitError
from tests.test_cli import data_args, tiny_set_args

pytest.importorskip("fcntl")


def test_a_second_lock_on_a_folder_is_refused_naming_the_holder_until_the_first_is_released(tmp_path):
    first = RunLock(tmp_path).acquire()
    assert first.held and (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    with pytest.raises(SsodkitError, match=rf"^run folder {tmp_path} is in use by another training process \(pid {os.getpid()}\)"):
        RunLock(tmp_path).acquire()
    first.release()
    again = RunLock(tmp_path).acquire()
    assert again.held
    again.release()


def test_the_lock_dies_with_its_process(tmp_path):
    """A killed trainer leaves no stale lock: the operating system drops a flock with its holder."""
    code = f"from pathlib import Path; from ssodkit.engine.run_lock import RunLock; RunLock(Path({str(tmp_path)!r})).acquire(); import os; os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True)
    RunLock(tmp_path).acquire().release()


def test_resuming_a_run_that_another_process_trains_is_one_line(cli, tiny_data, tmp_path):
    args = ["train", *data_args(tiny_data), "--runs-dir", str(tmp_path), "--name", "busy", *tiny_set_args(**{"schedule.iters": 1})]
    assert cli(*args).exit_code == 0
    run = tmp_path / "busy"
    config = run / "config.yaml"  # one more iteration to train, as after an interrupt
    config.write_text(config.read_text().replace("iters: 1\n", "iters: 2\n", 1))
    holder = RunLock(run).acquire()  # stands in for a trainer still running on the folder
    try:
        result = cli("train", "--resume", str(run))
    finally:
        holder.release()
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [f"error: run folder {run} is in use by another training process (pid {os.getpid()}): "
                      "wait for it to finish, or train under another --name"]
    assert (run / "checkpoints" / "last.pt").exists()
