"""The collapse warning: tell the user when the teacher drifts instead of letting the run go on.

A teacher that collapses does so silently: its pseudo-labels thin out, more unlabeled
images get none, the student then fits fewer and worse boxes and even its supervised loss
rises, while the run keeps going. Every one of those signals is already in
`metrics.jsonl`; `CollapseWatcher` reads the same records as they are written and returns
one line when they move past the thresholds below (docs/troubleshooting.md, "The teacher
collapsed", lists the same values; keep them in sync).

Train records (one per `train.log_interval` window, after the burn-in only):

* the reference is the mean of the first `REFERENCE_WINDOWS` windows after the burn-in,
  when the teacher still equals the burn-in's student;
* the current value is the median of the last `SMOOTH_WINDOWS` windows (the reference's
  included), so that one noisy window, however far off, never fires: a change past a
  threshold is reported at its second window, a slower drift once the median crosses —
  within `SMOOTH_WINDOWS` windows of the crossing either way;
* pseudo boxes per image below `PSEUDO_DROP` × reference (a reference below
  `MIN_PSEUDO_REFERENCE` is too small to lose), the empty-image fraction up by at least
  `EMPTY_RISE` (absolute), the supervised loss (sum of the `sup_*` terms), or its
  classification term alone, at least `SUP_LOSS_RISE` × reference.

Eval records: the teacher's mAP below `MAP_DROP` × its best so far (once that best is
above `MIN_BEST_MAP`; evaluations in the burn-in count towards the best), and the labeled
probe's recall below `PROBE_RECALL_DROP` × its first value after the burn-in (precision is
reported beside it but does not fire: a teacher losing boxes often keeps the sure ones).

Each kind of record (train, eval) warns once per episode: after a warning it stays silent
until every signal of that kind is back within `RECOVERY` of the way from threshold to
reference (hysteresis, so a signal hovering at the threshold does not warn every window).
Pure Python: the trainer checkpoints its state (`state_dict`) so that a resumed run keeps
the reference.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any, NamedTuple

from ssodkit.engine.results import pseudo_boxes_per_image

REFERENCE_WINDOWS = 3  # train windows after the burn-in averaged into the reference
SMOOTH_WINDOWS = 3  # train windows in the moving median compared with it
PSEUDO_DROP = 0.5  # pseudo boxes / image below this fraction of the reference
MIN_PSEUDO_REFERENCE = 0.1  # … unless the reference itself is below this (nothing to lose)
EMPTY_RISE = 0.25  # empty-image fraction up by at least this much (absolute)
SUP_LOSS_RISE = 1.5  # supervised loss (or its cls term) at least this multiple of the reference
MAP_DROP = 0.7  # teacher mAP below this fraction of its best so far …
MIN_BEST_MAP = 0.05  # … once that best is above this (absolute mAP)
PROBE_RECALL_DROP = 0.5  # labeled-probe recall below this fraction of its first value after burn-in
MIN_PROBE_REFERENCE = 0.05  # … unless that first value is below this
RECOVERY = 0.5  # re-armed when every signal is back this far from the threshold toward the reference

HINT = (
    "try a slower teacher EMA (--set teacher.momentum=0.001), a lower score threshold, a longer burn-in; "
    "see docs/troubleshooting.md and ssodkit stats pseudo"
)


def _number(record: Mapping[str, Any], key: str) -> float | None:
    value = record.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _sup_loss(record: Mapping[str, Any]) -> float | None:
    terms = [v for k in record if k.startswith("sup_") and (v := _number(record, k)) is not None]
    return sum(terms) if terms else None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


class Signal(NamedTuple):
    """How one record key is judged against its reference and written in the warning."""

    label: str
    how: str  # "drop": below limit × reference; "rise": up by ≥ limit; "ratio": ≥ limit × reference
    limit: float
    unit: str = ""  # "%": a fraction shown in percent; "map": an mAP shown ×100 against the best

    def state(self, ref: float, now: float) -> tuple[bool, bool]:
        """(past the threshold, not yet back within `RECOVERY` of the way to the reference)."""
        if self.how == "drop":
            return now < self.limit * ref, now < (self.limit + RECOVERY * (1 - self.limit)) * ref
        if self.how == "rise":
            return now - ref >= self.limit, now - ref >= (1 - RECOVERY) * self.limit
        return now >= self.limit * ref, now >= (self.limit - RECOVERY * (self.limit - 1)) * ref

    def describe(self, ref: float, now: float) -> str:
        if self.unit == "%":
            return f"{self.label} {100 * ref:.0f} % → {100 * now:.0f} %"
        if self.unit == "map":
            return f"{self.label} {100 * ref:.1f} (best) → {100 * now:.1f} (−{100 * (1 - now / ref):.0f} %)"
        if self.how == "ratio":
            return f"{self.label} {ref:.3g} → {now:.3g} (×{now / ref:.1f})"
        return f"{self.label} {ref:.2g} → {now:.2g} (−{100 * (1 - now / ref):.0f} %)"


TRAIN_SIGNALS: dict[str, Signal] = {
    "pseudo_per_image": Signal("pseudo boxes/img", "drop", PSEUDO_DROP),
    "pseudo_empty_frac": Signal("empty images", "rise", EMPTY_RISE, "%"),
    "sup_loss": Signal("supervised loss", "ratio", SUP_LOSS_RISE),
    "sup_loss_cls": Signal("supervised cls loss", "ratio", SUP_LOSS_RISE),
}
EVAL_SIGNALS: dict[str, Signal] = {
    "teacher/map": Signal("teacher mAP", "drop", MAP_DROP, "map"),
    "probe/recall50": Signal("labeled probe recall", "drop", PROBE_RECALL_DROP, "%"),
}


class CollapseWatcher:
    """Reads `train` and `eval` records; `observe_*` return one warning line when a collapse
    episode starts, else None. `signals` holds the signals of the last warning
    (name → reference, now); `messages` every warning so far."""

    def __init__(self) -> None:
        self.reference: dict[str, float] = {}
        self.first: list[dict[str, float]] = []  # train windows averaged into the reference
        self.recent: list[dict[str, float]] = []  # the last SMOOTH_WINDOWS windows, the median's
        self.best_map: float | None = None
        self.probe_reference: float | None = None
        self.episode: dict[str, bool] = {"train": False, "eval": False}
        self.messages: list[str] = []
        self.signals: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ train records
    def observe_train(self, record: Mapping[str, Any]) -> str | None:
        """A `train` record of a window after the burn-in."""
        keys = ("pseudo_per_image", "pseudo_empty_frac", "sup_loss_cls")
        values = {k: v for k in keys if (v := _number(record, k)) is not None}
        if (boxes := pseudo_boxes_per_image(record)) is not None:  # MixPL, Soft Teacher: per kind of input
            values["pseudo_per_image"] = boxes
        if (sup := _sup_loss(record)) is not None:
            values["sup_loss"] = sup
        if not values:
            return None
        self.recent = [*self.recent, values][-SMOOTH_WINDOWS:]
        if len(self.first) < REFERENCE_WINDOWS:
            self.first.append(values)
            if len(self.first) == REFERENCE_WINDOWS:
                self.reference = {k: _mean([w[k] for w in self.first if k in w]) for k in TRAIN_SIGNALS
                                  if any(k in w for w in self.first)}
            return None
        current = {k: statistics.median([w[k] for w in self.recent if k in w]) for k in self.reference
                   if any(k in w for w in self.recent)}
        refs = dict(self.reference)
        if refs.get("pseudo_per_image", 0.0) < MIN_PSEUDO_REFERENCE:
            refs.pop("pseudo_per_image", None)
        refs = {k: r for k, r in refs.items() if TRAIN_SIGNALS[k].how != "ratio" or r > 0}
        return self._judge("train", TRAIN_SIGNALS, refs, current, int(record.get("iter", 0)))

    # ------------------------------------------------------------------ eval records
    def observe_eval(self, record: Mapping[str, Any], *, burn_in: bool = False) -> str | None:
        """An `eval` record; during the burn-in (`burn_in`) it only sets the best teacher mAP."""
        teacher = _number(record, "teacher/map")
        refs: dict[str, float] = {}
        current: dict[str, float] = {}
        if teacher is not None:
            if self.best_map is not None and self.best_map > MIN_BEST_MAP:
                refs["teacher/map"], current["teacher/map"] = self.best_map, teacher
            self.best_map = teacher if self.best_map is None else max(self.best_map, teacher)
        if burn_in:
            return None
        recall = _number(record, "probe/recall50")
        if recall is not None:
            if self.probe_reference is None:
                self.probe_reference = recall
            elif self.probe_reference >= MIN_PROBE_REFERENCE:
                refs["probe/recall50"], current["probe/recall50"] = self.probe_reference, recall
        precision = _number(record, "probe/precision50")
        notes = {"probe/recall50": f" (precision {100 * precision:.0f} %)"} if precision is not None else {}
        return self._judge("eval", EVAL_SIGNALS, refs, current, int(record.get("iter", 0)), notes)

    # ------------------------------------------------------------------ shared
    def _judge(
        self, kind: str, table: dict[str, Signal],
        refs: dict[str, float], current: dict[str, float], iteration: int, notes: Mapping[str, str] | None = None,
    ) -> str | None:
        """The warning line when an episode of `kind` starts here (naming every signal not
        back within `RECOVERY`, `notes` appended to theirs); ends one when all recovered."""
        fired, moved = [], []
        for name, signal in table.items():
            if name in refs and name in current:
                past, unrecovered = signal.state(refs[name], current[name])
                if past:
                    fired.append(name)
                if unrecovered:
                    moved.append(name)
        if self.episode[kind]:
            self.episode[kind] = bool(moved)  # re-armed once every signal has recovered
            return None
        if not fired:
            return None
        self.episode[kind] = True
        self.signals = {n: {"reference": refs[n], "now": current[n]} for n in moved}
        notes = notes or {}
        parts = [table[n].describe(refs[n], current[n]) + notes.get(n, "") for n in moved]
        line = f"collapse warning at iter {iteration}: {', '.join(parts)}; {HINT}"
        self.messages.append(line)
        return line

    def state_dict(self) -> dict[str, Any]:
        return {
            "reference": dict(self.reference), "first": [dict(w) for w in self.first],
            "recent": [dict(w) for w in self.recent], "best_map": self.best_map,
            "probe_reference": self.probe_reference, "episode": dict(self.episode),
            "messages": list(self.messages),
        }

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """A checkpoint without it (an earlier version) starts a fresh reference."""
        if not state:
            return
        self.reference = {k: float(v) for k, v in state["reference"].items()}
        self.first = [dict(w) for w in state["first"]]
        self.recent = [dict(w) for w in state["recent"]]
        self.best_map = state["best_map"]
        self.probe_reference = state["probe_reference"]
        self.episode = {"train": False, "eval": False, **state["episode"]}
        self.messages = list(state["messages"])
