"""Device, precision and model construction shared by train, evaluate and pseudolabel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssodkit.config import RunConfig
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


def load_model_from_checkpoint(
    path: Path, *, weights: str = "teacher", device: torch.device | str = "cpu"
) -> tuple[nn.Module, RunConfig, list[str]]:
    """The model of a checkpoint (teacher weights when it has a teacher), its config, classes."""
    from ssodkit.engine.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    cfg = RunConfig.model_validate(state["config"])
    cfg.detector.pretrained = False  # the checkpoint holds the weights; never download
    classes: list[str] = list(state["classes"])
    model = build_model(cfg, len(classes))
    if weights not in ("teacher", "student"):
        raise SsodkitError(f"weights must be 'teacher' or 'student', got {weights!r}")
    chosen: dict[str, Any] | None = state.get(weights) if weights == "teacher" else state["student"]
    model.load_state_dict(chosen if chosen is not None else state["student"])
    return model.to(device).eval(), cfg, classes
