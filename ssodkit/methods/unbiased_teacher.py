"""Unbiased Teacher (Liu et al., ICLR 2021).

Mean Teacher with two changes against foreground/background imbalance: focal loss for RoI
classification (one-stage heads already use it), and no unsupervised box regression — the
pseudo boxes only teach classification (RPN objectness and RoI class, or the dense
classification branch). A supervised burn-in precedes SSOD; the teacher then starts as a
copy of the student and follows it with a constant keep-rate of 0.9996, BatchNorm
statistics averaged like the weights (the official update averages the whole state dict).

Views as in the official code (facebookresearch/unbiased-teacher): the strong view is the
weak image plus photometric ops (`ut_strong`: colour jitter, greyscale, blur, three random
erasings with noise fill), so pseudo boxes move by the identity and none is dropped for
being erased; labeled images are trained in both views, burn-in included.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from ssodkit.methods.teacher_student import TeacherStudent, TeacherStudentParams

WEAK_AND_STRONG = ("weak", "strong=ut_strong@weak")


class UnbiasedTeacherParams(TeacherStudentParams):
    unsup_weight: float = Field(4.0, ge=0, description="β (official: 4)")
    score_thr: float | None = Field(
        None, ge=0, le=1, description="τ; None = the detector's default (official Faster R-CNN: 0.7, its "
        "softmax scale; a focal or FCOS score never reaches 0.7 in time)"
    )
    drop_covered: float | None = Field(
        None, ge=0, le=1,
        description="drop pseudo boxes this much erased; null keeps them all (official)",
    )
    labeled_views: Literal["weak_strong", "labeled"] = Field(
        "weak_strong",
        description="labeled images in the weak and the ut_strong view, one batch of 2 × batch_size (official), "
        "or once in the labeled view",
    )


class UnbiasedTeacher(TeacherStudent):
    name = "unbiased_teacher"
    Params: ClassVar[type[BaseModel]] = UnbiasedTeacherParams
    unlabeled_views: ClassVar[tuple[str, ...]] = WEAK_AND_STRONG
    # keep-rate 0.9996 (m = 4e-4) after a supervised burn-in (2000 iterations on COCO); the
    # official EMA runs over the whole state dict, BatchNorm statistics included
    teacher_defaults: ClassVar[dict[str, Any]] = {"momentum": 4e-4, "burn_in": 2000, "buffers": "ema"}
    unsup_cls_only = True
    focal = True

    @classmethod
    def labeled_views(cls, params: BaseModel) -> tuple[str, ...]:
        assert isinstance(params, UnbiasedTeacherParams)
        return WEAK_AND_STRONG if params.labeled_views == "weak_strong" else ("labeled",)
