"""Fault injection: damaged images, damaged checkpoints, unwritable run folders.

Each fault must end in one readable `error:` line or in a named, counted skip; never in a
traceback, binary bytes on the terminal, or a half-written file.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.test_cli import tiny_set_args


def truncate(path: Path) -> None:
    """Keep the header, cut the body: passes the start-up check, fails to decode."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt(path: Path) -> None:
    """Whole file, header intact, a stretch of the pixel data garbled."""
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    for i in range(start, start + 200):
        data[i] = (data[i] * 7 + 13) % 256
    path.write_bytes(bytes(data))


@dataclass
class Sets:
    """COCO files of 3 train, 3 unlabeled and 3 val images over one image root."""

    train: Path
    unlabeled: Path
    val: Path
    images: Path

    def args(self) -> list[str]:
        return [
            "--train-ann", str(self.train), "--train-images", str(self.images),
            "--val-ann", str(self.val), "--val-images", str(self.images),
            "--unlabeled", str(self.unlabeled), "--set", f"data.unlabeled_images={self.images}",
        ]

    def second_image(self, split: str) -> Path:
        coco = json.loads(getattr(self, split).read_text())
        return self.images / coco["images"][1]["file_name"]


def three_image_sets(tiny_data, root: Path) -> Sets:
    """Every image is drawn within the first 3 draws of a set, so a fault cannot hide."""
    shutil.copytree(tiny_data.images, root / "images")
    paths = {}
    for split in ("train", "unlabeled", "val"):
        coco = json.loads(getattr(tiny_data, split).read_text())
        coco["images"] = coco["images"][:3]
        kept = {img["id"] for img in coco["images"]}
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in kept]
        paths[split] = root / f"{split}.json"
        paths[split].write_text(json.dumps(coco))
    return Sets(images=root / "images", **paths)


@pytest.fixture
def clean(tiny_data, tmp_path) -> Sets:
    return three_image_sets(tiny_data, tmp_path / "clean")


@pytest.fixture
def damaged(tiny_data, tmp_path) -> Sets:
    """The second image of each set is damaged: train truncated, unlabeled corrupt, val truncated."""
    sets = three_image_sets(tiny_data, tmp_path / "damaged")
    truncate(sets.second_image("train"))
    corrupt(sets.second_image("unlabeled"))
    truncate(sets.second_image("val"))
    return sets


def train_args(sets: Sets, runs: Path, *extra: str, workers: int = 0, pseudo_images: int = 0) -> list[str]:
    """One Mean Teacher step drawing all 3 labeled and all 3 unlabeled images, then an evaluation."""
    overrides = {
        "train.batch_size": 3, "train.unlabeled_batch_size": 3, "eval.pseudo_images": pseudo_images,
        "data.num_workers": workers,
    }
    return [
        "train", "--method", "mean_teacher", *sets.args(), "--iters", "1", "--runs-dir", str(runs),
        *tiny_set_args(**overrides), *extra,
    ]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_clean_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output and "DataLoader worker" not in result.output
    assert all(ch.isprintable() for ch in lines[0]), repr(lines[0])


# --------------------------------------------------------------------------- images at train time
@pytest.mark.parametrize("workers", [0, 2])
def test_damaged_train_unlabeled_and_val_images_are_skipped_named_once_and_counted(damaged, cli, tmp_path, workers):
    result = cli(*train_args(damaged, tmp_path / "runs", workers=workers))
    assert result.exit_code == 0, result.output
    for split in ("train", "unlabeled", "val"):
        name = str(damaged.second_image(split))
        assert result.stderr.count(name) == 1, f"{split}: {result.stderr}"
    assert "warning: skipped an image that cannot be decoded" in result.stderr
    assert "3 unreadable images skipped" in result.stdout and "val COCO bbox" in result.stdout
    assert (tmp_path / "runs" / "mean_teacher-fcos" / "checkpoints" / "last.pt").is_file()


