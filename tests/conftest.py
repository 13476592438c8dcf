"""Shared test helpers: run the CLI in-process exactly as `main()` would, tiny data sets."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

# Tests load no external plugins unless a test installs one on purpose.
os.environ.setdefault("SSODKIT_LOAD_PLUGINS", "")
os.environ.setdefault("OMP_NUM_THREADS", "2")


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str) -> CliResult:
    """Invoke `ssodkit ARGS` in-process; user errors become exit 2 + 'error: …' on stderr."""
    from typer.testing import CliRunner

    from ssodkit.cli.app import build_app
    from ssodkit.errors import SsodkitError

    runner = CliRunner()
    result = runner.invoke(build_app(), [str(a) for a in args])
    stderr = result.stderr if result.stderr_bytes is not None else ""
    if isinstance(result.exception, SsodkitError):
        return CliResult(2, result.stdout, stderr + f"error: {result.exception}\n")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, stderr)


@pytest.fixture
def cli():
    return run_cli
