"""RetinaNet and FCOS adapters around torchvision's heads.

The matching and the losses are written out here (following torchvision's definitions) for
two reasons: per-image loss weights, which torchvision cannot take, and access to the dense
outputs on a known anchor/point grid, which SED, U2PL-det and `stats grad` need.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import boxes as box_ops
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from ssodkit.detectors.backbone import TimmFPN
from ssodkit.detectors.base import DetectorBase, resolve_image_weights, validate_targets
from ssodkit.detectors.config import DetectorConfig
from ssodkit.detectors.dense import BoxCoding, BoxLoss, DenseOutputs, unflatten_levels
from ssodkit.detectors.protocol import Detections, Target

ONE_STAGE_STRIDES = (8, 16, 32)  # P3-P5 from the backbone, P6-P7 from the FPN
IGNORED = det_utils.Matcher.BETWEEN_THRESHOLDS  # `match` value of a cell no term trains (-2)


def _to_anchor_rows(x: Tensor, channels: int) -> Tensor:
    """`[N, A·C, H, W]` → `[N, H·W·A, C]`, torchvision's head layout."""
    n, _, h, w = x.shape
    return x.view(n, -1, channels, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, channels)


class OneStageDetector(DetectorBase):
    """Dense head on P3-P7; subclasses define matching, scoring and the head losses."""

    default_nms_thresh = 0.5
    strides = (8, 16, 32, 64, 128)  # P3-P7
    box_coding: BoxCoding = "deltas"  # what `DenseOutputs` says the box numbers are
    box_loss: BoxLoss = "giou"  # both heads train their boxes with GIoU

    def __init__(
        self, num_classes: int, cfg: DetectorConfig, head: nn.Module, anchor_generator: AnchorGenerator
    ) -> None:
        backbone = TimmFPN(
            cfg.backbone, pretrained=cfg.pretrained, freeze_bn=cfg.backbone_bn_frozen,
            out_channels=cfg.fpn_channels, strides=ONE_STAGE_STRIDES, extra="p6p7",
        )
        super().__init__(num_classes, cfg, backbone)
        self.head = head
        self.anchor_generator = anchor_generator
        self.nms_thresh = cfg.nms_thresh if cfg.nms_thresh is not None else self.default_nms_thresh

    # ----------------------------------------------------------------- dense outputs
    def dense_forward(
        self, images: list[Tensor]
    ) -> tuple[list[tuple[int, int]], dict[str, Tensor], list[Tensor], list[int]]:
        """Head outputs `[N, A_total, C]` over all levels, anchors per image, anchors per level."""
        image_list, features = self.batch(images)
        outputs = self.head_forward(features)
        anchors = self.anchor_generator(image_list, features)
        per_level = [f.shape[-2] * f.shape[-1] * self.anchors_per_location for f in features]
        return image_list.image_sizes, outputs, anchors, per_level

    def dense(self, images: list[Tensor]) -> DenseOutputs:
        """`DenseHead`: the head's raw outputs per level on the padded batch's anchor grid,
        with the head's own loss on them (`detector_loss`, cells can be left out)."""
        image_list, features = self.batch(images)
        outputs = self.head_forward(features)
        anchors_per_image = self.anchor_generator(image_list, features)
        anchors = anchors_per_image[0]
        shapes = [(f.shape[-2], f.shape[-1]) for f in features]
        a = self.anchors_per_location
        per_level = [h * w * a for h, w in shapes]
        ctr = outputs.get("bbox_ctrness")
        unbounded = outputs.get("bbox_regression_unbounded")
        towers = outputs.get("cls_features")
        return DenseOutputs(
            cls_logits=unflatten_levels(outputs["cls_logits"], shapes, a),
            box_regression=unflatten_levels(outputs["bbox_regression"], shapes, a),
            centerness=None if ctr is None else unflatten_levels(ctr, shapes, a),
            anchors=list(anchors.split(per_level)),
            strides=list(self.strides),
            image_sizes=list(image_list.image_sizes),
            box_regression_unbounded=None if unbounded is None else unflatten_levels(unbounded, shapes, a),
            box_coding=self.box_coding,
            box_loss=self.box_loss,
            detector_loss=partial(self.outputs_loss, outputs, anchors_per_image, per_level),
            cls_features=None if towers is None else unflatten_levels(towers, shapes, 1),
            detections=partial(self.outputs_detections, outputs, anchors_per_image, per_level, image_list.image_sizes),
        )

    def head_forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        """The head's outputs, `[N, A_total, C]` per key (subclasses may add keys);
        `cls_features` is `[N, Σ H·W, C]`, one row per location."""
        logits, towers = self.classify(features)
        return {"cls_logits": logits, "bbox_regression": self.head.regression_head(features), "cls_features": towers}

    def classify(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """torchvision's classification head step by step, so that its tower's output is kept
        too (`DenseOutputs.cls_features`); the logits are the head's own, bit for bit."""
        head = self.head.classification_head
        logits, towers = [], []
        for level in features:
            tower = head.conv(level)
            logits.append(_to_anchor_rows(head.cls_logits(tower), head.num_classes))
            towers.append(_to_anchor_rows(tower, tower.shape[1]))
        return torch.cat(logits, dim=1), torch.cat(towers, dim=1)

    @property
    def anchors_per_location(self) -> int:
        return self.anchor_generator.num_anchors_per_location()[0]

    def match(self, targets: list[Target], anchors: list[Tensor], per_level: list[int]) -> list[Tensor]:
        """Per image, the index of the target each anchor is assigned to (-1 bg, -2 ignore)."""
        raise NotImplementedError

    def class_scores(self, outputs: dict[str, Tensor]) -> Tensor:
        """Per-anchor probability of each class, `[N, A_total, K]`."""
        raise NotImplementedError

    def decode(self, regression: Tensor, anchors: Tensor) -> Tensor:
        raise NotImplementedError

    def head_loss(
        self, targets: list[Target], outputs: dict[str, Tensor], anchors: list[Tensor],
        matched: list[Tensor], weights: Tensor, cls_only: bool,
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    # ----------------------------------------------------------------- generic tier
    def loss(
        self,
        images: list[Tensor],
        targets: list[Target],
        *,
        image_weights: Tensor | None = None,
        cls_only: bool = False,
        focal: bool = False,  # one-stage heads already use sigmoid focal loss
    ) -> dict[str, Tensor]:
        validate_targets(targets, len(images), self.num_classes)
        _, outputs, anchors, per_level = self.dense_forward(images)
        return self.outputs_loss(outputs, anchors, per_level, targets, image_weights=image_weights, cls_only=cls_only)

    def outputs_loss(
        self,
        outputs: dict[str, Tensor],
        anchors: list[Tensor],
        per_level: list[int],
        targets: list[Target],
        *,
        image_weights: Tensor | None = None,
        cls_only: bool = False,
        ignore: list[Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """The head's loss on outputs already computed (`DenseLossFn` once the first three
        are bound); `ignore` per level `[N, H, W, A]` marks cells assigned to nothing: they
        add to no term and are no positive of any normaliser."""
        validate_targets(targets, len(anchors), self.num_classes)
        weights = resolve_image_weights(image_weights, len(anchors), anchors[0].device)
        targets = [{"boxes": t["boxes"].float(), "labels": t["labels"]} for t in targets]
        matched = self.match(targets, anchors, per_level)
        if ignore is not None:
            cells = torch.cat([m.flatten(1) for m in ignore], dim=1)
            if cells.shape != (len(anchors), anchors[0].shape[0]):
                raise ValueError(
                    f"ignore covers {tuple(cells.shape)} cells, the outputs have {(len(anchors), anchors[0].shape[0])}"
                )
            matched = [m.masked_fill(c.to(m.device), IGNORED) for m, c in zip(matched, cells)]
        return self.head_loss(targets, outputs, anchors, matched, weights, cls_only)

    @torch.no_grad()
    def predict(self, images: list[Tensor]) -> list[Detections]:
        sizes, outputs, anchors, per_level = self.dense_forward(images)
        return self.outputs_detections(outputs, anchors, per_level, sizes)

    @torch.no_grad()
    def outputs_detections(
        self, outputs: dict[str, Tensor], anchors: list[Tensor], per_level: list[int], sizes: list[tuple[int, int]]
    ) -> list[Detections]:
        """`predict` on outputs already computed (`DenseOutputs.detections` once bound)."""
        scores = self.class_scores(outputs).float()
        regression = outputs["bbox_regression"].float()
        return [
            self._postprocess(scores[i], regression[i], anchors[i], per_level, sizes[i])
            for i in range(len(anchors))
        ]

    def _postprocess(
        self, scores: Tensor, regression: Tensor, anchors: Tensor, per_level: list[int],
        size: tuple[int, int],
    ) -> Detections:
        num_classes = scores.shape[-1]
        boxes_all, scores_all, labels_all, anchor_idx_all = [], [], [], []
        offset = 0
        for n in per_level:
            level_scores = scores[offset : offset + n].flatten()
            keep = torch.where(level_scores > self.cfg.score_thresh)[0]
            top = min(self.cfg.topk_candidates, keep.numel())
            level_scores, order = level_scores[keep].topk(top)
            flat = keep[order]
            anchor_idx = torch.div(flat, num_classes, rounding_mode="floor") + offset
            boxes = self.decode(regression[anchor_idx], anchors[anchor_idx])
            boxes_all.append(box_ops.clip_boxes_to_image(boxes, size))
            scores_all.append(level_scores)
            labels_all.append(flat % num_classes)
            anchor_idx_all.append(anchor_idx)
            offset += n
        boxes, det_scores = torch.cat(boxes_all), torch.cat(scores_all)
        labels, anchor_idx = torch.cat(labels_all), torch.cat(anchor_idx_all)
        keep = box_ops.batched_nms(boxes, det_scores, labels, self.nms_thresh)
        keep = keep[: self.cfg.detections_per_img]
        return Detections(boxes[keep], det_scores[keep], labels[keep], scores[anchor_idx[keep]])


def _trim_convs(branch: nn.Module, n: int) -> None:
    """Keep the first `n` conv(+norm+act) blocks of a torchvision head branch."""
    convs = branch.conv
    layers = list(convs.children())
    per_block = 1 if all(isinstance(c, nn.Sequential) for c in layers) else 3
    branch.conv = nn.Sequential(*layers[: n * per_block])


class RetinaNetDetector(OneStageDetector):
    """RetinaNet (torchvision v2 head: GroupNorm, GIoU box loss), any timm backbone."""

    name = "retinanet"
    default_nms_thresh = 0.5
    default_pseudo_thr = 0.4  # focal-loss scores run lower than softmax ones

    def __init__(self, num_classes: int, cfg: DetectorConfig) -> None:
        base = cfg.anchor_size or 32
        sizes = tuple(
            (s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (base * 2**i for i in range(5))
        )
        anchor_generator = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        head = RetinaNetHead(
            cfg.fpn_channels, anchor_generator.num_anchors_per_location()[0], num_classes,
            norm_layer=partial(nn.GroupNorm, 32),
        )
        _trim_convs(head.classification_head, cfg.head_convs)
        _trim_convs(head.regression_head, cfg.head_convs)
        super().__init__(num_classes, cfg, head, anchor_generator)
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True)

    def match(self, targets: list[Target], anchors: list[Tensor], per_level: list[int]) -> list[Tensor]:
        matched = []
        for anchors_i, target in zip(anchors, targets):
            if target["boxes"].numel() == 0:
                matched.append(torch.full((anchors_i.shape[0],), -1, dtype=torch.int64, device=anchors_i.device))
            else:
                matched.append(self.matcher(box_ops.box_iou(target["boxes"], anchors_i)))
        return matched

    def class_scores(self, outputs: dict[str, Tensor]) -> Tensor:
        return outputs["cls_logits"].sigmoid()

    def decode(self, regression: Tensor, anchors: Tensor) -> Tensor:
        return self.box_coder.decode_single(regression, anchors)

    def head_loss(
        self, targets: list[Target], outputs: dict[str, Tensor], anchors: list[Tensor],
        matched: list[Tensor], weights: Tensor, cls_only: bool,
    ) -> dict[str, Tensor]:
        # `loss_norm: image` (torchvision): each image's loss is normalised by its own
        # foreground count, then averaged over the images with weight > 0. `batch` (mmdet):
        # the weighted sum over the batch divided by the foreground count of those images.
        per_image = self.cfg.loss_norm != "batch"
        if not per_image:
            total_fg = sum(int((m >= 0).sum()) for m, w in zip(matched, weights) if w > 0)
        cls_terms, box_terms = [], []
        for i, (target, match) in enumerate(zip(targets, matched)):
            logits = outputs["cls_logits"][i]
            fg = match >= 0
            num_fg = max(1, int(fg.sum()) if per_image else total_fg)
            cls_target = torch.zeros_like(logits)
            cls_target[fg, target["labels"][match[fg]]] = 1.0
            valid = match != det_utils.Matcher.BETWEEN_THRESHOLDS
            cls_terms.append(
                weights[i] * sigmoid_focal_loss(logits[valid], cls_target[valid], reduction="sum") / num_fg
            )
            if not cls_only:
                fg_idx = torch.where(fg)[0]
                pred = self.decode(outputs["bbox_regression"][i][fg_idx].float(), anchors[i][fg_idx])
                gt = target["boxes"][match[fg_idx]]
                box_terms.append(weights[i] * generalized_box_iou_loss(pred, gt, reduction="sum") / num_fg)
        denom = max(1, int((weights > 0).sum())) if per_image else 1
        losses = {"loss_cls": torch.stack(cls_terms).sum() / denom}
        if not cls_only:
            losses["loss_box"] = torch.stack(box_terms).sum() / denom
        return losses


class FCOSDetector(OneStageDetector):
    """FCOS (torchvision head and centre-sampling assignment), any timm backbone."""

    name = "fcos"
    default_nms_thresh = 0.6
    # MixPL's FCOS τ is 0.3 on mmdet's score cls · centerness; this score (torchvision's) is
    # √(cls · centerness), so the same boxes pass at √0.3 ≈ 0.548.
    default_pseudo_thr = math.sqrt(0.3)
    center_sampling_radius = 1.5
    box_coding = "ltrb"

    def __init__(self, num_classes: int, cfg: DetectorConfig) -> None:
        base = cfg.anchor_size or 8
        sizes = tuple((base * 2**i,) for i in range(5))
        anchor_generator = AnchorGenerator(sizes, ((1.0,),) * len(sizes))
        head = FCOSHead(cfg.fpn_channels, 1, num_classes, num_convs=cfg.head_convs)
        super().__init__(num_classes, cfg, head, anchor_generator)
        self.box_coder = det_utils.BoxLinearCoder(normalize_by_size=True)

    def match(self, targets: list[Target], anchors: list[Tensor], per_level: list[int]) -> list[Tensor]:
        """FCOS assignment: inside the box, near its centre, and in the level's size range."""
        matched = []
        for anchors_i, target in zip(anchors, targets):
            gt = target["boxes"]
            if gt.numel() == 0:
                matched.append(torch.full((anchors_i.shape[0],), -1, dtype=torch.int64, device=anchors_i.device))
                continue
            centers = (anchors_i[:, :2] + anchors_i[:, 2:]) / 2
            anchor_sizes = anchors_i[:, 2] - anchors_i[:, 0]
            gt_centers = (gt[:, :2] + gt[:, 2:]) / 2
            match = (centers[:, None] - gt_centers[None]).abs().max(dim=2).values < (
                self.center_sampling_radius * anchor_sizes[:, None]
            )
            x, y = centers[:, 0:1], centers[:, 1:2]
            dist = torch.stack([x - gt[None, :, 0], y - gt[None, :, 1], gt[None, :, 2] - x, gt[None, :, 3] - y], dim=2)
            match &= dist.min(dim=2).values > 0
            lower, upper = anchor_sizes * 4, anchor_sizes * 8
            lower[: per_level[0]] = 0
            upper[-per_level[-1] :] = float("inf")
            max_dist = dist.max(dim=2).values
            match &= (max_dist > lower[:, None]) & (max_dist < upper[:, None])
            areas = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
            score = match.float() * (1e8 - areas[None])  # smallest box wins
            best, idx = score.max(dim=1)
            idx[best < 1e-5] = -1
            matched.append(idx)
        return matched

    def head_forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        """torchvision's FCOS head, step by step, so the distances before its ReLU are kept
        too (`bbox_regression_unbounded`, which SED distils); outputs otherwise identical."""
        regression_head = self.head.regression_head
        unbounded, centerness = [], []
        for level in features:
            tower = regression_head.conv(level)
            unbounded.append(_to_anchor_rows(regression_head.bbox_reg(tower), 4))
            centerness.append(_to_anchor_rows(regression_head.bbox_ctrness(tower), 1))
        raw = torch.cat(unbounded, dim=1)
        logits, towers = self.classify(features)
        return {
            "cls_logits": logits,
            "cls_features": towers,
            "bbox_regression": F.relu(raw),
            "bbox_ctrness": torch.cat(centerness, dim=1),
            "bbox_regression_unbounded": raw,
        }

    def class_scores(self, outputs: dict[str, Tensor]) -> Tensor:
        return torch.sqrt(outputs["cls_logits"].sigmoid() * outputs["bbox_ctrness"].sigmoid())

    def decode(self, regression: Tensor, anchors: Tensor) -> Tensor:
        return self.box_coder.decode(regression, anchors)

    def head_loss(
        self, targets: list[Target], outputs: dict[str, Tensor], anchors: list[Tensor],
        matched: list[Tensor], weights: Tensor, cls_only: bool,
    ) -> dict[str, Tensor]:
        # torchvision normalises by the foreground count of the whole batch; weighted: by
        # the foreground count of the images with weight > 0.
        logits = outputs["cls_logits"]
        match = torch.stack(matched)
        fg = match >= 0
        gt_labels = torch.stack(
            [t["labels"][m.clamp(min=0)] if t["labels"].numel() else m.new_zeros(m.shape) for t, m in zip(targets, matched)]
        )
        cls_target = torch.zeros_like(logits)
        cls_target[fg, gt_labels[fg]] = 1.0
        per_anchor = sigmoid_focal_loss(logits, cls_target, reduction="none").sum(-1)
        per_anchor = per_anchor.masked_fill(match == IGNORED, 0.0)  # FCOS's own matching ignores none
        num_fg = max(1.0, float((fg & (weights[:, None] > 0)).sum()))
        losses = {"loss_cls": (weights[:, None] * per_anchor).sum() / num_fg}
        if cls_only:
            return losses
        gt_boxes = torch.stack(
            [t["boxes"][m.clamp(min=0)] if t["boxes"].numel() else t["boxes"].new_zeros((m.numel(), 4)) for t, m in zip(targets, matched)]
        )
        all_anchors = torch.stack(anchors)
        pixel_weights = weights[:, None].expand_as(fg)[fg]
        pred = self.decode(outputs["bbox_regression"].float(), all_anchors)
        giou = generalized_box_iou_loss(pred[fg], gt_boxes[fg], reduction="none")
        reg = self.box_coder.encode(all_anchors, gt_boxes)[fg]
        lr, tb = reg[:, [0, 2]], reg[:, [1, 3]]
        ctr_target = torch.sqrt(
            (lr.min(-1).values / lr.max(-1).values) * (tb.min(-1).values / tb.max(-1).values)
        )
        ctr = F.binary_cross_entropy_with_logits(
            outputs["bbox_ctrness"].squeeze(-1)[fg].float(), ctr_target, reduction="none"
        )
        losses["loss_box"] = (pixel_weights * giou).sum() / num_fg
        losses["loss_ctr"] = (pixel_weights * ctr).sum() / num_fg
        return losses