@pytest.mark.parametrize("workers", [0, 2])
def test_strict_images_stops_at_the_first_damaged_image_with_one_line_naming_it(damaged, cli, tmp_path, workers):
    args = train_args(damaged, tmp_path / "runs", "--set", "data.strict_images=true", workers=workers)
    result = cli(*args)
    assert_one_clean_error(result, str(damaged.second_image("train")), "data.strict_images")


def test_an_unreadable_image_is_replaced_by_the_next_one_and_good_draws_do_not_change(
    clean, damaged, tiny_config, capsys
):
    from ssodkit.engine.data_setup import build_train_data
    from ssodkit.engine.distributed import DistInfo

    def draws(sets: Sets, run_dir: Path) -> list:
        cfg = tiny_config(data__train_ann=str(sets.train), data__train_images=str(sets.images))
        data = build_train_data(cfg, run_dir, DistInfo(), ())
        stream = data.batches(0)
        samples = [s for _ in range(6) for s in next(stream)[0]]
        data.close()
        return [(s["image_id"], s["image"]) for s in samples], data.unreadable

    good, _ = draws(clean, clean.images.parent)
    mixed, unreadable = draws(damaged, damaged.images.parent)
    bad_id = json.loads(damaged.train.read_text())["images"][1]["id"]
    next_id = json.loads(damaged.train.read_text())["images"][2]["id"]
    replaced = 0
    for (good_id, good_image), (mixed_id, mixed_image) in zip(good, mixed, strict=True):
        if good_id == bad_id:
            assert mixed_id == next_id  # the next image in index order, same augmentation seed
            replaced += 1
        else:
            assert mixed_id == good_id and torch.equal(mixed_image, good_image)
    assert replaced == sum(unreadable.counts.values()) >= 2
    assert capsys.readouterr().err.count("cannot be decoded") == 1  # named once, counted each time


def test_evaluate_checkpoint_leaves_a_damaged_val_image_out_of_the_score(tiny_checkpoint, damaged, cli):
    result = cli("evaluate", "--checkpoint", tiny_checkpoint, "--ann", damaged.val, "--images", damaged.images)
    assert result.exit_code == 0, result.output
    assert str(damaged.second_image("val")) in result.stderr
    assert "2 images" in result.stdout


def test_pseudo_label_quality_skips_a_damaged_unlabeled_image(damaged, cli, tmp_path):
    result = cli(*train_args(damaged, tmp_path / "runs", pseudo_images=100))
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_data, tmp_path_factory) -> Path:
    """A run folder's last.pt after one supervised step."""
    from tests.conftest import run_cli

    runs = tmp_path_factory.mktemp("runs")
    result = run_cli(
        "train", "--train-ann", tiny_data.train, "--train-images", tiny_data.images, "--iters", "1",
        "--runs-dir", runs, "--name", "tiny", *tiny_set_args(),
    )
    assert result.exit_code == 0, result.output
    return runs / "tiny" / "checkpoints" / "last.pt"


# --------------------------------------------------------------------------- advice in errors
def test_evaluate_checkpoint_advice_names_no_option_it_lacks(tiny_checkpoint, clean, cli):
    clean.second_image("val").unlink()
    result = cli("evaluate", "--checkpoint", tiny_checkpoint, "--ann", clean.val, "--images", clean.images)
    assert result.exit_code == 2, result.output
    assert "ssodkit data check" in result.stderr and "--skip-invalid" not in result.stderr


def test_split_coco_advice_names_no_option_split_lacks(clean):
    from ssodkit.data.splits import split_coco
    from ssodkit.errors import DataError

    coco = json.loads(clean.train.read_text())
    coco["annotations"][0]["bbox"][2] = -1
    clean.train.write_text(json.dumps(coco))
    with pytest.raises(DataError) as caught:
        split_coco(clean.train, 50, 1)
    assert "ssodkit data check" in str(caught.value) and "--skip-invalid" not in str(caught.value)


