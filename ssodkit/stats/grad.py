"""GHM gradient-norm density of pseudo-label training (MixPL, Chen et al. 2023, Fig. 6 / A7).

A dense detector's classification loss is a sum over anchor × class *elements*. Where the
pseudo labels agree with the ground truth, the gradient teaches the right thing; where they
do not, it teaches the student to miss objects (FN: pseudo background on a real object) or
to hallucinate them (FP). This module measures how large those gradients are, per group,
and how the views MixPL adds (Pseudo Mixup, Pseudo Mosaic) shift them.

Definitions:
- For each image the teacher (the checkpoint's teacher weights; its student weights when it
  has none) predicts on a weak view; its detections with score > τ are the pseudo labels
  (τ: the run's own when its method set one, else the detector's `default_pseudo_thr`),
  projected into every student view. The ground truth goes into each view through the same
  geometry and the same code (view matrices and the random-erasing drop for weak/strong;
  the mix placements for mixup/mosaic), so pseudo boxes and GT boxes differ only by what the
  teacher got wrong. The weak view is analysed as a student view too: the baseline without
  strong augmentation.
- The student (the checkpoint's student weights, eval mode) computes its dense
  classification logits `x` on the view. Every anchor/point is assigned twice with the
  detector's own matcher: to the pseudo boxes and to the GT boxes. `y_pseudo`, `y_gt` are the
  one-hot class of the matched box (all zero for background). An anchor the matcher ignores
  (-2, RetinaNet's IoU band) in either assignment is left out, as is an anchor whose centre
  lies in the batch padding (it depends on the batch, not on the image).
- Groups per element: TP (y_pseudo=1, y_gt=1), FP (1, 0), FN (0, 1), TN (0, 0).
- The gradient norm is GHM-C's `g = |σ(x) − y_pseudo|`: the gradient of binary cross-entropy
  with respect to the logit under the *pseudo* target, the one the student is trained with.
  (The heads train with focal loss, which reweights this gradient; GHM's norm is the
  loss-independent measure of how wrong the logit is, as in the paper's figures.)
- Density: the fraction of a group's elements in each of `bins` equal bins over [0, 1]
  (`torch.histc`; g = 1 falls in the last bin).
- Mixup pairs and mosaic quadruples are built from the strong views of the evaluated images
  themselves: one mixup per image (its partner is the next image in a seeded cycle, so no
  image is mixed with itself unless it is alone) and one mosaic per image (it and the next
  three images of the cycle). The strong views are already randomly erased by the strong
  pipeline; MixPL's second erasing of cached images is not repeated. Mosaic tiles use the
  run's `mosaic_size` for MixPL runs, else half to all of the median strong-view side.
  Everything is seeded by `seed`, per view, so choosing fewer views changes none of the rest.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from ssodkit.detectors.protocol import (
    CAPABILITIES,
    DenseHead,
    Detections,
    Target,
    capabilities_of,
)
from ssodkit.erasing import DROP_COVERED
from ssodkit.errors import (
    CapabilityError,
    ConfigError,
    DataError,
    unknown_name,
)
from ssodkit.mixing import MixItem, Placement, pseudo_mixup, pseudo_mosaic
from ssodkit.pseudo.filters import above_threshold
from ssodkit.pseudo.labeler import run_param, run_score_thr
from ssodkit.pseudo.labels import project_detections
from ssodkit.rng import SEED_BITS, seeded_generator
from ssodkit.views.geometry import MIN_BOX_SIZE, identity_matrix
from ssodkit.views.ops import ViewState

if TYPE_CHECKING:
    from ssodkit.config import RunConfig

VIEWS: tuple[str, ...] = ("weak", "strong", "mixup", "mosaic")
GROUPS: tuple[str, ...] = ("TP", "FP", "FN", "TN")
IGNORED = -2  # the matchers' "between thresholds": no classification loss at all
BATCH_SIZE = 4  # images per forward pass (anchors in the batch padding are left out)

Group = Literal["TP", "FP", "FN", "TN"]


# --------------------------------------------------------------------------- pure core
def ghm_norm(logits: Tensor, target: Tensor) -> Tensor:
    """`|σ(x) − y|`: the gradient of BCE-with-logits with respect to the logit (GHM-C)."""
    return (logits.float().sigmoid() - target.float()).abs()


def ghm_groups(logits: Tensor, y_pseudo: Tensor, y_gt: Tensor, valid: Tensor) -> dict[str, Tensor]:
    """The gradient norm of every valid element, split into TP / FP / FN / TN.

    `logits`, `y_pseudo`, `y_gt` are `[A, K]` (anchors × classes; targets 0/1 or bool);
    `valid` is `[A]` (per anchor) or `[A, K]`. The norm uses the pseudo target, the one the
    student is trained with; the GT only decides the group. Returns 1-D tensors of g.
    """
    g = ghm_norm(logits, y_pseudo)
    keep = valid.bool()
    keep = (keep if keep.dim() == g.dim() else keep.unsqueeze(-1)).expand_as(g)
    pseudo, gt = y_pseudo.bool(), y_gt.bool()
    masks = {"TP": pseudo & gt, "FP": pseudo & ~gt, "FN": ~pseudo & gt, "TN": ~pseudo & ~gt}
    return {name: g[mask & keep] for name, mask in masks.items()}


def histogram(g: Tensor, bins: int) -> Tensor:
    """Counts of g in `bins` equal bins over [0, 1], `int64 [bins]` on the CPU.

    `torch.histc` counts in float32, exact below 2^24 per bin and call — one image's anchors
    stay far below that; callers add the per-image counts as integers.
    """
    return torch.histc(g.float(), bins=bins, min=0.0, max=1.0).round().long().cpu()


def density(g: Tensor, bins: int) -> Tensor:
    """Fraction of the elements in each bin (sums to 1); all zeros for an empty group."""
    counts = histogram(g, bins).double()
    return counts / counts.sum() if g.numel() else counts


# --------------------------------------------------------------------------- results
class GroupStats(BaseModel):
    group: Group
    count: int  # anchor × class elements
    mean_g: float | None  # None for an empty group
    sum_g: float
    share: float | None  # of the view's total Σg; None when the view has no gradient at all
    density: list[float]  # fraction of the group's elements per bin; zeros when empty


class ViewStats(BaseModel):
    view: str
    images: int
    pseudo_boxes: int
    gt_boxes: int
    anchors: int  # valid anchors/points (not ignored, not padding)
    groups: list[GroupStats]  # in GROUPS order


class GradStats(BaseModel):
    checkpoint: str
    detector: str
    score_thr: float
    target: Literal["pseudo"] = "pseudo"  # g = |σ(x) − y_pseudo|
    num_images: int
    bins: int
    bin_edges: list[float]
    seed: int
    views: list[ViewStats]

    def view(self, name: str) -> ViewStats:
        return next(v for v in self.views if v.view == name)


@dataclass
class _Tally:
    """Running counts of one view, so that no element's g outlives its image."""

    bins: int
    counts: dict[str, Tensor] = field(init=False)
    sums: dict[str, float] = field(init=False)
    images: int = 0
    pseudo_boxes: int = 0
    gt_boxes: int = 0
    anchors: int = 0

    def __post_init__(self) -> None:
        self.counts = {name: torch.zeros(self.bins, dtype=torch.long) for name in GROUPS}
        self.sums = dict.fromkeys(GROUPS, 0.0)

    def add(self, groups: Mapping[str, Tensor]) -> None:
        for name, g in groups.items():
            self.counts[name] += histogram(g, self.bins)
            self.sums[name] += float(g.double().sum())  # float64: millions of TN elements

    def stats(self, view: str) -> ViewStats:
        total = sum(self.sums.values())
        groups = []
        for name in GROUPS:
            counts, s = self.counts[name], self.sums[name]
            n = int(counts.sum())
            groups.append(GroupStats(
                group=name,  # type: ignore[arg-type]
                count=n,
                mean_g=s / n if n else None,
                sum_g=s,
                share=s / total if total > 0 else None,
                density=(counts.double() / n).tolist() if n else [0.0] * self.bins,
            ))
        return ViewStats(
            view=view, images=self.images, pseudo_boxes=self.pseudo_boxes, gt_boxes=self.gt_boxes,
            anchors=self.anchors, groups=groups,
        )


