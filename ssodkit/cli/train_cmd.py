"""`ssodkit train`: build a run config from a recipe, flags and --set, then train."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ssodkit.errors import SsodkitError

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


def train(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="recipe YAML (see recipes/)")] = None,
    method: Annotated[Optional[str], typer.Option(help="SSOD method (ssodkit plugins lists them)")] = None,
    detector: Annotated[Optional[str], typer.Option(help="faster_rcnn, retinanet, fcos, or a plugin's")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="timm model name")] = None,
    pretrained: Annotated[Optional[bool], typer.Option("--pretrained/--no-pretrained", help="ImageNet backbone weights")] = None,
    train_ann: Annotated[Optional[Path], typer.Option(help="labeled COCO JSON (default: synthetic data)")] = None,
    train_images: Annotated[Optional[Path], typer.Option(help="image folder of --train-ann")] = None,
    val_ann: Annotated[Optional[Path], typer.Option(help="validation COCO JSON")] = None,
    val_images: Annotated[Optional[Path], typer.Option(help="image folder of --val-ann")] = None,
    unlabeled: Annotated[Optional[Path], typer.Option(help="unlabeled COCO JSON or image folder")] = None,
    labeled_percent: Annotated[Optional[float], typer.Option(help="keep this percentage of --train-ann labeled (COCO-standard split)")] = None,
    fold: Annotated[Optional[int], typer.Option(help="split fold (seed), 1..5 in the literature")] = None,
    skip_invalid: Annotated[Optional[bool], typer.Option("--skip-invalid/--no-skip-invalid", help="drop invalid COCO records instead of failing")] = None,
    workers: Annotated[Optional[int], typer.Option(help="data-loading worker processes")] = None,
    iters: Annotated[Optional[int], typer.Option(help="training iterations")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="labeled images per step and device")] = None,
    unlabeled_batch_size: Annotated[Optional[int], typer.Option(help="unlabeled images per step and device (default 4 × batch size)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="base learning rate")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N")] = None,
    amp: Annotated[Optional[str], typer.Option(help="auto, off, fp16, bf16 (CUDA only)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed")] = None,
    init_from: Annotated[Optional[Path], typer.Option(help="start from this checkpoint's detector weights (e.g. a supervised run's last.pt)")] = None,
    name: Annotated[Optional[str], typer.Option(help="run folder name under --runs-dir")] = None,
    runs_dir: Annotated[Optional[Path], typer.Option(help="where run folders go (default runs/)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override any config value: section.key=value")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="continue the run in this folder from its last checkpoint")] = None,
) -> None:
    """Train a detector (supervised or semi-supervised) and report COCO mAP."""
    from ssodkit.cli.output import console
    from ssodkit.config import build_config, load_saved_config
    from ssodkit.engine.trainer import Trainer
    from ssodkit.evaluation.coco_eval import per_class_table, results_table

    given = {key: value for key, value in locals().items() if key in FLAG_KEYS and value is not None}
    if resume is not None:
        if given or config is not None or set_:
            raise SsodkitError("--resume continues a run with its saved config; give no other options")
        if not (resume / "checkpoints" / "last.pt").is_file():
            raise SsodkitError(f"{resume}: no checkpoints/last.pt to resume from")
        cfg = load_saved_config(resume / "config.yaml")
    else:
        flags = {FLAG_KEYS[k]: (str(v) if isinstance(v, Path) else v) for k, v in given.items()}
        cfg = build_config(config, flags, set_ or [])

    trainer = Trainer(cfg, resume=resume, console=console(stderr=True))  # progress and logs
    try:
        if trainer.dist.is_main:
            trainer.console.print(
                f"[bold]ssodkit train[/] {cfg.method.name} / {cfg.detector.name} ({cfg.detector.backbone}) "
                f"on {trainer.device} — {len(trainer.data.train_dataset)} labeled images, "
                f"{trainer.data.num_unlabeled} unlabeled, {len(trainer.classes)} classes → {trainer.run_dir}"
            )
        summary = trainer.run()
        if trainer.dist.is_main:
            results = console()
            for role, result in summary.final.items():
                results.print(results_table(result, title=f"{role} — val COCO bbox (iter {summary.final_iter})"))
            primary = summary.final.get("teacher") or summary.final.get("student")
            if primary is not None:
                results.print(per_class_table(primary))
            unreadable = trainer.data.unreadable.summary()
            results.print(
                f"{summary.status}: {summary.iterations} iterations, {summary.sec_per_iter:.2f} s/it, "
                f"{summary.skipped_steps} skipped steps{', ' + unreadable if unreadable else ''}; "
                f"run folder {summary.run_dir}",
                markup=False,
            )
    finally:
        trainer.close()


def register(app: typer.Typer) -> None:
    app.command("train")(train)