# --------------------------------------------------------------------------- silent acceptance
@pytest.mark.parametrize("score", [1.5, -0.2])
@pytest.mark.parametrize("command", ["evaluate", "stats"])
def test_a_score_outside_0_1_is_refused_naming_the_entry(clean, cli, tmp_path, score, command):
    image_id = json.loads(clean.val.read_text())["images"][0]["id"]
    good = {"image_id": image_id, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}
    path = tmp_path / "results.json"
    path.write_text(json.dumps([good, {**good, "score": score}]))
    if command == "evaluate":
        result = cli("evaluate", "--predictions", path, "--ann", clean.val)
    else:
        result = cli("stats", "pseudo", "--pseudo", path, "--gt", clean.val)
    assert result.exit_code == 2, result.output
    assert f"entry 1: score {score:g} is outside [0, 1]" in result.stderr


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "a\\b"])
def test_a_run_name_cannot_leave_the_runs_dir(cli, tmp_path, name):
    result = cli("train", "--name", name, "--runs-dir", tmp_path / "runs")
    assert_one_clean_error(result, "output.name", "one folder name")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_data_check_says_pixels_were_not_decoded_unless_decode(damaged, cli):
    quick = cli("data", "check", "--ann", damaged.train, "--images", damaged.images)
    assert quick.exit_code == 0 and "not decoded" in quick.stdout and "--decode" in quick.stdout
    decoded = cli("data", "check", "--ann", damaged.train, "--images", damaged.images, "--decode")
    assert decoded.exit_code == 1
    assert damaged.second_image("train").name in decoded.stdout


# --------------------------------------------------------------------------- output conventions
def test_results_go_to_stdout_unwrapped_and_nothing_else_does(clean, cli, tmp_path):
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "val.json"
    deep.parent.mkdir()
    shutil.copy(clean.val, deep)
    result = cli("data", "check", "--ann", deep, "--images", clean.images)
    assert result.exit_code == 0, result.output
    assert str(deep) in result.stdout  # one line, not cut at column 80
    assert result.stderr == ""
    image_id = json.loads(clean.val.read_text())["images"][0]["id"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"image_id": image_id, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]))
    scored = cli("evaluate", "--predictions", path, "--ann", clean.val)
    assert scored.exit_code == 0 and "AP50" in scored.stdout and scored.stderr == ""


# --------------------------------------------------------------------------- run folders
def test_an_unwritable_runs_dir_is_one_line(tiny_data, cli, tmp_path):
    """A file where a folder should be: as root, chmod cannot make a folder read-only."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = cli(
        "train", "--train-ann", tiny_data.train, "--train-images", tiny_data.images, "--iters", "1",
        "--runs-dir", blocker / "runs", *tiny_set_args(),
    )
    assert_one_clean_error(result, str(blocker / "runs"), "Not a directory")


def test_a_checkpoint_write_that_fails_midway_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    import errno
    import os

    from ssodkit.engine import checkpoint as ckpt

    path = tmp_path / "checkpoints" / "last.pt"
    ckpt.save_checkpoint({"student": {"w": torch.ones(3)}, "config": {}, "iteration": 1}, path)
    before = path.read_bytes()

    def full_disk(obj, f) -> None:
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save_checkpoint({"student": {"w": torch.zeros(3)}, "config": {}, "iteration": 2}, path)
    assert path.read_bytes() == before
    assert ckpt.load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind


def damage_checkpoint(path: Path) -> None:
    """Binary garbage with control bytes, the kind that used to reach the terminal."""
    path.write_bytes(b"\x80\x02" + bytes(range(256)) * 4)


@pytest.mark.parametrize("command", ["evaluate", "pseudolabel", "init-from", "resume"])
def test_a_damaged_checkpoint_is_one_readable_line(tiny_checkpoint, tiny_data, cli, tmp_path, command):
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint.parent.parent, run)
    bad = run / "checkpoints" / "last.pt"
    damage_checkpoint(bad)
    data = ["--train-ann", tiny_data.train, "--train-images", tiny_data.images]
    args = {
        "evaluate": ["evaluate", "--checkpoint", bad, "--ann", tiny_data.val, "--images", tiny_data.images],
        "pseudolabel": ["pseudolabel", "--checkpoint", bad, "--images", tiny_data.images, "--out", tmp_path / "p.json"],
        "init-from": ["train", *data, "--init-from", bad, "--runs-dir", tmp_path / "runs", *tiny_set_args()],
        "resume": ["train", "--resume", run],
    }[command]
    result = cli(*args)
    assert_one_clean_error(result, str(bad), "not a readable ssodkit checkpoint")
    assert len(error_lines(result.stderr)[0]) < 300


# --------------------------------------------------------------------------- Ctrl-C
class _SigintDisposition(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> bool:
        import signal

        return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_data_loader_workers_leave_ctrl_c_to_the_main_process():
    """Each worker would otherwise run the trainer's handler and print its message again."""
    from ssodkit.data.datasets import ignore_sigint

    loader = torch.utils.data.DataLoader(
        _SigintDisposition(), batch_size=1, num_workers=2, worker_init_fn=ignore_sigint
    )
    assert all(bool(b) for b in loader)