# --------------------------------------------------------------------------- views
@dataclass
class _Sample:
    """One student input: uint8 image with pseudo and GT targets in its pixels (CPU)."""

    image: Tensor
    pseudo: Target
    gt: Target


def _target(boxes: Tensor, labels: Tensor) -> Target:
    return {"boxes": boxes.to(torch.float32).reshape(-1, 4), "labels": labels.to(torch.int64)}


def _as_detections(target: Target) -> Detections:
    n = target["labels"].numel()
    return Detections(target["boxes"], torch.ones(n), target["labels"])


def _project(det: Detections, m_from: Tensor, state: ViewState, drop_covered: float) -> Target:
    """Boxes into a view state (matrix, size, erased), the way the trainer projects them."""
    out = project_detections(det, m_from, state.matrix, state.size, state.erased, drop_covered)
    return _target(out.boxes, out.labels)


def _generator(seed: int, index: int, view: str) -> torch.Generator:
    """Independent, reproducible randomness per (seed, image, view): choosing fewer views
    never changes the ones that remain."""
    key = (seed * 1_000_003 + index) * len(VIEWS) + VIEWS.index(view)
    return seeded_generator(key, bits=SEED_BITS)


def _place(target: Target, placement: Placement) -> Target:
    """Boxes moved onto their placed copy, clipped to it, degenerate ones dropped — what
    the mixing module does to the pseudo boxes, applied here to both pseudo and GT."""
    x1, y1, x2, y2 = (float(v) for v in placement.region)
    boxes = placement.map_boxes(target["boxes"])
    low, high = boxes.new_tensor([x1, y1, x1, y1]), boxes.new_tensor([x2, y2, x2, y2])
    boxes = torch.minimum(torch.maximum(boxes, low), high)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIZE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIZE)
    return _target(boxes[keep], target["labels"][keep])


