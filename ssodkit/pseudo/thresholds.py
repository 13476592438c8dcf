"""Threshold policies: how the `score` filter picks τ (`method.threshold_policy`).

- `fixed`: τ as configured (`ScoreThreshold` in `filters.py`), the default.
- `gmm`: Consistent Teacher's per-class τ (Wang et al., CVPR 2023; Adamdad/ConsistentTeacher
  `ssod/models/consistent_teacher.py`, `extract_teacher_info` and `gmm_policy`): a rolling
  buffer of each class's last N teacher scores, a two-component 1-D Gaussian mixture fitted
  to it, τ_c = the score of the high component's most probable sample.
- `mean_std`: ARSL's per-image τ (Liu et al., CVPR 2023; PaddleDetection
  `ppdet/modeling/losses/fcos_loss.py`, `FCOSLossCR.get_targets_per_img`): mean + std of
  the image's candidate scores, capped.

Every policy keeps a box when its score is strictly above its τ (`above_threshold`), so the
one rule holds; what changes is where τ comes from. A stateful policy learns in `observe`
(training steps only; `PseudoLabeler.filter(observe=True)`) and only applies τ in
`__call__`, so evaluation and `stats` never move it. docs/methods/thresholds.md has the
mapping to ssodkit's score scales and what each rule does with too few scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ssodkit.detectors.protocol import Detections
from ssodkit.engine.distributed import all_gather_tensors
from ssodkit.errors import SsodkitError
from ssodkit.pseudo.filters import above_threshold
from ssodkit.pseudo.labels import PseudoLabels

# --------------------------------------------------------------------------- Consistent Teacher
GMM_MIN_SCORES = 4  # `gmm_policy`: fewer scores than this → the fallback τ
GMM_BUFFER = 100  # `num_scores` in every Consistent Teacher config
GMM_TOPK_RATIO = 1.0  # `dynamic_ratio`
TOPK_MARGIN = 1e-5  # `extract_teacher_info` keeps score > the k-th score − 1e-5
# sklearn.mixture.GaussianMixture's defaults, which Consistent Teacher leaves as they are
GMM_TOL = 1e-3
GMM_MAX_ITER = 100
GMM_REG_COVAR = 1e-6

# --------------------------------------------------------------------------- ARSL
# ARSL's candidate floor 0.1 and cap 0.4 are on σ(cls)·σ(IoU), a product of two
# probabilities like mmdet's FCOS score cls·centerness, on which MixPL's τ is 0.3. ssodkit's
# (torchvision's) FCOS score is √(cls·centerness) with default τ √0.3, where ARSL's values are
# √0.1 and √0.4: τ_default·√(1/3) and τ_default·√(4/3). Other detectors get the same ratios
# to their own default τ (a convention, not a measurement; docs/methods/thresholds.md).
ARSL_FLOOR, ARSL_CAP, ARSL_REFERENCE_THR = 0.1, 0.4, 0.3
MEAN_STD_FLOOR_RATIO = math.sqrt(ARSL_FLOOR / ARSL_REFERENCE_THR)
MEAN_STD_CAP_RATIO = math.sqrt(ARSL_CAP / ARSL_REFERENCE_THR)
MEAN_STD_TOPK = 1  # boxes kept when none passes (ARSL: its 10 best dense points)

Gather = Callable[..., tuple[Tensor, ...]]  # (scores, labels) of every rank, rank 0's first


# --------------------------------------------------------------------------- the 1-D mixture
@dataclass(frozen=True)
class GaussianMixture1D:
    """A fitted two-component 1-D Gaussian mixture (component 1 started at the maximum)."""

    weights: np.ndarray  # [2]
    means: np.ndarray  # [2]
    variances: np.ndarray  # [2]
    n_iter: int
    converged: bool

    def weighted_log_prob(self, x: np.ndarray) -> np.ndarray:
        """log(w_k · N(x; μ_k, σ_k²)) per sample and component, [n, 2]."""
        return _weighted_log_prob(x, self.means, 1.0 / np.sqrt(self.variances), self.weights)


def _weighted_log_prob(x: np.ndarray, means: np.ndarray, prec_chol: np.ndarray, weights: np.ndarray) -> np.ndarray:
    # sklearn's `_estimate_log_gaussian_prob` ('full', one feature): y = x·L − μ·L with
    # L = 1/σ; log N = −½(log 2π + y²) + log L; plus log w_k (`_estimate_weighted_log_prob`)
    y = x[:, None] * prec_chol[None, :] - (means * prec_chol)[None, :]
    return -0.5 * (math.log(2 * math.pi) + y**2) + np.log(prec_chol)[None, :] + np.log(weights)[None, :]


def _logsumexp(a: np.ndarray) -> np.ndarray:
    top = a.max(axis=1)
    return top + np.log(np.exp(a - top[:, None]).sum(axis=1))


def fit_gmm_1d(
    x: np.ndarray, tol: float = GMM_TOL, max_iter: int = GMM_MAX_ITER, reg_covar: float = GMM_REG_COVAR
) -> GaussianMixture1D:
    """EM for two 1-D Gaussians as Consistent Teacher calls sklearn's `GaussianMixture(2,
    weights_init=[½, ½], means_init=[min, max], precisions_init=[1, 1])`: the same
    initialisation, E- and M-steps, `reg_covar`, and stop when the mean log-likelihood
    changes by less than `tol` (at most `max_iter` iterations), in float64."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size < 2:
        raise ValueError("a two-component mixture needs at least two samples")
    weights = np.array([0.5, 0.5])
    means = np.array([x.min(), x.max()])
    prec_chol = np.array([1.0, 1.0])  # precisions_init 1 → Cholesky factor 1
    variances = np.array([1.0, 1.0])
    eps = 10 * np.finfo(np.float64).eps
    lower_bound, converged, n_iter = -np.inf, False, 0
    for n_iter in range(1, max_iter + 1):
        previous = lower_bound
        log_prob = _weighted_log_prob(x, means, prec_chol, weights)  # E-step
        norm = _logsumexp(log_prob)
        resp = np.exp(log_prob - norm[:, None])
        nk = resp.sum(axis=0) + eps  # M-step (`_estimate_gaussian_parameters`)
        means = (resp * x[:, None]).sum(axis=0) / nk
        variances = (resp * (x[:, None] - means[None, :]) ** 2).sum(axis=0) / nk + reg_covar
        weights = nk / nk.sum()
        prec_chol = 1.0 / np.sqrt(variances)
        lower_bound = float(norm.mean())
        if abs(lower_bound - previous) < tol:
            converged = True
            break
    return GaussianMixture1D(weights, means, variances, n_iter, converged)


def gmm_threshold(scores: np.ndarray | Tensor) -> float | None:
    """Consistent Teacher's `gmm_policy(policy='high')`: fit the mixture, assign each score
    to its most probable component, and among the scores assigned to the high component
    (the one started at the maximum) return the one where the mixture's density is highest.
    None (the caller's fallback) for fewer than 4 scores or when no score is assigned high."""
    x = np.asarray(scores.detach().cpu().double() if isinstance(scores, Tensor) else scores, dtype=np.float64)
    x = x.reshape(-1)
    if x.size < GMM_MIN_SCORES:
        return None
    log_prob = fit_gmm_1d(x).weighted_log_prob(x)
    high = log_prob.argmax(axis=1) == 1
    if not high.any():
        return None
    density = np.where(high, _logsumexp(log_prob), -np.inf)  # `score_samples`, low ones masked
    return float(x[int(density.argmax())])


def dynamic_topk(scores: Tensor, ratio: float) -> Tensor:
    """Consistent Teacher's per-image cut before the GMM (`extract_teacher_info`): with the
    scores sorted, k = min(int(Σ scores · ratio + 0.5), n − 1), keep score > s_(k) − 1e-5 —
    the k + 1 best boxes (ties within 1e-5 included). A mask over `scores`."""
    if scores.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=scores.device)
    ordered = scores.sort(descending=True).values
    k = min(int(scores.sum() * ratio + 0.5), scores.numel() - 1)
    return above_threshold(scores, ordered[k] - TOPK_MARGIN)


# --------------------------------------------------------------------------- ARSL's rule
def mean_std_threshold(scores: Tensor, floor: float, cap: float) -> float | None:
    """ARSL's per-image τ: candidates are the scores ≥ `floor`; τ = min(mean + std, cap) with
    the sample standard deviation (N − 1, Paddle's `std`; 0 for a single candidate). None
    when no score reaches the floor. Computed in float64."""
    candidates = scores.detach().double()
    candidates = candidates[candidates >= floor]
    if candidates.numel() == 0:
        return None
    std = float(candidates.std()) if candidates.numel() > 1 else 0.0
    return min(float(candidates.mean()) + std, cap)


def mean_std_keep(scores: Tensor, floor: float, cap: float, topk: int) -> tuple[Tensor, float | None]:
    """Which boxes ARSL's rule keeps in one image (score > τ, float64), and τ. When none
    passes, the `topk` best candidates (scores ≥ floor) instead — none if there is none."""
    tau = mean_std_threshold(scores, floor, cap)
    keep = above_threshold(scores.detach().double(), tau) if tau is not None else torch.zeros_like(scores, dtype=torch.bool)
    if keep.any() or topk == 0:
        return keep, tau
    candidates = torch.nonzero(scores.detach().double() >= floor).flatten()
    best = candidates[scores[candidates].argsort(descending=True, stable=True)[:topk]]
    keep[best] = True
    return keep, tau


# --------------------------------------------------------------------------- the filters
class GMMThreshold:
    """`threshold_policy: gmm` — Consistent Teacher's per-class τ.

    Per image, the `dynamic_topk` cut (unless `topk_ratio` is None); each class's buffer
    takes the scores of the kept boxes of the step (newest first, the last `buffer_size`
    kept, the empty slots 0 and unused); τ_c = `gmm_threshold` of the buffer, refitted for
    the classes the step saw; a box is kept when it passed the cut and its score > τ_c.
    Until a class has 4 scores, or when no score falls in the high component, τ_c is
    `fallback[c]` (the fixed τ: `score_thr`, per class `class_score_thr`) — Consistent
    Teacher's is 0, every box that passed the cut (`score_thr: 0` gives that).
    """

    standalone = True

    def __init__(
        self,
        fallback: Tensor,
        class_names: list[str],
        buffer_size: int = GMM_BUFFER,
        topk_ratio: float | None = GMM_TOPK_RATIO,
        gather: Gather = all_gather_tensors,
    ) -> None:
        self.fallback = fallback.detach().float().cpu().clone()
        self.class_names = list(class_names)
        self.topk_ratio = topk_ratio
        self.gather = gather
        self.scores = torch.zeros(len(self.fallback), buffer_size)
        self.thresholds = self.fallback.clone()

    def cut(self, det: Detections) -> Detections:
        if self.topk_ratio is None or not len(det):
            return det
        return det[dynamic_topk(det.scores, self.topk_ratio)]

    def observe(self, pseudo: PseudoLabels) -> None:
        """Add the step's scores (after the cut) to the buffers and refit the classes seen."""
        kept = [self.cut(d) for d in pseudo.detections]
        scores = torch.cat([d.scores.detach().float().cpu() for d in kept]) if kept else torch.zeros(0)
        labels = torch.cat([d.labels.detach().long().cpu() for d in kept]) if kept else torch.zeros(0, dtype=torch.long)
        scores, labels = self.gather(scores, labels)
        size = self.scores.shape[1]
        for c in torch.unique(labels).tolist():
            buffer = torch.cat([scores[labels == c], self.scores[c]])[:size]
            self.scores[c] = buffer
            tau = gmm_threshold(buffer[buffer > 0])
            self.thresholds[c] = self.fallback[c] if tau is None else tau

    def __call__(self, pseudo: PseudoLabels) -> PseudoLabels:
        def keep(det: Detections) -> Detections:
            det = self.cut(det)
            if not len(det):
                return det
            return det[above_threshold(det.scores, self.thresholds.to(det.scores.device)[det.labels])]

        return pseudo.map(keep)

    @property
    def stats(self) -> dict[str, float]:
        """τ per class, as a run's metrics.jsonl names them (`thr/<class>`)."""
        return {f"thr/{name}": float(t) for name, t in zip(self.class_names, self.thresholds)}

    def state_dict(self) -> dict[str, Any]:
        return {"scores": self.scores.clone(), "thresholds": self.thresholds.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        scores = state["scores"].detach().float().cpu()
        if scores.shape != self.scores.shape:
            raise SsodkitError(
                f"threshold_policy gmm: the checkpoint's score buffers are {tuple(scores.shape)} "
                f"(classes × gmm_buffer), this run's {tuple(self.scores.shape)}"
            )
        self.scores = scores.clone()
        self.thresholds = state["thresholds"].detach().float().cpu().clone()


class MeanStdThreshold:
    """`threshold_policy: mean_std` — ARSL's per-image τ (`mean_std_keep`); stateless.

    `observe` only records the step's mean τ (`thr/image`) for the log."""

    standalone = True

    def __init__(self, floor: float, cap: float, topk: int = MEAN_STD_TOPK) -> None:
        self.floor, self.cap, self.topk = floor, cap, topk
        self.stats: dict[str, float] = {}

    def observe(self, pseudo: PseudoLabels) -> None:
        taus = [mean_std_threshold(d.scores, self.floor, self.cap) for d in pseudo.detections]
        taus = [t for t in taus if t is not None]
        self.stats = {"thr/image": sum(taus) / len(taus)} if taus else {}

    def __call__(self, pseudo: PseudoLabels) -> PseudoLabels:
        return pseudo.map(lambda det: det[mean_std_keep(det.scores, self.floor, self.cap, self.topk)[0]])