def test_ctrl_c_inside_a_command_prints_interrupted_once_and_exits_130(monkeypatch, capsys):
    from ssodkit.cli import app

    def interrupted_command() -> None:
        raise SystemExit(130)  # what typer makes of a KeyboardInterrupt in a command

    monkeypatch.setattr(app, "build_app", lambda: interrupted_command)
    with pytest.raises(SystemExit) as caught:
        app.main()
    assert caught.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"


# --------------------------------------------------------------------------- help
@pytest.mark.parametrize(
    "command",
    [["train"], ["evaluate"], ["pseudolabel"], ["split"], ["data", "check"], ["stats", "pseudo"], ["plugins"]],
)
def test_help_shows_flags_without_a_value_type(cli, command):
    result = cli(*command, "--help")
    assert result.exit_code == 0 and "--help" in result.stdout
    assert "<bool>" not in result.stdout


def test_train_help_shows_the_configs_defaults(cli):
    from ssodkit.cli.train_cmd import FLAG_KEYS, HELP_DEFAULTS
    from ssodkit.config import RunConfig

    config = RunConfig().model_dump(mode="json")
    for flag, shown in HELP_DEFAULTS.items():
        section, key = FLAG_KEYS[flag].split(".")
        value = config[section][key]
        if value is None:
            continue  # said in words: synthetic data, 4 × batch size, <method>-<detector>
        if isinstance(value, bool):
            assert shown == ("" if value else "no-") + flag.replace("_", "-"), flag
        else:
            assert shown == str(value), flag
    assert "[default: 600]" in cli("train", "--help").stdout


@pytest.mark.parametrize(
    ("key", "hint"), [("train.iters", "schedule.iters"), ("train.lr", "optim.lr"), ("optim.lrr", "lr")]
)
def test_an_unknown_config_key_points_to_the_section_that_has_it(key, hint):
    from ssodkit.config import build_config
    from ssodkit.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"unknown config key '{key}'; did you mean '{hint}'\?"):
        build_config(None, {}, [f"{key}=5"])


# --------------------------------------------------------------------------- the training step
def test_a_non_finite_loss_is_skipped_counted_and_leaves_student_and_teacher_alone(tiny_config):
    """A NaN at step k (an overflow, a bad pseudo box) must not reach the weights or the
    teacher: the step is skipped and counted, and training goes on."""
    from ssodkit.engine.trainer import Trainer

    cfg = tiny_config(method__name="mean_teacher", method__score_thr=0.05, train__unlabeled_batch_size=2,
                      output__name="nan")
    trainer = Trainer(cfg)
    step = trainer.method.step

    def poisoned(student, teacher, labeled, unlabeled, it):
        losses = step(student, teacher, labeled, unlabeled, it)
        if it == 1:
            losses["sup_loss_cls"] = losses["sup_loss_cls"] * float("nan")
        return losses

    trainer.method.step = poisoned
    try:
        stream = trainer.data.batches(0)
        assert trainer.train_step(next(stream)) is not None
        trainer.iteration += 1
        student = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        teacher = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
        assert trainer.train_step(next(stream)) is None and trainer.skipped_steps == 1
        for k, v in trainer.model.state_dict().items():
            assert torch.equal(v, student[k]), k
        for k, v in trainer.teacher.state_dict().items():
            assert torch.equal(v, teacher[k]), k
        trainer.iteration += 1
        assert trainer.train_step(next(stream)) is not None  # and training goes on
    finally:
        trainer.close()


