"""Diagnostics: pseudo-labels against hidden ground truth, data set profiles, and the gradient
density of pseudo-label training.

Plots live in `ssodkit.plots` (shared with the trainer's run figures), imported on demand so that the trainer can compute
pseudo-label quality without loading matplotlib. The gradient diagnostics need torch; their
names are resolved on first use, so that `ssodkit stats pseudo` and `stats data` never load it.
"""

from typing import Any

from ssodkit.stats.data import DataStats, compute_data_stats
from ssodkit.stats.pseudo import PseudoStats, compute_pseudo_stats, pseudo_label_quality

_GRAD_EXPORTS = ("GradStats", "density", "ghm_groups", "ghm_norm", "gradient_density")

__all__ = [
    "DataStats",
    "GradStats",
    "PseudoStats",
    "compute_data_stats",
    "compute_pseudo_stats",
    "density",
    "ghm_groups",
    "ghm_norm",
    "gradient_density",
    "pseudo_label_quality",
]


def __getattr__(name: str) -> Any:
    if name in _GRAD_EXPORTS:
        from ssodkit.stats import grad

        return getattr(grad, name)
    raise AttributeError(f"module 'ssodkit.stats' has no attribute {name!r}")
