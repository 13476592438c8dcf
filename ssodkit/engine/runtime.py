"""Device, precision and model construction shared by train, evaluate and pseudolabel."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ssodkit.config import RunConfig, migrate_legacy
from ssodkit.errors import ConfigError, SsodkitError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device = {name!r}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r}: CUDA is not available on this machine")
    return device


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision. AMP is a CUDA feature here."""
    if device.type != "cuda" or amp == "off":
        if amp in ("fp16", "bf16") and device.type != "cuda":
            raise ConfigError(f"train.amp = {amp!r}: mixed precision needs a CUDA device")
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]


def build_model(cfg: RunConfig, num_classes: int) -> nn.Module:
    from ssodkit.detectors import build_detector

    return build_detector(cfg.detector, num_classes)


WEIGHTS = ("auto", "teacher", "student")


@dataclass
class CheckpointModel:
    """A checkpoint's model, ready for inference, and what describes it."""

    model: nn.Module
    cfg: RunConfig
    classes: list[str]
    index_to_cat_id: list[int]
    weights: str  # the weights actually loaded: "teacher" or "student"
    note: str = ""  # why, where it was not simply asked for: "the checkpoint has no teacher", "best at iter 3000: …"
    has_teacher: bool = False


# Detector keys that a checkpoint's weights do not depend on: `train.init_from` may differ in them.
# (`freeze_bn` changes which tensors train, not which exist: a frozen BatchNorm keeps the same names.)
_WEIGHTS_AGNOSTIC = {"pretrained", "freeze_bn", "score_thresh", "nms_thresh", "detections_per_img", "topk_candidates"}


def checkpoint_config(state: dict[str, Any], where: str) -> tuple[RunConfig, list[str]]:
    """A checkpoint's run config and class names, or one line saying they cannot be read."""
    try:
        return RunConfig.model_validate(migrate_legacy(state["config"])), [str(c) for c in state["classes"]]
    except Exception as exc:  # noqa: BLE001 - a config from another version
        raise SsodkitError(f"{where}: cannot read its config or classes ({type(exc).__name__})") from None


def inference_weights(state: dict[str, Any], weights: str = "auto") -> tuple[str, str]:
    """Which weights of a checkpoint to use, and a note saying why when it was not simply asked for.

    `auto` takes the model a best.pt records as the better one at its evaluation
    (`best_role`), else the teacher; `teacher` and `auto` fall back to the student when the
    checkpoint has no teacher (a supervised run); `student` is the student."""
    if weights not in WEIGHTS:
        raise SsodkitError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    from ssodkit.engine.checkpoint import BestEval

    if weights == "auto":
        best = BestEval.from_state(state.get("best_eval"))
        role = state.get("best_role")
        if role in ("teacher", "student") and state.get(role) is not None:
            if best is not None and best.role == role:
                return role, f"best at iter {best.iteration}: {best.scores()}"
            return role, "the better model at best.pt's evaluation"
        weights = "teacher"
    if weights == "teacher" and state.get("teacher") is None:
        return "student", "the checkpoint has no teacher"
    return weights, ""


class InitialWeights(NamedTuple):
    """What `train.init_from` gives a run: the checkpoint's config, the detector weights,
    which they are (`student weights (best at iter …)`), and how many iterations the
    student behind them has trained (its run's and those before it)."""

    source: RunConfig
    weights: dict[str, torch.Tensor]
    used: str
    trained_iterations: int


def initial_weights(path: Path, cfg: RunConfig, classes: list[str]) -> InitialWeights:
    """The config and detector weights of the checkpoint `train.init_from` names, checked
    against this run's detector and classes so that a mismatch is one line, not a
    load_state_dict traceback, and which they are (`student weights (best at iter …)`): the
    ones inference would use (`auto`), i.e. the model a best.pt records as the better one,
    else the teacher, else the student."""
    from ssodkit.engine.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    source, source_classes = checkpoint_config(state, f"train.init_from = {path}")
    if source_classes != classes:
        raise ConfigError(f"train.init_from = {path}: its classes {source_classes} differ from this run's {classes}")
    mine = cfg.detector.model_dump(exclude=_WEIGHTS_AGNOSTIC)
    theirs = source.detector.model_dump(exclude=_WEIGHTS_AGNOSTIC)
    differ = sorted(k for k in mine if mine[k] != theirs.get(k))
    if differ:
        pairs = ", ".join(f"{k} {theirs.get(k)!r} vs {mine[k]!r}" for k in differ)
        raise ConfigError(f"train.init_from = {path}: detector differs from this run's ({pairs})")
    used, note = inference_weights(state, "auto")
    trained = int(state.get("iteration", 0)) + (source.teacher.schedule_offset or 0)
    return InitialWeights(source, state[used], f"{used} weights{f' ({note})' if note else ''}", trained)


def resolve_schedule_offset(cfg: RunConfig, init: InitialWeights | None = None) -> RunConfig:
    """The run config with `teacher.schedule_offset: null` replaced by the value used (the
    iterations the `init_from` student trained, else 0), recorded in `config.yaml` so that a
    resumed run keeps it."""
    if cfg.teacher.schedule_offset is not None:
        return cfg
    offset = init.trained_iterations if init is not None else 0
    return cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"schedule_offset": offset})})


def resolve_freeze_bn(cfg: RunConfig, init_source: RunConfig | None = None) -> RunConfig:
    """The run config with `detector.freeze_bn: null` replaced by the value used — the one
    place it is resolved, at start-up, so that `config.yaml` and every checkpoint record it.

    Frozen when the backbone starts from trained weights: ImageNet's (`pretrained`), or, with
    `train.init_from`, as that checkpoint's run had it (its weights replace ImageNet's, so a
    supervised run's frozen BatchNorm stays frozen in the SSOD run that continues it)."""
    detector = cfg.detector
    if detector.freeze_bn is not None:
        return cfg
    frozen = init_source.detector.backbone_bn_frozen if init_source is not None else detector.pretrained
    return cfg.model_copy(update={"detector": detector.model_copy(update={"freeze_bn": frozen})})


def load_model_from_checkpoint(
    path: Path, *, weights: str = "auto", device: torch.device | str = "cpu"
) -> CheckpointModel:
    """The model of a checkpoint, read once: `weights` as `inference_weights` resolves it
    (by default best.pt's better model, else the teacher, else the student)."""
    from ssodkit.engine.checkpoint import load_checkpoint

    return model_from_checkpoint_state(load_checkpoint(path), path, weights=weights, device=device)


def model_from_checkpoint_state(
    state: dict[str, Any], path: Path, *, weights: str = "auto", device: torch.device | str = "cpu"
) -> CheckpointModel:
    """The model of an already-read checkpoint, so that a caller needing both the teacher
    and the student reads a large file once; `path` only names it in errors."""
    used, note = inference_weights(state, weights)
    cfg, classes = checkpoint_config(state, str(path))
    cfg.detector.pretrained = False  # the checkpoint holds the weights; never download
    cat_ids = [int(c) for c in state.get("index_to_cat_id") or range(1, len(classes) + 1)]
    if len(cat_ids) != len(classes):
        raise SsodkitError(f"{path}: {len(classes)} classes but {len(cat_ids)} category ids")
    model = build_model(cfg, len(classes))
    model.load_state_dict(state[used])
    return CheckpointModel(
        model.to(device).eval(), cfg, classes, cat_ids, used, note, has_teacher=state.get("teacher") is not None
    )
