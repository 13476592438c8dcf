"""`ssodkit train`: build a run config from a recipe, flags and --set, then train."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ssodkit.errors import SsodkitError

if TYPE_CHECKING:  # pydantic loads only when a command runs
    from ssodkit.config import RunConfig
    from ssodkit.engine.trainer import Trainer

# CLI flag → dotted config key. Flags left out (None) do not override the recipe.
FLAG_KEYS = {
    "method": "method.name",
    "detector": "detector.name",
    "backbone": "detector.backbone",
    "pretrained": "detector.pretrained",
    "train_ann": "data.train_ann",
    "train_images": "data.train_images",
    "val_ann": "data.val_ann",
    "val_images": "data.val_images",
    "unlabeled": "data.unlabeled",
    "labeled_percent": "data.labeled_percent",
    "fold": "data.fold",
    "skip_invalid": "data.skip_invalid",
    "workers": "data.num_workers",
    "iters": "schedule.iters",
    "batch_size": "train.batch_size",
    "unlabeled_batch_size": "train.unlabeled_batch_size",
    "lr": "optim.lr",
    "device": "train.device",
    "amp": "train.amp",
    "seed": "train.seed",
    "init_from": "train.init_from",
    "name": "output.name",
    "runs_dir": "output.runs_dir",
}

# What a flag left out means when no recipe sets it: RunConfig's defaults (test_faults checks
# that they agree), written out so that `ssodkit train --help` need not import torch.
HELP_DEFAULTS = {
    "method": "supervised",
    "detector": "fcos",
    "backbone": "resnet18",
    "pretrained": "no-pretrained",
    "train_ann": "synthetic data",
    "train_images": "guessed beside --train-ann",
    "val_images": "guessed beside --val-ann",
    "fold": "1",
    "skip_invalid": "no-skip-invalid",
    "workers": "auto",
    "iters": "600",
    "batch_size": "8",
    "unlabeled_batch_size": "4 × batch size",
    "lr": "0.01",
    "device": "auto",
    "amp": "auto",
    "seed": "0",
    "name": "<method>-<detector>",
    "runs_dir": "runs",
}


def _with_default(text: str, key: str) -> str:
    """Help text ending in the config's default, styled as typer styles its own."""
    return f"{text} [dim]\\[default: {HELP_DEFAULTS[key]}][/]"


def train(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="recipe YAML (see recipes/)")] = None,
    method: Annotated[Optional[str], typer.Option(help=_with_default("SSOD method (ssodkit plugins lists them)", "method"))] = None,
    detector: Annotated[Optional[str], typer.Option(help=_with_default("faster_rcnn, retinanet, fcos, or a plugin's", "detector"))] = None,
    backbone: Annotated[Optional[str], typer.Option(help=_with_default("timm model name", "backbone"))] = None,
    pretrained: Annotated[Optional[bool], typer.Option("--pretrained/--no-pretrained", help=_with_default("ImageNet backbone weights", "pretrained"))] = None,
    train_ann: Annotated[Optional[Path], typer.Option(help=_with_default("labeled COCO JSON", "train_ann"))] = None,
    train_images: Annotated[Optional[Path], typer.Option(help=_with_default("image folder of --train-ann", "train_images"))] = None,
    val_ann: Annotated[Optional[Path], typer.Option(help="validation COCO JSON")] = None,
    val_images: Annotated[Optional[Path], typer.Option(help=_with_default("image folder of --val-ann", "val_images"))] = None,
    unlabeled: Annotated[Optional[Path], typer.Option(help="unlabeled COCO JSON or image folder")] = None,
    labeled_percent: Annotated[Optional[float], typer.Option(help="keep this percentage of --train-ann labeled (COCO-standard split)")] = None,
    fold: Annotated[Optional[int], typer.Option(help=_with_default("split fold (seed), 1..5 in the literature", "fold"))] = None,
    skip_invalid: Annotated[Optional[bool], typer.Option("--skip-invalid/--no-skip-invalid", help=_with_default("drop invalid COCO records instead of failing", "skip_invalid"))] = None,
    workers: Annotated[Optional[str], typer.Option(help=_with_default("data-loading worker processes per stream, or auto", "workers"))] = None,
    iters: Annotated[Optional[int], typer.Option(help=_with_default("training iterations", "iters"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=_with_default("labeled images per step and device", "batch_size"))] = None,
    unlabeled_batch_size: Annotated[Optional[int], typer.Option(help=_with_default("unlabeled images per step and device", "unlabeled_batch_size"))] = None,
    lr: Annotated[Optional[float], typer.Option(help=_with_default("base learning rate", "lr"))] = None,
    device: Annotated[Optional[str], typer.Option(help=_with_default("auto, cpu, cuda, cuda:N", "device"))] = None,
    amp: Annotated[Optional[str], typer.Option(help=_with_default("auto, off, fp16, bf16 (CUDA only)", "amp"))] = None,
    seed: Annotated[Optional[int], typer.Option(help=_with_default("random seed", "seed"))] = None,
    init_from: Annotated[Optional[Path], typer.Option(help="start from this checkpoint's detector weights (e.g. a supervised run's last.pt)")] = None,
    name: Annotated[Optional[str], typer.Option(help=_with_default("run folder name under --runs-dir", "name"))] = None,
    runs_dir: Annotated[Optional[Path], typer.Option(help=_with_default("where run folders go", "runs_dir"))] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override any config value: section.key=value")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="continue the run in this folder from its last checkpoint")] = None,
) -> None:
    """Train a detector (supervised or semi-supervised) and report COCO mAP.

    Defaults are the config's; a --config recipe or --set overrides them.
    """
    run_train(dict(locals()))


