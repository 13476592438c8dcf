"""Exponential moving average of the student into the teacher (Mean Teacher)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class EMA:
    """`θ_t ← (1 − m)·θ_t + m·θ_s` after each optimiser step.

    `momentum=None` uses MixPL's schedule `m_t = max(min_momentum, γ / (γ + t))` (the teacher
    follows the student closely early on, then slowly); a float gives a constant m (mmdet's
    1e-3). Buffers (BatchNorm statistics) are averaged like the weights, copied, or left
    alone. `interval` k updates after every k-th step only, with the step's own m_t (MixPL's
    MeanTeacherHook: interval 3, t the iteration), so the teacher moves k times slower.
    """

    def __init__(
        self,
        momentum: float | None = None,
        gamma: float = 4.0,
        min_momentum: float = 2e-4,
        buffers: Literal["copy", "ema", "skip"] = "ema",
        interval: int = 1,
    ) -> None:
        self.momentum = momentum
        self.gamma = gamma
        self.min_momentum = min_momentum
        self.buffers = buffers
        self.interval = interval

    def momentum_at(self, iteration: int) -> float:
        if self.momentum is not None:
            return self.momentum
        return max(self.min_momentum, self.gamma / (self.gamma + iteration))

    @torch.no_grad()
    def update(self, teacher: nn.Module, student: nn.Module, iteration: int) -> float:
        """Move the teacher after step `iteration` (0-based); the momentum used, 0 if skipped."""
        if (iteration + 1) % self.interval:
            return 0.0
        m = self.momentum_at(iteration)
        for t, s in zip(teacher.parameters(), student.parameters()):
            t.mul_(1.0 - m).add_(s.detach(), alpha=m)
        if self.buffers != "skip":
            for t, s in zip(teacher.buffers(), student.buffers()):
                if self.buffers == "ema" and t.is_floating_point():
                    t.mul_(1.0 - m).add_(s.detach(), alpha=m)
                else:
                    t.copy_(s)
        return m
