"""The set-up the diagnostics share: a CPU trainer for a recipe with a checkpoint's student
weights loaded, and a few batches from its data loader."""
from pathlib import Path
from typing import Any

import torch

from ssodkit.config import build_config
from ssodkit.engine.checkpoint import load_checkpoint
from ssodkit.engine.trainer import Trainer

CPU = {"train.device": "cpu", "output.runs_dir": "/tmp/ssodkit-diagnostics", "data.num_workers": 0}


def trainer_from(recipe: Path, checkpoint: Path, overrides: dict[str, Any] | None = None) -> tuple[Trainer, dict]:
    """The recipe's trainer on the CPU, the checkpoint's student loaded; also the checkpoint."""
    trainer = Trainer(build_config(recipe, {**CPU, **(overrides or {})}, []))
    state = load_checkpoint(checkpoint)
    trainer.model.load_state_dict(state["student"])
    return trainer, state


def first_batches(trainer: Trainer, count: int) -> list[tuple[Any, Any]]:
    """The first `count` (labeled, unlabeled views) batches of the trainer's loader, on the CPU."""
    batches = trainer.data.batches(0)
    return [trainer.data.to_device(next(batches), torch.device("cpu")) for _ in range(count)]