def run_train(options: dict[str, Any], prepare: Callable[[Trainer], None] | None = None) -> None:
    """`ssodkit train` on its parsed options (keyed by `train`'s parameter names).

    `prepare(trainer)`, when given, runs once the trainer is set up (a resumed run's state
    loaded) and before its first step: the seam for a diagnostic that changes one thing in a
    run and keeps the rest — config, run folder, metrics.jsonl, resume — exactly as `ssodkit
    train` makes it (benchmarks/diagnostics/oracle_teacher.py replaces the teacher's boxes).
    """
    from ssodkit.cli.output import console
    from ssodkit.cli.tables import per_class_table, results_table
    from ssodkit.config import build_config, load_saved_config
    from ssodkit.engine.checkpoint import better_role
    from ssodkit.engine.summary import describe as describe_summary
    from ssodkit.engine.trainer import Trainer

    config, set_, resume = options.get("config"), options.get("set_"), options.get("resume")
    given = {key: value for key, value in options.items() if key in FLAG_KEYS and value is not None}
    if resume is not None:
        if given or config is not None or set_:
            raise SsodkitError("--resume continues a run with its saved config; give no other options")
        if not (resume / "checkpoints" / "last.pt").is_file():
            raise SsodkitError(f"{resume}: no checkpoints/last.pt to resume from")
        cfg = load_saved_config(resume / "config.yaml")
        done = _finished_iteration(resume, cfg.schedule.iters)
        if done is not None:
            console().print(f"{resume}: already finished at iteration {done}; nothing to resume", markup=False)
            return
    else:
        flags = {FLAG_KEYS[k]: (str(v) if isinstance(v, Path) else v) for k, v in given.items()}
        cfg = build_config(config, flags, set_ or [])

    trainer = Trainer(cfg, resume=resume, console=console(stderr=True))  # progress and logs
    try:
        if prepare is not None:
            prepare(trainer)
        if trainer.dist.is_main:
            trainer.console.print(
                f"[bold]ssodkit train[/] {cfg.method.name} / {cfg.detector.name} ({cfg.detector.backbone}) "
                f"on {trainer.device} — {len(trainer.data.train_dataset)} labeled images, "
                f"{trainer.data.num_unlabeled} unlabeled, {len(trainer.classes)} classes"
                f"{_frozen_bn_note(cfg, trainer.cfg)} → {trainer.run_dir}"
            )
        summary = trainer.run()
        if trainer.dist.is_main:
            results = console()
            for role, result in summary.final.items():
                results.print(results_table(result, title=f"{role} — val COCO bbox (iter {summary.final_iter})"))
            primary = better_role({role: r.map for role, r in summary.final.items()})
            if primary is not None:
                results.print(per_class_table(summary.final[primary]))
            if summary.best_eval is not None:  # the model evaluate / pseudolabel on best.pt use
                results.print(f"best.pt: {summary.best_eval.describe()}", markup=False)
            for line in describe_summary(summary.summary):
                results.print(line, markup=False)
            for line in summary.collapse:  # the run's collapse warnings again, where the summary is read
                results.print(line, style="yellow", markup=False, highlight=False, soft_wrap=True)
            unreadable = trainer.data.unreadable.summary()
            results.print(
                f"{summary.status}: {summary.iterations} iterations, {summary.sec_per_iter:.2f} s/it, "
                f"{summary.skipped_steps} skipped steps{', ' + unreadable if unreadable else ''}; "
                f"run folder {summary.run_dir}",
                markup=False,
            )
            results.print(
                f"look at {summary.run_dir / 'results.csv'}, results.png and samples/ "
                f"(ssodkit report {summary.run_dir} OTHER_RUN overlays another run)", markup=False,
            )
    finally:
        trainer.close()


def _frozen_bn_note(given: RunConfig, used: RunConfig) -> str:
    """', backbone BatchNorm frozen (why)' for the start-up line; '' when it trains."""
    if not used.detector.freeze_bn:
        return ""
    if given.detector.freeze_bn is not None:
        why = "detector.freeze_bn"
    elif given.train.init_from is not None:
        why = "as in train.init_from"
    else:
        why = "pretrained"
    return f", backbone BatchNorm frozen ({why})"


def _finished_iteration(run: Path, iters: int) -> int | None:
    """The run's last iteration when its last checkpoint is already at the end, else None
    (so that resuming a finished run neither retrains nor rewrites its metrics)."""
    from ssodkit.engine.checkpoint import load_checkpoint

    iteration = int(load_checkpoint(run / "checkpoints" / "last.pt").get("iteration", 0))
    return iteration if iteration >= iters else None


def register(app: typer.Typer) -> None:
    app.command("train")(train)
