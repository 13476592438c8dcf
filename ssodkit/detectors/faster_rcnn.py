"""Faster R-CNN (FPN) adapter around torchvision's RPN and RoI heads.

The RPN and RoI losses are written out (following torchvision's definitions: balanced
sampling, smooth-L1 with beta 1/9) so that they take per-image weights and, for Unbiased
Teacher, a softmax focal loss for RoI classification. torchvision's class 0 is background;
ssodkit's labels 0..K-1 are shifted by one on the way in and out.

It implements both capability protocols (`detectors/protocol.py`): `TwoStage`, the pipeline
cut at its seams so that a method can reuse one feature pass for several jobs: `features` →
`rpn_forward` / `rpn_loss` / `proposals` → `sample_rois` → `roi_losses` (per-RoI weights),
plus the teacher-side `detect`, `roi_cls_probs` and `refine_boxes` on boxes of the caller's
choosing; and `DenseHead`, whose dense outputs are the RPN's. RoI labels returned by
`sample_rois` and columns of `roi_cls_probs` use the head's convention: 0 = background,
k+1 = ssodkit class k.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

from ssodkit.detectors.backbone import TimmFPN
from ssodkit.detectors.base import (
    DetectorBase,
    per_sample_weights,
    resolve_image_weights,
    validate_targets,
)
from ssodkit.detectors.config import DetectorConfig
from ssodkit.detectors.dense import DenseOutputs
from ssodkit.detectors.protocol import Detections, Target

TWO_STAGE_STRIDES = (4, 8, 16, 32)  # P2-P5, plus a max-pooled P6 for the RPN
FOCAL_GAMMA = 1.5  # Unbiased Teacher's official value


def softmax_focal_loss(logits: Tensor, labels: Tensor, gamma: float = FOCAL_GAMMA) -> Tensor:
    """Per-sample (1 - p_t)^gamma * CE, as in Unbiased Teacher's RoI head."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    p_t = torch.exp(-ce)
    return (1.0 - p_t) ** gamma * ce


