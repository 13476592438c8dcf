"""Learning-rate schedule: linear warm-up then constant, step or cosine (per iteration)."""

from __future__ import annotations

import math
from bisect import bisect_right

import torch

from ssodkit.config import ScheduleConfig


def lr_factor(it: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base learning rate at iteration `it` (0-based)."""
    if it < cfg.warmup_iters:
        alpha = it / max(1, cfg.warmup_iters)
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    else:
        warm = 1.0
    if cfg.policy == "step":
        return warm * cfg.gamma ** bisect_right(sorted(cfg.steps), it)
    if cfg.policy == "cosine":
        progress = min(1.0, it / max(1, cfg.iters))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return warm * (cfg.min_lr_factor + (1 - cfg.min_lr_factor) * cosine)
    return warm


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))