def _train_records(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timing = {"sec_per_iter", "wall_s"}  # clock readings, not training
    return [{k: v for k, v in r.items() if k not in timing} for r in records if r["type"] == "train"]


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_runs_losses(tiny_data, tmp_path):
    """`kill -9` gives no chance to save: the last periodic checkpoint must be enough, and
    the records written after it are replaced, not duplicated."""
    import os
    import signal
    import subprocess
    import sys
    import time

    runs = tmp_path / "runs"
    base = [
        sys.executable, "-m", "ssodkit", "train", "--method", "mean_teacher",
        "--train-ann", str(tiny_data.train), "--train-images", str(tiny_data.images),
        "--unlabeled", str(tiny_data.unlabeled), "--set", f"data.unlabeled_images={tiny_data.images}",
        "--iters", "6", "--runs-dir", str(runs),
        *tiny_set_args(**{"train.checkpoint_interval": 2, "train.unlabeled_batch_size": 2,
                          "method.score_thr": 0.05, "schedule.iters": 6}),
    ]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([*base, "--name", "straight"], check=True, capture_output=True, cwd=root, env=env, timeout=600)

    proc = subprocess.Popen([*base, "--name", "killed"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, deadline = runs / "killed" / "metrics.jsonl", time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and any(json.loads(line)["iter"] >= 3 for line in metrics.read_text().splitlines()):
                os.kill(proc.pid, signal.SIGKILL)  # after the iteration-2 checkpoint, mid-run
                break
            time.sleep(0.02)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    subprocess.run([sys.executable, "-m", "ssodkit", "train", "--resume", str(runs / "killed")],
                   check=True, capture_output=True, cwd=root, env=env, timeout=600)
    assert _train_records(runs / "killed") == _train_records(runs / "straight")


def test_resuming_a_finished_run_says_so_and_leaves_it_alone(tiny_data, tmp_path, cli):
    runs = tmp_path / "runs"
    args = ["train", "--train-ann", str(tiny_data.train), "--train-images", str(tiny_data.images),
            "--runs-dir", str(runs), "--name", "done", *tiny_set_args(**{"schedule.iters": 2})]
    assert cli(*args).exit_code == 0
    before = (runs / "done" / "metrics.jsonl").read_bytes()
    result = cli("train", "--resume", str(runs / "done"))
    assert result.exit_code == 0, result.output
    assert "already finished at iteration 2" in result.output and "s/it" not in result.output
    assert (runs / "done" / "metrics.jsonl").read_bytes() == before


def test_resume_on_data_that_became_invalid_points_to_the_runs_config(tiny_data, tmp_path, cli):
    """`--resume` takes no other option, so the advice cannot be `--skip-invalid`."""
    runs, ann = tmp_path / "runs", tmp_path / "train.json"
    ann.write_text(tiny_data.train.read_text())
    args = ["train", "--train-ann", str(ann), "--train-images", str(tiny_data.images),
            "--runs-dir", str(runs), "--name", "r", *tiny_set_args(**{"schedule.iters": 2})]
    assert cli(*args).exit_code == 0
    config = runs / "r" / "config.yaml"
    config.write_text(config.read_text().replace("iters: 2\n", "iters: 4\n", 1))  # not finished yet
    coco = json.loads(ann.read_text())
    coco["annotations"][0]["bbox"] = [0, 0, -5, 3]  # a negative width
    ann.write_text(json.dumps(coco))
    result = cli("train", "--resume", str(runs / "r"))
    assert_one_clean_error(result, "data.skip_invalid: true", str(config))
    assert "--skip-invalid" not in result.stderr
