"""Detector configuration (one section of the run config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DetectorConfig(BaseModel):
    """Which detector to build and how; defaults are sized for a CPU run on small images."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("fcos", description="registered detector name (see `ssodkit plugins`)")
    backbone: str = Field("resnet18", description="any timm model that supports features_only")
    pretrained: bool = Field(False, description="load ImageNet weights for the backbone (downloads)")
    freeze_bn: bool | None = Field(
        None, description="freeze the backbone's BatchNorm (running statistics and affine) as the "
        "detection references do; null = frozen when the backbone starts from trained weights "
        "(pretrained, or a train.init_from checkpoint that froze it); the run's config.yaml "
        "records the value used"
    )
    fpn_channels: int = Field(128, gt=0, description="FPN width (256 in the COCO recipes)")
    head_convs: int = Field(
        2, ge=1, le=8, description="conv layers per one-stage head branch (4 in the COCO recipes)"
    )
    anchor_size: int | None = Field(
        None, gt=0, description="anchor size at the finest level; None = detector default"
    )
    loss_norm: Literal["image", "batch"] = Field(
        "image", description="RetinaNet: normalise each image's loss by its own foreground count and average "
        "(torchvision), or the batch's sum by the batch's count (mmdet). FCOS always uses the batch's."
    )
    roi_scores: Literal["softmax", "sigmoid"] = Field(
        "softmax", description="Faster R-CNN: the RoI head's class scores — softmax over background and the K "
        "classes (torchvision), or sigmoid(z_k − z_0) for a head trained with a K-way sigmoid focal loss (PseCo)"
    )
    score_thresh: float = Field(0.05, ge=0.0, le=1.0, description="minimum score of a prediction")
    nms_thresh: float | None = Field(None, gt=0.0, le=1.0, description="None = detector default")
    detections_per_img: int = Field(100, gt=0)
    topk_candidates: int = Field(1000, gt=0, description="per-level candidates before NMS")

    @property
    def backbone_bn_frozen(self) -> bool:
        """Whether the backbone's BatchNorm is frozen: `freeze_bn`, or `pretrained` when null.

        The trainer writes the value it used into `freeze_bn` (see `resolve_freeze_bn`), so a
        saved config and a checkpoint rebuild the same model whatever `pretrained` becomes."""
        return self.pretrained if self.freeze_bn is None else self.freeze_bn
