"""Unbiased Teacher (Liu et al., ICLR 2021).

Mean Teacher with two changes against foreground/background imbalance: focal loss for RoI
classification (one-stage heads already use it), and no unsupervised box regression — the
pseudo boxes only teach classification (RPN objectness and RoI class, or the dense
classification branch). A supervised burn-in precedes SSOD; the teacher then starts as a
copy of the student and follows it with a constant keep-rate of 0.9996.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field

from ssodkit.methods.teacher_student import TeacherStudent, TeacherStudentParams


class UnbiasedTeacherParams(TeacherStudentParams):
    unsup_weight: float = Field(4.0, ge=0, description="β (official: 4)")
    score_thr: float | None = Field(
        None, ge=0, le=1, description="τ; None = the detector's default (official Faster R-CNN: 0.7, its "
        "softmax scale; a focal or FCOS score never reaches 0.7 in time)"
    )


class UnbiasedTeacher(TeacherStudent):
    name = "unbiased_teacher"
    Params: ClassVar[type[BaseModel]] = UnbiasedTeacherParams
    # keep-rate 0.9996 (m = 4e-4) after a supervised burn-in (2000 iterations on COCO)
    teacher_defaults: ClassVar[dict[str, Any]] = {"momentum": 4e-4, "burn_in": 2000}
    unsup_cls_only = True
    focal = True
