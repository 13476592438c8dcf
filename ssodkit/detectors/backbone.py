"""timm backbones with a torchvision FPN on top.

Any timm model that supports `features_only=True` works; we pick its feature maps by stride
so that the detector's anchor grid is the same whatever the backbone. With `freeze_bn` the
backbone's BatchNorm layers become frozen ones (running statistics and affine as buffers, as
in torchvision's detection references and mmdet's `norm_eval`); the FPN has no norm layers and
the heads use GroupNorm or none, so the backbone is the only place BatchNorm lives.
"""

from __future__ import annotations

from collections import OrderedDict

import timm
from timm.layers import freeze_batch_norm_2d
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from ssodkit.errors import ConfigError, SsodkitError


def _create_timm_features(name: str, pretrained: bool) -> nn.Module:
    if not timm.is_model(name.split(".")[0]):
        close = timm.list_models(f"*{name.split('.')[0]}*")[:5]
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ConfigError(f"detector.backbone: unknown timm model '{name}'{hint}")
    try:
        return timm.create_model(name, pretrained=pretrained, features_only=True)
    except (OSError, RuntimeError) as exc:
        if pretrained:
            raise SsodkitError(
                f"could not load pretrained weights for backbone '{name}': {exc}. "
                "Check the network (or the Hugging Face cache) or drop --pretrained."
            ) from exc
        raise
    except Exception as exc:  # timm raises plain errors for models without features_only
        raise ConfigError(
            f"detector.backbone: '{name}' cannot serve as a feature extractor: {exc}"
        ) from exc


class TimmFPN(nn.Module):
    """Backbone + FPN returning `OrderedDict[str, Tensor]` from the finest level up.

    `strides` picks backbone levels (e.g. (8, 16, 32) for one-stage heads, (4, 8, 16, 32)
    for Faster R-CNN); `extra` adds the P6/P7 or max-pool level torchvision's heads expect.
    """

    def __init__(
        self,
        name: str,
        *,
        pretrained: bool,
        out_channels: int,
        strides: tuple[int, ...],
        extra: str,
        freeze_bn: bool = False,
    ) -> None:
        super().__init__()
        body = _create_timm_features(name, pretrained)
        if freeze_bn:  # after the weights are loaded: the frozen statistics are ImageNet's
            body = freeze_batch_norm_2d(body)
        reductions = list(body.feature_info.reduction())
        missing = [s for s in strides if s not in reductions]
        if missing:
            raise ConfigError(
                f"detector.backbone: '{name}' has no feature map at stride(s) {missing} "
                f"(it has {reductions})"
            )
        # Every level is on the forward path anyway, so selecting in forward costs nothing.
        self.indices = [reductions.index(s) for s in strides]
        channels = list(body.feature_info.channels())
        self.body = body
        extra_block: ExtraFPNBlock
        if extra == "p6p7":
            extra_block = LastLevelP6P7(out_channels, out_channels)
        elif extra == "pool":
            extra_block = LastLevelMaxPool()
        else:
            raise ValueError(f"unknown extra FPN block {extra!r}")
        self.fpn = FeaturePyramidNetwork(
            [channels[i] for i in self.indices], out_channels, extra_blocks=extra_block
        )
        self.out_channels = out_channels
        self.strides = tuple(strides)
        cfg = body.pretrained_cfg
        self.image_mean = list(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.image_std = list(cfg.get("std", (0.229, 0.224, 0.225)))

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(k), feats[i]) for k, i in enumerate(self.indices)))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

