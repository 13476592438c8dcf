"""Mean Teacher for detection (MixPL's detector-agnostic "DetMeanTeacher").

Everything is in `TeacherStudent`: weak → teacher → score filter → per-image empty rule →
projection into the strong view → student loss with weight β (default 2), EMA teacher with
`m_t = max(2e-4, 4/(4+t))`. Needs only the generic detector tier.
"""

from __future__ import annotations

from ssodkit.methods.teacher_student import TeacherStudent


class MeanTeacher(TeacherStudent):
    name = "mean_teacher"
