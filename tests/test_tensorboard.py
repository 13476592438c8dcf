"""output.tensorboard: every numeric value of metrics.jsonl reaches TensorBoard, readable back."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from ssodkit.engine.metrics import MetricsLog, read_metrics
from ssodkit.engine.tensorboard import TensorBoardLog, open_tensorboard, scalar_items
from ssodkit.errors import SsodkitError
from tests.test_cli import data_args, tiny_set_args

pytest.importorskip("tensorboard")


def _events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return acc


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = _events(log_dir)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _expected(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard should hold for metrics.jsonl's records (nulls there are NaN/inf: not logged)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key != "iter" and number and math.isfinite(value):
                out.setdefault(f"{record['type']}/{key}", []).append((record["iter"], float(value)))
    return out


def _assert_same(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for tag, points in expected.items():
        assert [s for s, _ in actual[tag]] == [s for s, _ in points], tag
        assert [v for _, v in actual[tag]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-12), tag  # float32


def test_scalar_items_tags_by_type_and_skips_what_does_not_plot():
    record = {
        "type": "eval", "iter": 7, "teacher/map": 0.25, "student/map": None, "best_role": "teacher",
        "skipped": True, "count": 3, "nan": math.nan, "inf": math.inf, "np": np.float32(0.5), "n": np.int64(2),
    }
    assert scalar_items(record) == {"eval/teacher/map": 0.25, "eval/count": 3.0, "eval/np": 0.5, "eval/n": 2.0}


def test_write_then_read_back_scalars_and_an_image(tmp_path):
    records = [
        {"type": "train", "iter": 1, "sup_loss_cls": 1.5, "lr": 0.01, "skipped_steps": 0},
        {"type": "train", "iter": 2, "sup_loss_cls": 1.25, "lr": 0.02, "skipped_steps": 1, "note": "x"},
        {"type": "eval", "iter": 2, "teacher/map": 0.125, "student/map": 0.0625, "best_role": "teacher"},
        {"type": "probe", "iter": 2, "probe/precision50": 0.5, "bad": math.nan},
    ]
    log = TensorBoardLog(tmp_path / "tensorboard")
    for record in records:
        log.write(record)
    grid = np.random.default_rng(0).integers(0, 256, size=(12, 20, 3), dtype=np.uint8)
    log.image("samples", grid, step=2)
    log.close()

    _assert_same(_scalars(tmp_path / "tensorboard"), _expected(records))
    assert "probe/bad" not in _scalars(tmp_path / "tensorboard")
    acc = _events(tmp_path / "tensorboard")
    assert acc.Tags()["images"] == ["samples"]
    (event,) = acc.Images("samples")
    from PIL import Image

    assert event.step == 2 and (event.width, event.height) == (20, 12)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(event.encoded_image_string))), grid)


def test_metrics_log_forwards_to_sinks_and_tells_them_where_a_resume_starts(tmp_path):
    """A resumed run logs the steps after its checkpoint again: TensorBoard shows the new ones only."""
    log_dir = tmp_path / "tensorboard"
    first = MetricsLog(tmp_path / "metrics.jsonl", sinks=[TensorBoardLog(log_dir)])
    for i in range(1, 5):
        first.write({"type": "train", "iter": i, "loss": float(i)})
    first.sinks[0].close()

    board = TensorBoardLog(log_dir)
    resumed = MetricsLog(tmp_path / "metrics.jsonl", sinks=[board])
    resumed.truncate_after(2)
    for i in (3, 4):
        resumed.write({"type": "train", "iter": i, "loss": 10.0 * i})
    board.close()

    assert _scalars(log_dir) == {"train/loss": [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]}
    _assert_same(_scalars(log_dir), _expected(read_metrics(tmp_path / "metrics.jsonl")))

    off = tmp_path / "off"
    MetricsLog(off / "metrics.jsonl", enabled=False, sinks=[TensorBoardLog(off / "tensorboard")]).write(
        {"type": "train", "iter": 1, "loss": 1.0}
    )
    assert not off.exists()  # ranks other than 0 write nothing, to either place


def test_open_tensorboard_is_none_when_off(tmp_path):
    assert open_tensorboard(False, tmp_path) is None
    assert not (tmp_path / "tensorboard").exists()


def test_a_training_run_logs_every_metrics_value_to_tensorboard(tiny_data, tmp_path, cli):
    result = cli(
        "train", "--method", "mean_teacher", "--detector", "fcos", *data_args(tiny_data),
        "--unlabeled", str(tiny_data.unlabeled), "--iters", "2", "--runs-dir", str(tmp_path), "--name", "tb",
        *tiny_set_args(**{
            "eval.interval": 2, "output.tensorboard": "true", "data.unlabeled_images": str(tiny_data.images),
            "train.unlabeled_batch_size": 2,
        }),
    )
    assert result.exit_code == 0, result.output
    records = read_metrics(tmp_path / "tb" / "metrics.jsonl")
    assert {r["type"] for r in records} >= {"train", "eval"}
    expected = _expected(records)
    assert "eval/teacher/map" in expected and "train/lr" in expected
    _assert_same(_scalars(tmp_path / "tb" / "tensorboard"), expected)


def test_without_the_option_a_run_writes_no_tensorboard_folder(tiny_data, tmp_path, cli):
    result = cli(
        "train", "--method", "supervised", "--detector", "fcos", *data_args(tiny_data),
        "--iters", "1", "--runs-dir", str(tmp_path), "--name", "plain", *tiny_set_args(),
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plain" / "metrics.jsonl").is_file()
    assert not (tmp_path / "plain" / "tensorboard").exists()


def test_missing_package_is_one_line_naming_the_extra(tiny_data, tmp_path, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    with pytest.raises(SsodkitError, match=r"pip install 'ssodkit\[tensorboard\]'"):
        open_tensorboard(True, tmp_path)

    result = cli(
        "train", "--method", "supervised", "--detector", "fcos", *data_args(tiny_data),
        "--iters", "1", "--runs-dir", str(tmp_path / "runs"), "--name", "tb",
        *tiny_set_args(**{"output.tensorboard": "true"}),
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: output.tensorboard: true needs the tensorboard package: pip install 'ssodkit[tensorboard]'"
    )
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs" / "tb").exists()  # nothing trained: no run folder left behind


def test_a_resumed_run_shows_each_step_once(tiny_config):
    """A crash after iteration 3 with last.pt at 2: the resume logs 3 again, TensorBoard keeps the new one."""
    from ssodkit.engine.trainer import Trainer

    class CrashAt3(Trainer):
        def train_step(self, batch):
            if self.iteration == 3:
                raise RuntimeError("crash")
            return super().train_step(batch)

    cfg = tiny_config(schedule__iters=4, train__checkpoint_interval=2, output__tensorboard=True, output__name="tb")
    crashed = CrashAt3(cfg)
    try:
        with pytest.raises(RuntimeError, match="crash"):
            crashed.run()
    finally:
        crashed.close()
    run_dir = crashed.run_dir
    assert [r["iter"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3]

    resumed = Trainer(cfg, resume=run_dir)
    try:
        resumed.run()
    finally:
        resumed.close()
    records = read_metrics(run_dir / "metrics.jsonl")
    scalars = _scalars(run_dir / "tensorboard")
    assert [step for step, _ in scalars["train/lr"]] == [1, 2, 3, 4]
    _assert_same(scalars, _expected(records))
