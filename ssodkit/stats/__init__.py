"""Diagnostics: pseudo-labels against hidden ground truth, and data set profiles.

Plots live in `ssodkit.stats.plots`, imported on demand so that the trainer can compute
pseudo-label quality without loading matplotlib.
"""

from ssodkit.stats.data import DataStats, compute_data_stats
from ssodkit.stats.pseudo import PseudoStats, compute_pseudo_stats, pseudo_label_quality

__all__ = [
    "DataStats",
    "PseudoStats",
    "compute_data_stats",
    "compute_pseudo_stats",
    "pseudo_label_quality",
]
