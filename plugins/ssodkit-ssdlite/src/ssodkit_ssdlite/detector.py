"""torchvision's SSDlite320-MobileNetV3 behind ssodkit's `Detector` protocol (generic tier).

torchvision's `SSD.forward` resizes every image to 320×320, averages its loss over the
batch and returns boxes without class probabilities; ssodkit's protocol needs the opposite
on each point (the data pipeline owns geometry, images carry weights, detections carry
per-class probabilities). So the SSD's parts — MobileNetV3 backbone + extra layers, SSDlite
head, default-box generator, matcher, box coder — are kept, and the few lines around them
are written here:

- images arrive as float RGB in [0, 1] at the size the view chose; they are normalised
  with SSDlite's own mean/std (0.5: [0, 1] → [-1, 1]) and padded (with the mean colour) to
  a multiple of 32, never resized, so predictions are in the input's pixels by
  construction. The default boxes are fractions of the padded batch, as in torchvision;
- the loss is torchvision's (IoU-0.5 matching, smooth-L1 on (10, 10, 5, 5)-encoded boxes,
  cross-entropy with 3:1 hard-negative mining per image), with per-image weights:
  each image's sums are scaled by its weight and divided by the foreground count of the
  images whose weight is > 0, so a weight-0 image adds exactly nothing;
- the last extra levels are 1×1 at any input size, where BatchNorm fails on a batch of one
  image in training (torchvision trains SSDlite with batches of 32; ssodkit's methods may
  call `loss` on one image): there it normalises with its running statistics instead;
- `cls_only` drops the box term; `focal` swaps the cross-entropy for softmax focal loss
  (γ = 1.5, Unbiased Teacher's) on the same mined anchors.

There is no dense or two-stage capability: methods that need one (SED, Soft Teacher) are
refused at start-up by ssodkit's `check_capabilities`.
"""

from __future__ import annotations

from functools import partial
from typing import Any
from urllib.error import URLError

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import MobileNet_V3_Large_Weights
from torchvision.models.detection import ssdlite320_mobilenet_v3_large
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops import boxes as box_ops

from ssodkit.detectors import (
    Detections,
    DetectorConfig,
    NormalizePadTransform,
    Target,
    resolve_image_weights,
    validate_targets,
)
from ssodkit.errors import ConfigError, SsodkitError

IMAGE_MEAN = [0.5, 0.5, 0.5]  # torchvision's SSDlite rescales [0, 1] to [-1, 1]
IMAGE_STD = [0.5, 0.5, 0.5]
BACKBONE = "mobilenet_v3_large"
FOCAL_GAMMA = 1.5
NEG_TO_POS_RATIO = 3


def _accepted_backbones() -> set[str]:
    """The fixed backbone's name, and the config's default (which every run carries)."""
    return {BACKBONE, str(DetectorConfig.model_fields["backbone"].default)}


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Every `BatchNorm2d` below `module` replaced by a `FrozenBatchNorm2d` with its values."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                frozen.weight.copy_(child.weight)
                frozen.bias.copy_(child.bias)
                frozen.running_mean.copy_(child.running_mean)  # type: ignore[arg-type]
                frozen.running_var.copy_(child.running_var)  # type: ignore[arg-type]
            setattr(module, name, frozen)
        else:
            freeze_batch_norm(child)
    return module


class BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that normalises with its running statistics (and leaves them alone) when a
    training batch has one value per channel, instead of raising (see the module doc)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def softmax_focal_loss(logits: Tensor, labels: Tensor, gamma: float = FOCAL_GAMMA) -> Tensor:
    """Per-anchor (1 − p_t)^γ · CE: what `focal=True` asks of a cross-entropy head."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    return (1.0 - torch.exp(-ce)) ** gamma * ce


class SSDLiteDetector(nn.Module):
    """SSDlite320-MobileNetV3-Large (random init; ImageNet backbone with `pretrained`)."""

    name = "ssdlite"
    default_pseudo_thr = 0.5  # softmax scores over K + 1 classes
    default_nms_thresh = 0.55  # torchvision's SSDlite
    forward_modes = ("loss", "predict")

    def __init__(self, num_classes: int, cfg: DetectorConfig) -> None:
        super().__init__()
        if cfg.backbone not in _accepted_backbones():
            raise ConfigError(
                f"detector 'ssdlite' has a fixed {BACKBONE} backbone; detector.backbone "
                f"'{cfg.backbone}' cannot be used (leave it unset or set '{BACKBONE}')"
            )
        weights_backbone = MobileNet_V3_Large_Weights.IMAGENET1K_V1 if cfg.pretrained else None
        try:
            ssd = ssdlite320_mobilenet_v3_large(
                weights=None, weights_backbone=weights_backbone, num_classes=num_classes + 1,
                norm_layer=partial(BatchNorm2d, eps=0.001, momentum=0.03),  # torchvision's values
            )
        except (OSError, RuntimeError, URLError) as exc:
            if cfg.pretrained:
                raise SsodkitError(
                    f"could not load ImageNet weights for ssdlite's {BACKBONE}: {exc}. "
                    "Check the network (or the torch hub cache) or drop --pretrained."
                ) from exc
            raise
        self.num_classes = num_classes
        self.cfg = cfg
        self.backbone = freeze_batch_norm(ssd.backbone) if cfg.backbone_bn_frozen else ssd.backbone
        self.head = ssd.head
        self.anchor_generator = ssd.anchor_generator
        self.box_coder = ssd.box_coder
        self.matcher = ssd.proposal_matcher
        # `transform.image_mean` is also what MixPL fills mixed canvases with.
        self.transform = NormalizePadTransform(IMAGE_MEAN, IMAGE_STD, size_divisible=32)
        self.nms_thresh = cfg.nms_thresh if cfg.nms_thresh is not None else self.default_nms_thresh

    def forward(self, mode: str, *args: Any, **kwargs: Any) -> Any:
        """One entry point per protocol call, so DDP sees every call a method makes."""
        if mode not in self.forward_modes:
            raise ValueError(f"detector 'ssdlite' has no mode {mode!r} (generic tier: loss, predict)")
        return getattr(self, mode)(*args, **kwargs)

    def _run(self, images: list[Tensor]) -> tuple[list[tuple[int, int]], dict[str, Tensor], list[Tensor]]:
        """Image sizes before padding, head outputs `[N, A, ·]`, default boxes per image."""
        image_list, _ = self.transform(images, None)
        features = list(self.backbone(image_list.tensors).values())
        outputs = self.head(features)
        anchors = self.anchor_generator(image_list, features)
        return list(image_list.image_sizes), outputs, anchors

    # ----------------------------------------------------------------- generic tier
    def loss(
        self,
        images: list[Tensor],
        targets: list[Target],
        *,
        image_weights: Tensor | None = None,
        cls_only: bool = False,
        focal: bool = False,
    ) -> dict[str, Tensor]:
        """torchvision's SSD loss with per-image weights, `cls_only` and `focal` (module doc)."""
        validate_targets(targets, len(images), self.num_classes)
        _, outputs, anchors = self._run(images)
        device = anchors[0].device
        weights = resolve_image_weights(image_weights, len(images), device)
        cls_terms, box_terms, num_fg = [], [], 0
        for i, (target, anchors_i) in enumerate(zip(targets, anchors)):
            gt_boxes, gt_labels = target["boxes"].float().to(device), target["labels"].to(device)
            if gt_boxes.numel():
                matched = self.matcher(box_ops.box_iou(gt_boxes, anchors_i))
            else:
                matched = torch.full((anchors_i.shape[0],), -1, dtype=torch.int64, device=device)
            fg = torch.where(matched >= 0)[0]
            cls_target = torch.zeros(anchors_i.shape[0], dtype=torch.int64, device=device)
            cls_target[fg] = gt_labels[matched[fg]] + 1  # 0 is background
            logits = outputs["cls_logits"][i].float()
            per_anchor = softmax_focal_loss(logits, cls_target) if focal else F.cross_entropy(
                logits, cls_target, reduction="none"
            )
            # hard negatives: the 3·|fg| background anchors with the highest loss
            num_neg = min(NEG_TO_POS_RATIO * fg.numel(), anchors_i.shape[0] - fg.numel())
            background = per_anchor.detach().clone()
            background[fg] = -float("inf")
            negatives = background.topk(num_neg).indices
            cls_terms.append(weights[i] * (per_anchor[fg].sum() + per_anchor[negatives].sum()))
            if not cls_only:
                encoded = self.box_coder.encode_single(gt_boxes[matched[fg]], anchors_i[fg])
                regression = outputs["bbox_regression"][i][fg].float()
                box_terms.append(weights[i] * F.smooth_l1_loss(regression, encoded, reduction="sum"))
            if weights[i] > 0:
                num_fg += fg.numel()
        norm = max(1, num_fg)
        losses = {"loss_cls": torch.stack(cls_terms).sum() / norm}
        if not cls_only:
            losses["loss_box"] = torch.stack(box_terms).sum() / norm
        return losses

    @torch.no_grad()
    def predict(self, images: list[Tensor]) -> list[Detections]:
        """Per image: top candidates over (box, class), clipped, class-wise NMS, with probs."""
        sizes, outputs, anchors = self._run(images)
        probs = F.softmax(outputs["cls_logits"].float(), dim=-1)[..., 1:]
        regression = outputs["bbox_regression"].float()
        return [self._postprocess(probs[i], regression[i], anchors[i], sizes[i]) for i in range(len(images))]

    def _postprocess(self, probs: Tensor, regression: Tensor, anchors: Tensor, size: tuple[int, int]) -> Detections:
        scores = probs.flatten()
        candidates = torch.where(scores > self.cfg.score_thresh)[0]
        scores, order = scores[candidates].topk(min(self.cfg.topk_candidates, candidates.numel()))
        flat = candidates[order]
        anchor_idx = torch.div(flat, self.num_classes, rounding_mode="floor")
        labels = flat % self.num_classes
        boxes = self.box_coder.decode_single(regression[anchor_idx], anchors[anchor_idx])
        boxes = box_ops.clip_boxes_to_image(boxes, size)
        keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.cfg.detections_per_img]
        return Detections(boxes[keep], scores[keep], labels[keep], probs[anchor_idx[keep]])
