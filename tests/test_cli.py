"""Every command end to end on tiny data, as a user would type it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import TINY_FLAGS


def tiny_set_args(**extra) -> list[str]:
    flags = {**TINY_FLAGS, **extra}
    args: list[str] = []
    for key, value in flags.items():
        args += ["--set", f"{key}={json.dumps(value) if isinstance(value, list) else value}"]
    return args


def data_args(tiny_data) -> list[str]:
    return [
        "--train-ann", str(tiny_data.train), "--train-images", str(tiny_data.images),
        "--val-ann", str(tiny_data.val), "--val-images", str(tiny_data.images),
    ]


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory):
    """One tiny supervised FCOS run through the CLI, shared by the evaluate tests."""
    from tests.conftest import run_cli

    runs = tmp_path_factory.mktemp("runs")
    result = run_cli(
        "train", "--method", "supervised", "--detector", "fcos", *data_args(tiny_data),
        "--iters", "2", "--runs-dir", str(runs), "--name", "cli", *tiny_set_args(**{"eval.interval": 2}),
    )
    assert result.exit_code == 0, result.output
    return runs / "cli", result


def test_train_ends_with_the_map_table_and_a_run_folder(trained_run):
    run, result = trained_run
    assert "val COCO bbox" in result.output and "AP50" in result.output
    assert (run / "checkpoints" / "best.pt").is_file()
    assert "best.pt: student at iter 2 (mAP " in result.stdout  # no teacher: the student's
    assert "supervised" in (run / "config.yaml").read_text()


def test_evaluate_checkpoint_then_its_results_file_gives_the_same_map(trained_run, tiny_data, tmp_path, cli):
    run, _ = trained_run
    out = tmp_path / "metrics.json"
    first = cli("evaluate", "--checkpoint", run / "checkpoints" / "last.pt", "--ann", tiny_data.val,
                "--images", tiny_data.images, "--out", out)
    assert first.exit_code == 0, first.output
    metrics = json.loads(out.read_text())
    results = tmp_path / "metrics.results.json"
    assert results.is_file()
    second = cli("evaluate", "--predictions", results, "--ann", tiny_data.val, "--out", tmp_path / "m2.json")
    assert second.exit_code == 0, second.output
    assert json.loads((tmp_path / "m2.json").read_text())["map"] == metrics["map"]


def test_resume_refuses_other_options(trained_run, cli):
    run, _ = trained_run
    result = cli("train", "--resume", run, "--iters", "5")
    assert result.exit_code == 2
    assert "give no other options" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "mean_teechr"], "unknown method 'mean_teechr'; valid:"),
        (["--detector", "yolo"], "unknown detector 'yolo'; valid: faster_rcnn, fcos, retinanet"),
        (["--set", "optim.lr=zero"], "optim.lr = 'zero'"),
        (["--train-ann", "/nonexistent/train.json"], "/nonexistent/train.json"),
    ],
)
def test_bad_train_input_is_one_line_not_a_traceback(args, message, cli, tmp_path):
    result = cli("train", *args, "--runs-dir", tmp_path)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_malformed_coco_names_file_and_record(tmp_path, cli, tiny_data):
    bad = json.loads(tiny_data.train.read_text())
    bad["annotations"][0]["bbox"][2] = 0
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    before = path.read_bytes()
    result = cli("train", "--train-ann", path, "--train-images", tiny_data.images, "--runs-dir", tmp_path / "r")
    assert result.exit_code == 2
    assert "bad.json" in result.stderr and f"annotation {bad['annotations'][0]['id']}" in result.stderr
    assert path.read_bytes() == before  # never touch the user's file


def test_data_synth_split_and_check(tmp_path, cli):
    out = tmp_path / "synth"
    made = cli("data", "synth", "--out", out, "--n-train", "20", "--n-val", "4", "--n-unlabeled", "4", "--seed", "5")
    assert made.exit_code == 0, made.output
    split = cli("split", "--ann", out / "annotations" / "train.json", "--percent", "10", "--fold", "1")
    assert split.exit_code == 0, split.output
    labeled = json.loads((out / "annotations" / "train.1@10.json").read_text())
    unlabeled = json.loads((out / "annotations" / "train.1@10-unlabeled.json").read_text())
    assert len(labeled["images"]) == 2 and len(unlabeled["images"]) == 18
    checked = cli("data", "check", "--ann", out / "annotations" / "val.json")
    assert checked.exit_code == 0, checked.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_ddp_run_trains_and_evaluates(tiny_data, tmp_path):
    """`torchrun --nproc_per_node 2 -m ssodkit train …` on CPU (gloo), a few steps."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SSODKIT_LOAD_PLUGINS": ""}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "ssodkit", "train", *data_args(tiny_data), "--iters", "3",
        "--runs-dir", str(tmp_path), "--name", "ddp", *tiny_set_args(**{"eval.interval": 3}),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "ddp"
    assert (run / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "ddp-2").exists()  # one run folder, written by rank 0 only
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert evals and evals[-1]["student/num_images"] == 6  # both ranks' predictions gathered
    hashes = json.loads((run / "summary.json").read_text())["repro"]["split_hash_per_rank"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]  # every rank trained on the same labeled split


def test_version_and_bare_command(cli):
    from ssodkit import __version__

    assert cli("--version").stdout.strip() == f"ssodkit {__version__}"
    bare = cli()
    assert "Usage" in bare.output and "train" in bare.output