class FasterRCNNDetector(DetectorBase):
    name = "faster_rcnn"
    default_pseudo_thr = 0.7  # softmax (cross-entropy) scores
    strides = (4, 8, 16, 32, 64)  # P2-P5 and the max-pooled P6

    def __init__(self, num_classes: int, cfg: DetectorConfig) -> None:
        backbone = TimmFPN(
            cfg.backbone, pretrained=cfg.pretrained, freeze_bn=cfg.backbone_bn_frozen,
            out_channels=cfg.fpn_channels, strides=TWO_STAGE_STRIDES, extra="pool",
        )
        super().__init__(num_classes, cfg, backbone)
        base = cfg.anchor_size or 32
        anchor_generator = AnchorGenerator(
            tuple((base * 2**i,) for i in range(5)), ((0.5, 1.0, 2.0),) * 5
        )
        self.rpn = RegionProposalNetwork(
            anchor_generator,
            RPNHead(cfg.fpn_channels, anchor_generator.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
            pre_nms_top_n={"training": 2000, "testing": 1000},
            post_nms_top_n={"training": 2000, "testing": 1000}, nms_thresh=0.7,
        )
        roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
        self.roi_heads = RoIHeads(
            roi_pool,
            TwoMLPHead(cfg.fpn_channels * 7 * 7, 1024),
            FastRCNNPredictor(1024, num_classes + 1),
            fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=512, positive_fraction=0.25,
            bbox_reg_weights=None, score_thresh=cfg.score_thresh,
            nms_thresh=cfg.nms_thresh if cfg.nms_thresh is not None else 0.5,
            detections_per_img=cfg.detections_per_img,
        )

    def features(
        self, images: list[Tensor], size_divisible: int | None = None
    ) -> tuple[ImageList, OrderedDict[str, Tensor]]:
        """Normalised, padded batch and its named FPN levels (what the RPN and RoI pooling take).

        `size_divisible` pads to a multiple of it instead of the detector's 32 (it must be a
        multiple of 32), so that a method can line up the grids of two scales of one batch."""
        if size_divisible is None:
            image_list, _ = self.transform(images, None)
        else:
            image_list = self.transform.pad(images, size_divisible)
        return image_list, self.backbone(image_list.tensors)

    @staticmethod
    def _shift(targets: list[Target]) -> list[Target]:
        return [{"boxes": t["boxes"].float(), "labels": t["labels"] + 1} for t in targets]

    # ----------------------------------------------------------------- RPN
    def rpn_forward(self, image_list, features: dict[str, Tensor]):
        """Objectness and deltas over all anchors, anchors per image, and the proposals."""
        feats = list(features.values())
        objectness, deltas = self.rpn.head(feats)
        anchors = self.rpn.anchor_generator(image_list, feats)
        per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, _ = self.rpn.filter_proposals(proposals, objectness, image_list.image_sizes, per_level)
        return objectness, deltas, anchors, boxes

    def rpn_dense(self, image_list: ImageList, features: dict[str, Tensor]) -> DenseOutputs:
        """The RPN as `DenseOutputs`: class-agnostic objectness (K = 1) and anchor deltas."""
        feats = list(features.values())
        objectness, deltas = self.rpn.head(feats)
        anchors = self.rpn.anchor_generator(image_list, feats)[0]
        a = self.rpn.anchor_generator.num_anchors_per_location()[0]
        shapes = [(o.shape[-2], o.shape[-1]) for o in objectness]
        n = len(image_list.image_sizes)
        # torchvision's layout: [N, A·C, H, W] → [N, H, W, A, C]
        cls = [o.view(n, a, 1, h, w).permute(0, 3, 4, 1, 2) for o, (h, w) in zip(objectness, shapes)]
        box = [d.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2) for d, (h, w) in zip(deltas, shapes)]
        return DenseOutputs(
            cls_logits=cls, box_regression=box, centerness=None,
            anchors=list(anchors.split([h * w * a for h, w in shapes])),
            strides=list(self.strides), image_sizes=list(image_list.image_sizes),
            box_loss="smooth_l1", sampled_per_image=self.rpn.fg_bg_sampler.batch_size_per_image,
            positive_fraction=self.rpn.fg_bg_sampler.positive_fraction,
        )

    def dense(self, images: list[Tensor]) -> DenseOutputs:
        """`DenseHead`: the RPN's dense outputs, from a feature pass of its own."""
        image_list, features = self.features(images)
        return self.rpn_dense(image_list, features)

    def proposals(self, image_list: ImageList, features: dict[str, Tensor]) -> list[Tensor]:
        """Post-NMS RPN proposals per image (no gradient flows into them)."""
        return self.rpn_forward(image_list, features)[3]

    def rpn_loss(
        self, objectness: Tensor, deltas: Tensor, anchors: list[Tensor], targets: list[Target], weights: Tensor,
        cls_only: bool,
    ) -> dict[str, Tensor]:
        """Objectness and box loss with per-image weights; class-agnostic (labels are ignored)."""
        labels, regression_targets = self.rpn_targets(anchors, targets)
        return self.rpn_loss_assigned(objectness, deltas, labels, regression_targets, weights, cls_only)

    @torch.no_grad()
    def rpn_targets(self, anchors: list[Tensor], targets: list[Target]) -> tuple[list[Tensor], list[Tensor]]:
        """The RPN's anchor assignment, per image: labels (1 object, 0 background, −1 ignored;
        IoU 0.7 / 0.3 with low-quality matches) and the encoded box of each anchor's match.
        Class-agnostic: target labels are ignored."""
        boxes = [{"boxes": t["boxes"].float()} for t in targets]
        labels, matched_gt = self.rpn.assign_targets_to_anchors(anchors, boxes)
        return labels, list(self.rpn.box_coder.encode(matched_gt, anchors))

    def rpn_loss_assigned(
        self, objectness: Tensor, deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor],
        weights: Tensor, cls_only: bool,
    ) -> dict[str, Tensor]:
        """`rpn_loss` for anchors already assigned (`rpn_targets`): balanced sampling (256 per
        image, half positive), BCE and smooth-L1 over the sampled anchors, per-image weights.
        The outputs may come from another feature pass than the anchors (an aligned grid)."""
        pos_masks, neg_masks = self.rpn.fg_bg_sampler(labels)
        w = per_sample_weights(weights, [a.shape[0] for a in labels])
        pos = torch.where(torch.cat(pos_masks))[0]
        sampled = torch.cat([pos, torch.where(torch.cat(neg_masks))[0]])
        sampled = sampled[w[sampled] > 0]
        pos = pos[w[pos] > 0]
        denom = max(1, sampled.numel())
        labels_all = torch.cat(labels)
        obj = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled].float(), labels_all[sampled], reduction="none"
        )
        losses = {"loss_rpn_cls": (w[sampled] * obj).sum() / denom}
        if not cls_only:
            box = F.smooth_l1_loss(
                deltas[pos].float(), torch.cat(regression_targets)[pos], beta=1 / 9, reduction="none"
            ).sum(-1)
            losses["loss_rpn_box"] = (w[pos] * box).sum() / denom
        return losses

    # ----------------------------------------------------------------- RoI head
    def roi_outputs(self, features: dict[str, Tensor], boxes: list[Tensor], sizes) -> tuple[Tensor, Tensor]:
        """Class logits `[R, K+1]` and per-class deltas `[R, (K+1)*4]` for the given boxes."""
        pooled = self.roi_heads.box_roi_pool(features, boxes, sizes)
        return self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))

    def sample_rois(self, proposals: list[Tensor], targets: list[Target]) -> tuple[list[Tensor], Tensor, Tensor]:
        """The standard RoI assigner and sampler: IoU 0.5, 512 per image, 25% foreground,
        target boxes added as proposals. `targets` use ssodkit labels 0..K-1; the returned
        labels (concatenated over images) use 0 = background, k+1 = class k, alongside the
        per-image RoIs and the encoded regression targets."""
        rois, _, labels, regression_targets = self.roi_heads.select_training_samples(proposals, self._shift(targets))
        return rois, torch.cat(labels), torch.cat(regression_targets)

    def _roi_terms(
        self, logits: Tensor, deltas: Tensor, labels: Tensor, regression_targets: Tensor, focal: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-RoI classification loss, and smooth-L1 of the labelled class's deltas on foreground RoIs."""
        logits = logits.float()
        cls = softmax_focal_loss(logits, labels) if focal else F.cross_entropy(logits, labels, reduction="none")
        pos = torch.where(labels > 0)[0]
        deltas = deltas.float().reshape(deltas.shape[0], self.num_classes + 1, 4)
        box = F.smooth_l1_loss(
            deltas[pos, labels[pos]], regression_targets[pos], beta=1 / 9, reduction="none"
        ).sum(-1)
        return cls, box, pos

    def roi_loss(
        self, features: dict[str, Tensor], proposals: list[Tensor], sizes, targets: list[Target],
        weights: Tensor, cls_only: bool, focal: bool,
    ) -> dict[str, Tensor]:
        """Generic-tier RoI loss with per-image weights (`targets` in ssodkit labels)."""
        rois, labels, regression_targets = self.sample_rois(proposals, targets)
        logits, deltas = self.roi_outputs(features, rois, sizes)
        w = per_sample_weights(weights, [r.shape[0] for r in rois])
        denom = max(1, int((w > 0).sum()))
        cls, box, pos = self._roi_terms(logits, deltas, labels, regression_targets, focal)
        losses = {"loss_cls": (w * cls).sum() / denom}
        if not cls_only:
            losses["loss_box"] = (w[pos] * box).sum() / denom
        return losses

    def roi_losses(
        self, features: dict[str, Tensor], rois: list[Tensor], sizes, labels: Tensor, regression_targets: Tensor,
        roi_weights: Tensor,
    ) -> dict[str, Tensor]:
        """RoI losses of sampled RoIs with one weight per RoI (`sample_rois` order).

        Classification is `Σ w·CE / max(Σ w, 1)`: with Soft Teacher's reliability weights the
        background RoIs count by how sure the teacher is that they are background, and the
        average re-normalises by the weights (the maintainers' code; the max guards an
        all-background batch with tiny weights). Box regression is the weighted smooth-L1 of
        foreground RoIs over the number of RoIs with non-zero weight, as in `roi_loss`.
        """
        logits, deltas = self.roi_outputs(features, rois, sizes)
        cls, box, pos = self._roi_terms(logits, deltas, labels, regression_targets, focal=False)
        w = roi_weights.float()
        return {
            "loss_cls": (w * cls).sum() / w.sum().clamp(min=1.0),
            "loss_box": (w[pos] * box).sum() / max(1, int((w > 0).sum())),
        }

    def encode_roi_boxes(self, boxes: Tensor, proposals: Tensor) -> Tensor:
        """The RoI head's regression targets `[R, 4]` of `boxes` relative to `proposals`."""
        return self.roi_heads.box_coder.encode_single(boxes.float(), proposals.float())

    def decode_roi_boxes(self, deltas: Tensor, proposals: Tensor) -> Tensor:
        """The RoI head's boxes `[R, 4]` from deltas `[R, 4]` on `proposals` (unclipped)."""
        return self.roi_heads.box_coder.decode_single(deltas.float(), proposals.float())

    def class_probs(self, logits: Tensor) -> Tensor:
        """`[R, K+1]` scores from the RoI head's logits, column 0 background
        (`detector.roi_scores`): softmax, or sigmoid(z_k − z_0) per class with background
        1 − the best class (what a K-way sigmoid focal loss on z_k − z_0 trains)."""
        logits = logits.float()
        if self.cfg.roi_scores == "softmax":
            return F.softmax(logits, -1)
        classes = torch.sigmoid(logits[:, 1:] - logits[:, :1])
        return torch.cat([1 - classes.max(-1, keepdim=True).values, classes], -1)

    @torch.no_grad()
    def roi_cls_probs(self, features: dict[str, Tensor], boxes: list[Tensor], sizes) -> Tensor:
        """Class scores `[R, K+1]` of the RoI head on the given boxes (`class_probs`); column 0
        is background. Teacher-side, so no gradient."""
        logits, _ = self.roi_outputs(features, boxes, sizes)
        return self.class_probs(logits)

    @torch.no_grad()
    def refine_boxes(
        self, features: dict[str, Tensor], boxes: list[Tensor], labels: list[Tensor], sizes
    ) -> list[Tensor]:
        """The RoI head's refinement of each box for its own class (ssodkit label), clipped
        to the image: what the detector would output for that box taken as a proposal.
        Teacher-side, so no gradient."""
        _, deltas = self.roi_outputs(features, boxes, sizes)
        index = torch.cat(labels) + 1
        deltas = deltas.float().reshape(deltas.shape[0], self.num_classes + 1, 4)
        deltas = deltas[torch.arange(index.numel(), device=index.device), index]
        refined = self.decode_roi_boxes(deltas, torch.cat(boxes))
        counts = [b.shape[0] for b in boxes]
        return [box_ops.clip_boxes_to_image(r, size) for r, size in zip(refined.split(counts), sizes)]

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
        validate_targets(targets, len(images), self.num_classes)
        image_list, features = self.features(images)
        weights = resolve_image_weights(image_weights, len(images), image_list.tensors.device)
        objectness, deltas, anchors, proposals = self.rpn_forward(image_list, features)
        losses = self.rpn_loss(objectness, deltas, anchors, targets, weights, cls_only)
        losses.update(
            self.roi_loss(features, proposals, image_list.image_sizes, targets, weights, cls_only, focal)
        )
        return losses

    @torch.no_grad()
    def predict(self, images: list[Tensor]) -> list[Detections]:
        image_list, features = self.features(images)
        return self.detect(image_list, features, self.proposals(image_list, features))

    @torch.no_grad()
    def detect(self, image_list: ImageList, features: dict[str, Tensor], proposals: list[Tensor]) -> list[Detections]:
        """`predict` from an existing feature pass (a teacher reuses it for its filters)."""
        logits, deltas = self.roi_outputs(features, proposals, image_list.image_sizes)
        boxes = self.roi_heads.box_coder.decode(deltas.float(), proposals)
        probs = self.class_probs(logits)
        counts = [p.shape[0] for p in proposals]
        return [
            self._postprocess(b, p, size)
            for b, p, size in zip(boxes.split(counts), probs.split(counts), image_list.image_sizes)
        ]

    def _postprocess(self, boxes: Tensor, probs: Tensor, size: tuple[int, int]) -> Detections:
        """torchvision's per-class NMS, keeping which proposal each detection came from."""
        num_props, num_cls = probs.shape
        boxes = box_ops.clip_boxes_to_image(boxes, size)[:, 1:].reshape(-1, 4)
        scores = probs[:, 1:].reshape(-1)
        labels = torch.arange(num_cls - 1, device=probs.device).repeat(num_props)
        proposal_idx = torch.arange(num_props, device=probs.device).repeat_interleave(num_cls - 1)
        keep = torch.where(scores > self.roi_heads.score_thresh)[0]
        keep = keep[box_ops.remove_small_boxes(boxes[keep], 1e-2)]
        keep = keep[box_ops.batched_nms(boxes[keep], scores[keep], labels[keep], self.roi_heads.nms_thresh)]
        keep = keep[: self.roi_heads.detections_per_img]
        return Detections(boxes[keep], scores[keep], labels[keep], probs[proposal_idx[keep], 1:])
