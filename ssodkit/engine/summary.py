"""`summary.json`: how the run ended and what decides whether its numbers can be compared.

The public threads of SSOD codebases keep asking the same things about a result: which
model was evaluated (teacher or student), on which labeled split, with how many GPUs × what
batch, at which thresholds and EMA schedule. The summary answers them in one file, next to
the best and final mAP of each model; `ssodkit report` reads it to refuse silent
comparisons across different splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ssodkit.config import RunConfig
from ssodkit.io import write_json_atomic

SUMMARY_JSON = "summary.json"
ROLES = ("teacher", "student")
THRESHOLD_WORDS = ("thr", "threshold", "tau", "empty_images", "filters")


def split_hash(image_ids: Iterable[int]) -> str:
    """12 hex digits identifying a set of labeled image ids (order does not matter)."""
    text = ",".join(str(i) for i in sorted(int(i) for i in image_ids))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _thresholds(params: Mapping[str, Any]) -> dict[str, Any]:
    """The method parameters that decide which pseudo boxes are kept."""
    return {k: v for k, v in params.items() if any(word in k for word in THRESHOLD_WORDS)}


def repro_card(
    cfg: RunConfig, *, split_hashes: Sequence[str], num_labeled: int, num_unlabeled: int,
    world_size: int, uses_teacher: bool, burn_in_end: int | None,
) -> dict[str, Any]:
    """What decides a result and is easy to get wrong, resolved (as the run used it)."""
    labeled, unlabeled = cfg.train.batch_size, cfg.train.unlabeled_per_step if num_unlabeled else 0
    card: dict[str, Any] = {
        "split_hash": split_hashes[0],
        "split_hash_per_rank": list(split_hashes),
        "labeled_images": num_labeled,
        "unlabeled_images": num_unlabeled,
        "labeled_percent": cfg.data.labeled_percent,
        "fold": cfg.data.fold,
        "world_size": world_size,
        "batch_per_device": {"labeled": labeled, "unlabeled": unlabeled},
        "global_batch": {"labeled": labeled * world_size, "unlabeled": unlabeled * world_size},
        "labeled_unlabeled_ratio": f"{labeled}:{unlabeled}",
        "seed": cfg.train.seed,
        "method": cfg.method.name,
        "detector": cfg.detector.name,
        "thresholds": _thresholds(cfg.method.params),
        "eval_score_thresh": getattr(cfg.detector, "score_thresh", None),
        "iters": cfg.schedule.iters,
        "init_from": str(cfg.train.init_from) if cfg.train.init_from is not None else None,
    }
    if uses_teacher:
        card["ema"] = cfg.teacher.model_dump(mode="json", include={
            "momentum", "gamma", "min_momentum", "interval", "buffers", "schedule_offset",
        })
        card["burn_in"] = {"configured": cfg.teacher.burn_in, "ended_at": burn_in_end}
    return card


def _best_of(evals: Sequence[Mapping[str, Any]], role: str) -> dict[str, Any] | None:
    scored = [(e[f"{role}/map"], e["iter"]) for e in evals if e.get(f"{role}/map") is not None]
    if not scored:
        return None
    best_map, best_iter = max(scored, key=lambda s: (s[0], -s[1]))  # the earliest of equals
    return {"iter": best_iter, "map": best_map}


def build_summary(
    records: Sequence[Mapping[str, Any]], *, status: str, iterations: int, wall_s: float,
    sec_per_iter: float | None, best_eval: Mapping[str, Any] | None, repro: Mapping[str, Any],
) -> dict[str, Any]:
    """The summary from `metrics.jsonl`'s records (so a resumed run's is complete) and the
    trainer's state: best and last mAP of each model, which one best.pt holds, collapse
    warnings, the repro card."""
    evals = [r for r in records if r.get("type") == "eval"]
    last = evals[-1] if evals else {}
    summary: dict[str, Any] = {
        "status": status,
        "iterations": iterations,
        "wall_s": round(wall_s, 1),
        "sec_per_iter": sec_per_iter,
        "best_pt": best_eval,  # {"iter", "role", "map": {role: mAP}}: the model inference on best.pt uses
    }
    for role in ROLES:
        summary[f"best_{role}"] = _best_of(evals, role)
    summary["final"] = {
        "iter": last.get("iter"),
        **{role: {"map": last.get(f"{role}/map"), "ap50": last.get(f"{role}/map50")}
           for role in ROLES if last.get(f"{role}/map") is not None},
    }
    summary["collapse"] = [
        {"iter": r.get("iter"), "message": r.get("message")} for r in records if r.get("type") == "collapse"
    ]
    summary["repro"] = dict(repro)
    return summary


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> Path:
    return write_json_atomic(run_dir / SUMMARY_JSON, summary)


def describe(summary: Mapping[str, Any]) -> list[str]:
    """The lines printed at the end of a run."""
    lines = []
    for role in ROLES:
        best = summary.get(f"best_{role}")
        if best is not None:
            lines.append(f"best {role}: mAP {100 * best['map']:.1f} at iter {best['iter']}")
    wall = summary.get("wall_s")
    if wall is not None:
        lines.append(f"wall time {wall / 60:.1f} min")
    return lines  # collapse warnings are printed in full by the caller
