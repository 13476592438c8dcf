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

    from ssodkit.cli.app import build_app, user_error

    runner = CliRunner()
    result = runner.invoke(build_app(), [str(a) for a in args])
    stderr = result.stderr if result.stderr_bytes is not None else ""
    message = None if result.exception is None else user_error(result.exception)
    if message is not None:
        return CliResult(2, result.stdout, stderr + f"error: {message}\n")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, stderr)


@pytest.fixture
def cli():
    return run_cli


# --------------------------------------------------------------------------- tiny runs

TINY_FLAGS = {
    "detector.backbone": "resnet18",
    "detector.fpn_channels": 64,
    "detector.head_convs": 1,
    "views.train_short_side": [96, 128],
    "views.max_size": 160,
    "views.eval_short_side": 112,
    "train.batch_size": 2,
    "train.log_interval": 1,
    "data.num_workers": 0,
    "schedule.iters": 4,
    "schedule.warmup_iters": 1,
    "eval.interval": 1000,
    "eval.batch_size": 4,
    # results.png and the sample grid cost seconds per evaluation (matplotlib, JPEG): only the
    # tests of those files draw them
    "output.plots": False,
    "output.samples": 0,
}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small synthetic COCO set (12 train, 6 val, 8 unlabeled images), made once."""
    from ssodkit.data.synthetic import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth") / "data", seed=3, n_train=12, n_val=6, n_unlabeled=8)


@pytest.fixture
def tiny_config(tiny_data, tmp_path):
    """Build a RunConfig for a few CPU steps on `tiny_data`; keyword args are dotted overrides."""
    from ssodkit.config import build_config

    def make(**overrides):
        flags = {
            **TINY_FLAGS,
            "data.train_ann": str(tiny_data.train),
            "data.train_images": str(tiny_data.images),
            "data.val_ann": str(tiny_data.val),
            "data.val_images": str(tiny_data.images),
            "data.unlabeled": str(tiny_data.unlabeled),
            "data.unlabeled_images": str(tiny_data.images),
            "output.runs_dir": str(tmp_path / "runs"),
        }
        flags.update({k.replace("__", "."): v for k, v in overrides.items()})
        return build_config(None, flags)

    return make
