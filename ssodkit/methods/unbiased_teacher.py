"""Unbiased Teacher (Liu et al., ICLR 2021).

Mean Teacher with two changes against foreground/background imbalance: focal loss for RoI
classification (one-stage heads already use it), and no unsupervised box regression — the
pseudo boxes only teach classification (RPN objectness and RoI class, or the dense
classification branch). A supervised burn-in precedes SSOD; the teacher then starts as a
copy of the student and follows it with a constant keep-rate of 0.9996.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from ssodkit.methods.teacher_student import TeacherStudent, TeacherStudentParams


class UnbiasedTeacherParams(TeacherStudentParams):
    unsup_weight: float = Field(4.0, ge=0, description="β (official: 4)")
    score_thr: float | None = Field(0.7, ge=0, le=1, description="τ (official: 0.7)")
    ema_momentum: float | None = Field(4e-4, gt=0, le=1, description="1 − keep-rate 0.9996")
    burn_in: int = Field(2000, ge=0, description="supervised-only iterations (2000 on COCO)")


class UnbiasedTeacher(TeacherStudent):
    name = "unbiased_teacher"
    Params: ClassVar[type[BaseModel]] = UnbiasedTeacherParams
    unsup_cls_only = True
    focal = True
