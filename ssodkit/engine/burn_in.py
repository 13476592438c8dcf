"""When the supervised-only phase ends: a fixed iteration, or `auto` — read off the labeled
probe (`ssodkit/engine/probe.py`).

`auto` probes every `teacher.burn_in_check` iterations and ends the burn-in at the first
probe where the teacher's pseudo-labels are precise enough (precision at τ ≥
`burn_in_precision`) and their recall has stopped rising (the best recall of the last
`burn_in_patience` probes beats the best before them by no more than `burn_in_min_delta`),
or at `burn_in_max` whatever the probe says. The chosen iteration is checkpointed with the
probe history, so that a resumed run continues where the uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

from ssodkit.config import TeacherConfig


def recall_plateaued(recalls: list[float], patience: int, min_delta: float) -> bool:
    """No improvement > `min_delta` over the best earlier recall in the last `patience`
    probes (False until there is at least one earlier probe to compare with)."""
    if len(recalls) <= patience:
        return False
    return max(recalls[-patience:]) <= max(recalls[:-patience]) + min_delta


def rule_fires(history: list[tuple[float, float]], cfg: TeacherConfig) -> bool:
    """The `auto` rule on the (precision, recall) of every probe so far, oldest first."""
    if not history or history[-1][0] < cfg.burn_in_precision:
        return False
    return recall_plateaued([r for _, r in history], cfg.burn_in_patience, cfg.burn_in_min_delta)


class BurnIn:
    """`end` is the first semi-supervised iteration (None while `auto` has not decided)."""

    def __init__(self, cfg: TeacherConfig) -> None:
        self.cfg = cfg
        self.auto = cfg.burn_in == "auto"
        self.end: int | None = None if self.auto else int(cfg.burn_in)
        self.history: list[tuple[float, float]] = []

    def active(self, iteration: int) -> bool:
        """Is the step at `iteration` (0-based) supervised only?"""
        return self.end is None or iteration < self.end

    def due(self, iteration: int) -> bool:
        """Should the probe run now, after `iteration` steps, to decide?"""
        if self.end is not None:
            return False
        assert self.cfg.burn_in_max is not None, "resolve_method resolves burn_in_max"
        return iteration % self.cfg.burn_in_check == 0 or iteration >= self.cfg.burn_in_max

    def observe(self, iteration: int, precision: float, recall: float) -> str | None:
        """Record a probe after `iteration` steps; the reason when the burn-in ends here
        (`probe` or `max`), else None."""
        self.history.append((precision, recall))
        reason = "probe" if rule_fires(self.history, self.cfg) else None
        if reason is None and iteration >= (self.cfg.burn_in_max or 0):
            reason = "max"
        if reason is not None:
            self.end = iteration
        return reason

    def state_dict(self) -> dict[str, Any]:
        return {"end": self.end, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """A checkpoint without it (an earlier version) had a fixed burn-in: keep config's."""
        if not state or not self.auto:
            return
        self.end = state["end"]
        self.history = [(float(p), float(r)) for p, r in state["history"]]
