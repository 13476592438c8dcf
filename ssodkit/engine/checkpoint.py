"""Checkpoints: written atomically, holding everything an exact resume needs."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssodkit.errors import SsodkitError
from ssodkit.rng import rng_state, set_rng_state  # noqa: F401 - saved in every checkpoint

CHECKPOINT_VERSION = 1
MAX_REASON_CHARS = 120
ROLES = ("teacher", "student")  # on equal mAP the teacher wins, as it did before the student competed


def better_role(maps: Mapping[str, float | None]) -> str | None:
    """The model of an evaluation with the higher mAP (the teacher on a tie; a missing mAP
    counts as −1), None when neither was evaluated."""
    present = [role for role in ROLES if role in maps]
    if not present:
        return None
    return max(present, key=lambda role: -1.0 if maps[role] is None else maps[role])


@dataclass(frozen=True)
class BestEval:
    """The evaluation `best.pt` was saved at: the model that scored higher there (`role`,
    the weights inference on best.pt uses) and the mAP of every model evaluated.

    Every checkpoint carries it as `best_eval` (so that a resumed run goes on comparing and
    reporting); best.pt also carries `best_role`, which says its weights are the ones that
    were evaluated. Checkpoints written before the student competed have neither.
    """

    iteration: int
    role: str
    maps: dict[str, float | None]

    @property
    def map(self) -> float | None:
        return self.maps.get(self.role)

    def scores(self) -> str:
        """`mAP 31.2; teacher 30.4`: the winner's mAP, then the other model's."""
        others = [f"{role} {_pct(m)}" for role, m in self.maps.items() if role != self.role]
        return "; ".join([f"mAP {_pct(self.map)}", *others])

    def describe(self) -> str:
        """`student at iter 3000 (mAP 31.2; teacher 30.4)`."""
        return f"{self.role} at iter {self.iteration} ({self.scores()})"

    def to_state(self) -> dict[str, Any]:
        return {"iter": self.iteration, "role": self.role, "map": dict(self.maps)}

    @classmethod
    def from_state(cls, state: Any) -> BestEval | None:
        """The record of a checkpoint's `best_eval` entry; None for an old checkpoint."""
        if not isinstance(state, dict) or state.get("role") not in ROLES:
            return None
        return cls(int(state["iter"]), str(state["role"]), dict(state.get("map") or {}))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}"


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write to a temp file in the same folder, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"version": CHECKPOINT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise SsodkitError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise SsodkitError(
            f"{path}: not a readable ssodkit checkpoint ({readable_reason(exc)}); the file is damaged "
            "or not a checkpoint"
        ) from None
    if not isinstance(state, dict) or "student" not in state or "config" not in state:
        raise SsodkitError(f"{path}: not an ssodkit checkpoint (no 'student'/'config' entries)")
    return state


def readable_reason(exc: BaseException) -> str:
    """`Type: first sentence` of an exception, printable ASCII on one line.

    Unpickling a damaged file can raise with the file's own bytes (control characters,
    half a UTF-8 sequence) or a paragraph of advice in the message; printed as is, that
    garbles the terminal and buries the one fact that matters, that the file is bad.
    """
    text = " ".join(str(exc).split())  # newlines and tabs become single spaces
    text = re.sub(r"[^\x20-\x7e]+", "?", text)  # control and non-ASCII bytes
    sentence = re.match(r"(.+?[.!?])(?:\s|$)", text)
    text = sentence.group(1) if sentence else text
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