def _merge_placed(targets: Sequence[Target], placements: Sequence[Placement]) -> Target:
    placed = [_place(t, p) for t, p in zip(targets, placements, strict=True)]
    return _target(torch.cat([p["boxes"] for p in placed]), torch.cat([p["labels"] for p in placed]))


def _mixed(image: Tensor, sources: Sequence[_Sample], placements: Sequence[Placement]) -> _Sample:
    return _Sample(
        image,
        _merge_placed([s.pseudo for s in sources], placements),
        _merge_placed([s.gt for s in sources], placements),
    )


def _item(sample: _Sample) -> MixItem:
    """Pixels only: the boxes follow the placements through `_place`."""
    empty = torch.zeros((0, 4))
    return MixItem(sample.image, empty, torch.zeros(0, dtype=torch.int64), torch.zeros(0))


def _following(n: int, g: torch.Generator, count: int) -> list[list[int]]:
    """Per image i: i and the `count - 1` images after it in a seeded random cycle through
    all n, so that every image is mixed, and with itself only when n < count."""
    order = torch.randperm(n, generator=g).tolist()
    position = {image: j for j, image in enumerate(order)}
    return [[order[(position[i] + k) % n] for k in range(count)] for i in range(n)]


def _mixup_samples(strong: Sequence[_Sample], g: torch.Generator, fill: Sequence[float]) -> list[_Sample]:
    """One Pseudo Mixup per image, with the next image of the cycle as its partner."""
    out = []
    for a, b in _following(len(strong), g, 2):
        mixed = pseudo_mixup(_item(strong[a]), _item(strong[b]), g, fill=list(fill))
        out.append(_mixed(mixed.image, (strong[a], strong[b]), mixed.placements))
    return out


def _mosaic_samples(
    strong: Sequence[_Sample], g: torch.Generator, fill: Sequence[float], size_range: tuple[int, int]
) -> list[_Sample]:
    """One Pseudo Mosaic per image: it and the next three images of the cycle."""
    out = []
    for quad in _following(len(strong), g, 4):
        tiles = [strong[i] for i in quad]
        mixed = pseudo_mosaic([_item(t) for t in tiles], g, size_range=size_range, fill=list(fill))
        out.append(_mixed(mixed.image, tiles, mixed.placements))
    return out


def _mosaic_size(cfg: RunConfig, strong: Sequence[_Sample]) -> tuple[int, int]:
    """The tile size the run trained with (MixPL), else half to all of the median longer
    side of the strong views — the scale at which the student saw whole images."""
    size = run_param(cfg, "mosaic_size", None)  # a method that trained with mosaics says so
    if size is not None:
        return int(size[0]), int(size[1])
    longer = int(statistics.median(max(s.image.shape[-2:]) for s in strong))
    return max(1, longer // 2), longer


# --------------------------------------------------------------------------- student side
def _one_hot(match: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """`bool [A, K]`: the class of each anchor's matched box; all False for background."""
    y = torch.zeros((match.numel(), num_classes), dtype=torch.bool, device=match.device)
    fg = match >= 0
    y[fg, labels[match[fg]]] = True
    return y


def _inside(anchors: Tensor, size: tuple[int, int]) -> Tensor:
    """Anchors whose centre lies in the image, not in the batch padding."""
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    return (centres[:, 0] < size[1]) & (centres[:, 1] < size[0])


def _on(target: Target, device: torch.device) -> Target:
    return {k: v.to(device) for k, v in target.items()}


@torch.no_grad()
def _tally_batch(student: nn.Module, batch: Sequence[_Sample], device: torch.device, tally: _Tally) -> None:
    dense = student.dense([s.image.to(device).float().div_(255.0) for s in batch])
    logits = dense.flat("cls_logits")
    anchors = torch.cat(dense.anchors)
    per_level = [a.shape[0] for a in dense.anchors]
    pseudo = [_on(s.pseudo, device) for s in batch]
    gt = [_on(s.gt, device) for s in batch]
    same = [anchors] * len(batch)
    m_pseudo, m_gt = student.match(pseudo, same, per_level), student.match(gt, same, per_level)
    k = logits.shape[-1]
    for i in range(len(batch)):
        valid = _inside(anchors, dense.image_sizes[i]) & (m_pseudo[i] != IGNORED) & (m_gt[i] != IGNORED)
        y_pseudo = _one_hot(m_pseudo[i], pseudo[i]["labels"], k)
        tally.add(ghm_groups(logits[i], y_pseudo, _one_hot(m_gt[i], gt[i]["labels"], k), valid))
        tally.anchors += int(valid.sum())
    tally.images += len(batch)
    tally.pseudo_boxes += sum(len(t["labels"]) for t in pseudo)
    tally.gt_boxes += sum(len(t["labels"]) for t in gt)


def _tally_view(student: nn.Module, samples: Sequence[_Sample], device: torch.device, bins: int) -> _Tally:
    tally = _Tally(bins)
    for start in range(0, len(samples), BATCH_SIZE):
        _tally_batch(student, samples[start : start + BATCH_SIZE], device, tally)
    return tally


# --------------------------------------------------------------------------- teacher side
@dataclass
class _Source:
    """An evaluated image: its GT in original pixels, its weak and strong views."""

    image_id: int
    gt: Target
    weak: ViewState
    strong: ViewState


def _load_sources(dataset: Any, cfg: RunConfig, seed: int) -> list[_Source]:
    """Weak and strong views of every image; the boxes are projected later, through the
    same code for pseudo labels and GT, so the views get none."""
    from ssodkit.views.pipelines import strong_view, weak_view

    weak, strong = weak_view(cfg.views), strong_view(cfg.views)
    no_boxes, no_labels = torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64)
    sources = []
    for i in range(len(dataset)):
        s = dataset[i]
        sources.append(_Source(
            int(s["image_id"]), _target(s["boxes"], s["labels"]),
            weak(s["image"], no_boxes, no_labels, _generator(seed, i, "weak")),
            strong(s["image"], no_boxes, no_labels, _generator(seed, i, "strong")),
        ))
    return sources


def _above(det: Detections, thr: float) -> Detections:
    """Pseudo labels are the detections with score > τ (MixPL, mmdet), on the CPU."""
    det = det.to("cpu")
    return det[above_threshold(det.scores, thr)]


@torch.no_grad()
def _teacher_pseudo(
    teacher: nn.Module, sources: Sequence[_Source], device: torch.device, thr: float
) -> list[Detections]:
    """The teacher's weak-view detections with score > τ."""
    out: list[Detections] = []
    for start in range(0, len(sources), BATCH_SIZE):
        chunk = sources[start : start + BATCH_SIZE]
        detections = teacher.predict([s.weak.image.to(device).float().div_(255.0) for s in chunk])
        out.extend(_above(d, thr) for d in detections)
    return out


def _pseudo_labels(
    load_teacher: Callable[[], nn.Module], sources: Sequence[_Source], device: torch.device, thr: float,
    given: Mapping[int, Detections] | None, num_classes: int,
) -> list[tuple[Detections, Tensor]]:
    """Per image, the pseudo labels and the matrix of the pixels they are in: the teacher's
    weak view, or the original image for given pseudo labels (the teacher is then never built)."""
    if given is not None:
        empty = Detections.empty(num_classes)
        return [(_above(given.get(s.image_id, empty), thr), identity_matrix()) for s in sources]
    teacher = load_teacher()
    detections = _teacher_pseudo(teacher, sources, device, thr)
    return [(d, s.weak.matrix) for d, s in zip(detections, sources, strict=True)]


def _student_samples(
    sources: Sequence[_Source], pseudo: Sequence[tuple[Detections, Tensor]], views: Sequence[str],
    cfg: RunConfig, fill: Sequence[float], seed: int,
) -> dict[str, list[_Sample]]:
    """Each chosen view's student inputs with their pseudo and GT targets."""
    drop = float(run_param(cfg, "drop_covered", DROP_COVERED))

    def project(state_of: Callable[[_Source], ViewState]) -> list[_Sample]:
        out = []
        for source, (det, m_from) in zip(sources, pseudo, strict=True):
            state = state_of(source)
            gt = _project(_as_detections(source.gt), identity_matrix(), state, drop)
            out.append(_Sample(state.image, _project(det, m_from, state, drop), gt))
        return out

    samples = {"weak": project(lambda s: s.weak), "strong": project(lambda s: s.strong)}
    if "mixup" in views:
        samples["mixup"] = _mixup_samples(samples["strong"], _generator(seed, 0, "mixup"), fill)
    if "mosaic" in views:
        size_range = _mosaic_size(cfg, samples["strong"])
        mosaic_g = _generator(seed, 0, "mosaic")
        samples["mosaic"] = _mosaic_samples(samples["strong"], mosaic_g, fill, size_range)
    return samples


# --------------------------------------------------------------------------- checks
def _check_args(views: Iterable[str], score_thr: float | None, max_images: int, bins: int) -> list[str]:
    chosen = list(dict.fromkeys(views))
    if not chosen:
        raise ConfigError(f"no view chosen; valid: {', '.join(VIEWS)}")
    for name in chosen:
        if name not in VIEWS:
            raise unknown_name("view", name, VIEWS)
    if score_thr is not None and not 0.0 <= score_thr <= 1.0:
        raise ConfigError(f"score threshold must be in [0, 1], got {score_thr}")
    if max_images < 1:
        raise ConfigError(f"max_images must be ≥ 1, got {max_images}")
    if bins < 1:
        raise ConfigError(f"bins must be ≥ 1, got {bins}")
    return chosen


def _check_dense(model: nn.Module, detector: str) -> None:
    """Per-class dense logits and the detector's own matcher, or one line saying which is
    missing (Faster R-CNN's dense outputs are its class-agnostic RPN, with no `match`)."""
    if not isinstance(model, DenseHead):
        why = f"does not provide (it has: {', '.join(capabilities_of(model)) or 'generic tier only'})"
    elif not callable(getattr(model, "match", None)):
        why = "provides without a per-class anchor matcher (`match`), e.g. only for an RPN"
    else:
        return
    raise CapabilityError(
        f"stats grad needs the {CAPABILITIES[DenseHead]} capability of a one-stage head (RetinaNet, FCOS), "
        f"which detector '{detector}' {why}"
    )


# --------------------------------------------------------------------------- public API
def gradient_density(
    checkpoint: str | Path,
    ann: str | Path,
    images: str | Path,
    *,
    views: Sequence[str] = VIEWS,
    score_thr: float | None = None,
    max_images: int = 50,
    bins: int = 10,
    seed: int = 0,
    device: str = "auto",
    pseudo_labels: Mapping[int, Detections] | None = None,
) -> GradStats:
    """TP / FP / FN / TN gradient-norm density of a dense detector's student per view.

    The first `max_images` images of `ann` (file order; images under `images`) are used.
    `score_thr` defaults to the run's pseudo-label τ, or the detector's `default_pseudo_thr`.
    `pseudo_labels` (image id → detections in *original-image* pixels) replaces the
    teacher's predictions — an offline pseudo-label set, or a constructed case; τ still
    applies, and images missing from it get none. See the module docstring for definitions.
    """
    from ssodkit.data.coco import CHECK_REMEDY, load_coco
    from ssodkit.data.datasets import EvalDataset, identity_view
    from ssodkit.engine.checkpoint import load_checkpoint
    from ssodkit.engine.predict import check_same_classes
    from ssodkit.engine.runtime import model_from_checkpoint_state, resolve_device

    chosen = _check_args(views, score_thr, max_images, bins)
    checkpoint, ann = Path(checkpoint), Path(ann)
    dev = resolve_device(device)
    if not Path(images).is_dir():
        raise DataError(f"{images}: not a folder of images")
    # only the first max_images are read, and each names its file if it cannot be
    coco = load_coco(ann, images, check_images="none", remedy=CHECK_REMEDY)
    if not coco.images:
        raise DataError(f"{ann}: no images to analyse")
    state = load_checkpoint(checkpoint)  # read once: the student now, the teacher below
    loaded = model_from_checkpoint_state(state, checkpoint, weights="student", device=dev)
    student, cfg, classes = loaded.model, loaded.cfg, loaded.classes
    _check_dense(student, cfg.detector.name)
    check_same_classes(classes, coco.class_names, checkpoint, ann)
    thr = run_score_thr(cfg, student, score_thr)

    sources = _load_sources(EvalDataset(coco.subset(coco.image_ids[:max_images]), identity_view), cfg, seed)

    def load_teacher() -> nn.Module:
        return model_from_checkpoint_state(state, checkpoint, weights="teacher", device=dev).model

    pseudo = _pseudo_labels(load_teacher, sources, dev, thr, pseudo_labels, len(classes))
    state.clear()  # the weights are loaded: free the checkpoint
    fill = [round(255 * v) for v in student.transform.image_mean]  # MixPL fills with the mean
    samples = _student_samples(sources, pseudo, chosen, cfg, fill, seed)
    return GradStats(
        checkpoint=str(checkpoint),
        detector=cfg.detector.name,
        score_thr=thr,
        num_images=len(sources),
        bins=bins,
        bin_edges=torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64).tolist(),
        seed=seed,
        views=[_tally_view(student, samples[name], dev, bins).stats(name) for name in chosen],
    )
