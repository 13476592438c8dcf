"""PNG figures of `PseudoStats`, `DataStats` and `GradStats`.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot: no global backend is
switched (a notebook that imports ssodkit keeps its own), nothing needs a display, and no
figure lingers in pyplot's registry after it is saved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ssodkit.data.coco import CocoDataset
from ssodkit.data.images import load_image
from ssodkit.stats.data import DataStats
from ssodkit.stats.pseudo import SIZE_BUCKETS, OperatingPoint, PseudoStats, ThresholdSweep

if TYPE_CHECKING:  # grad pulls in torch; these figures only need its result models
    from ssodkit.detectors.protocol import Detections
    from ssodkit.stats.grad import GradStats, ViewStats

PSEUDO_COLOUR, GT_COLOUR = "tab:red", "tab:green"
CURVE_IOUS = (0.5, 0.75, 0.95)  # a few IoUs keep the curves readable
MAX_CLASS_LABELS = 100  # beyond this, tick labels overlap into a black band
EXAMPLES_PER_KIND = 3
GROUP_COLOURS = {"TP": "tab:green", "FP": "tab:red", "FN": "tab:orange", "TN": "tab:blue"}


def _figure(width: float, height: float, *, ncols: int = 1) -> tuple[Figure, np.ndarray]:
    """A figure on an Agg canvas and its axes, one row, as a `[1, ncols]` array."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _paired_bars(ax: Axes, labels: Sequence[str], pseudo: Sequence[int], gt: Sequence[int]) -> None:
    """Pseudo and GT counts side by side per label."""
    x = np.arange(len(labels))
    ax.bar(x - 0.2, gt, width=0.4, label="GT", color=GT_COLOUR)
    ax.bar(x + 0.2, pseudo, width=0.4, label="pseudo", color=PSEUDO_COLOUR)
    ax.set_xticks(x, labels if len(labels) <= MAX_CLASS_LABELS else [""] * len(labels))
    ax.set_ylabel("boxes")
    ax.legend()


# --------------------------------------------------------------------------- pseudo-labels
def plot_sizes(stats: PseudoStats, path: Path) -> Path:
    """Pseudo vs GT per COCO size bucket, with the mean pseudo score under each bucket."""
    fig, axes = _figure(6, 4)
    labels = [
        f"{s.bucket}\nmean score {'-' if s.mean_score is None else f'{s.mean_score:.2f}'}"
        for s in stats.sizes
    ]
    _paired_bars(axes[0, 0], labels, [s.pseudo for s in stats.sizes], [s.gt for s in stats.sizes])
    axes[0, 0].set_title(f"boxes per size bucket (pseudo: score > {stats.score_thr:g})")
    return _save(fig, path)


def plot_classes(stats: PseudoStats, path: Path) -> Path:
    """Pseudo vs GT per class, most GT first, so that a starved tail shows at the right."""
    n = len(stats.classes)
    fig, axes = _figure(min(max(6.0, 0.35 * n + 2), 30.0), 4.5)
    ax = axes[0, 0]
    classes = stats.classes
    names = [c.name for c in classes]
    _paired_bars(ax, names, [c.pseudo for c in classes], [c.gt for c in classes])
    ax.tick_params(axis="x", labelrotation=90)
    ax.set_title(f"boxes per class, by GT frequency (pseudo: score > {stats.score_thr:g})")
    return _save(fig, path)


def _curve_sweeps(stats: PseudoStats) -> list[ThresholdSweep]:
    return [s for s in stats.sweeps if s.iou in {*CURVE_IOUS, stats.iou}]


def _values(points: Sequence[OperatingPoint], field: str) -> np.ndarray:
    """A field of each point, NaN where undefined (matplotlib leaves a gap)."""
    return np.array([np.nan if getattr(p, field) is None else getattr(p, field) for p in points])


def plot_pr_curves(stats: PseudoStats, path: Path) -> Path:
    """Precision and recall of the pseudo boxes against the score threshold, a line per IoU."""
    fig, axes = _figure(10, 4, ncols=2)
    for ax, field in zip(axes[0], ("precision", "recall"), strict=True):
        for sweep in _curve_sweeps(stats):
            thresholds = [p.threshold for p in sweep.points]
            values = _values(sweep.points, field)
            ax.plot(thresholds, values, marker=".", label=f"IoU {sweep.iou:g}")
        ax.axvline(stats.score_thr, color="grey", linestyle="--", label="--score-thr")
        ax.set(xlabel="score threshold", ylabel=field, ylim=(0, 1.02), title=f"{field} vs score")
        ax.legend()
    return _save(fig, path)


def plot_f1(stats: PseudoStats, path: Path) -> Path:
    """F1 against the score threshold, with the F1-best threshold at the stats' IoU marked."""
    fig, axes = _figure(6, 4)
    ax = axes[0, 0]
    for sweep in _curve_sweeps(stats):
        thresholds = [p.threshold for p in sweep.points]
        ax.plot(thresholds, _values(sweep.points, "f1"), marker=".", label=f"IoU {sweep.iou:g}")
    best = stats.best_f1
    if best is not None and best.f1 is not None:
        label = f"best {best.f1:.2f} at {best.threshold:g} (IoU {stats.iou:g})"
        ax.plot([best.threshold], [best.f1], "k*", markersize=12, label=label)
    ax.axvline(stats.score_thr, color="grey", linestyle="--", label="--score-thr")
    ax.set(xlabel="score threshold", ylabel="F1", ylim=(0, 1.02), title="F1 vs threshold")
    ax.legend()
    return _save(fig, path)


def plot_examples(
    coco: CocoDataset,
    results: Sequence[Mapping[str, Any]],
    stats: PseudoStats,
    path: Path,
) -> Path | None:
    """The most over- and under-labelled images with GT (green) and pseudo (red) boxes;
    None when no image has more pseudo than GT boxes or fewer."""
    chosen = [
        *(("over", c) for c in stats.images.over_labelled[:EXAMPLES_PER_KIND]),
        *(("under", c) for c in stats.images.under_labelled[:EXAMPLES_PER_KIND]),
    ]
    if not chosen:
        return None
    pseudo: dict[int, list[list[float]]] = {c.image_id: [] for _, c in chosen}
    for r in results:  # one pass: a results file can hold millions of boxes
        if r["image_id"] in pseudo and r["score"] >= stats.score_thr:
            pseudo[r["image_id"]].append(r["bbox"])
    fig, axes = _figure(4.0 * len(chosen), 4.4, ncols=len(chosen))
    for ax, (kind, count) in zip(axes[0], chosen, strict=True):
        _draw_example(ax, coco, count.image_id, pseudo[count.image_id])
        title = f"{kind}: {count.file_name}\npseudo {count.pseudo} / GT {count.gt}"
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"GT solid green, pseudo (score > {stats.score_thr:g}) dashed red")
    return _save(fig, path)


def _draw_example(
    ax: Axes, coco: CocoDataset, image_id: int, pseudo_xywh: list[list[float]]
) -> None:
    ax.imshow(load_image(coco.image_path(image_id)))
    gt_boxes, _ = coco.training_targets(image_id)
    for x1, y1, x2, y2 in gt_boxes.tolist():
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=GT_COLOUR, lw=1.5))
    for x, y, w, h in pseudo_xywh:
        ax.add_patch(Rectangle((x, y), w, h, fill=False, color=PSEUDO_COLOUR, lw=1.2, ls="--"))
    ax.axis("off")



# --------------------------------------------------------------------------- a run's samples
SAMPLE_MIN_SCORE = 0.1  # filtered boxes below this are not drawn (the detector keeps 100 per image)
SAMPLE_MAX_FILTERED = 20  # the highest-scoring filtered boxes per image


def plot_sample_grid(
    coco: CocoDataset,
    drawn: Sequence[tuple[int, Detections, Detections]],
    classes: Sequence[str],
    path: Path,
    title: str = "",
) -> Path:
    """What the teacher teaches: per image (`image_id`, every detection, the kept ones),
    kept pseudo boxes solid with class and score, filtered ones (score ≥ SAMPLE_MIN_SCORE,
    at most SAMPLE_MAX_FILTERED) dashed and thin, one colour per class. Saved as JPEG or
    PNG by `path`'s suffix."""
    colours = [matplotlib.colormaps["tab10"](i % 10) for i in range(max(1, len(classes)))]
    fig, axes = _figure(3.2 * max(1, len(drawn)), 3.6, ncols=max(1, len(drawn)))
    for ax, (image_id, every, kept) in zip(axes[0], drawn, strict=False):
        ax.imshow(load_image(coco.image_path(image_id)))
        order = every.scores.argsort(descending=True)
        shown = [int(i) for i in order if float(every.scores[i]) >= SAMPLE_MIN_SCORE][:SAMPLE_MAX_FILTERED]
        for i in shown:
            x1, y1, x2, y2 = every.boxes[i].tolist()
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=0.8, ls="--",
                                   color=colours[int(every.labels[i]) % len(colours)]))
        for box, score, label in zip(kept.boxes.tolist(), kept.scores.tolist(), kept.labels.tolist(), strict=True):
            x1, y1, x2, y2 = box
            colour = colours[int(label) % len(colours)]
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.6, color=colour))
            name = classes[int(label)] if int(label) < len(classes) else str(label)
            ax.text(x1, y1, f"{name} {score:.2f}", fontsize=6, color="white", va="bottom",
                    bbox={"facecolor": colour, "pad": 0.5, "lw": 0})
        ax.set_title(f"{coco.image(image_id).file_name}: {len(kept.boxes)} kept / {len(shown)} shown", fontsize=7)
        ax.axis("off")
    fig.suptitle(title or "teacher's pseudo-labels: kept solid, filtered dashed", fontsize=9)
    return _save(fig, path)

def write_pseudo_plots(
    stats: PseudoStats,
    out_dir: Path,
    *,
    coco: CocoDataset | None = None,
    results: Sequence[Mapping[str, Any]] = (),
) -> list[Path]:
    """All pseudo-label figures into `out_dir`; the example images only when `coco` (whose
    image root holds the images) is given."""
    paths = [
        plot_sizes(stats, out_dir / "pseudo_sizes.png"),
        plot_classes(stats, out_dir / "pseudo_classes.png"),
        plot_pr_curves(stats, out_dir / "pseudo_pr_curves.png"),
        plot_f1(stats, out_dir / "pseudo_f1.png"),
    ]
    if coco is not None:
        example = plot_examples(coco, results, stats, out_dir / "pseudo_examples.png")
        paths += [example] if example is not None else []
    return paths


# --------------------------------------------------------------------------- data sets
def plot_data_classes(stats: DataStats, path: Path) -> Path:
    """Boxes and images per class, most boxes first (the long tail at the right)."""
    n = len(stats.classes)
    fig, axes = _figure(min(max(6.0, 0.35 * n + 2), 30.0), 4.5)
    ax = axes[0, 0]
    x = np.arange(n)
    ax.bar(x - 0.2, [c.boxes for c in stats.classes], width=0.4, label="boxes")
    ax.bar(x + 0.2, [c.images for c in stats.classes], width=0.4, label="images")
    names = [c.name for c in stats.classes]
    ax.set_xticks(x, names if n <= MAX_CLASS_LABELS else [""] * n)
    ax.tick_params(axis="x", labelrotation=90)
    ax.set(ylabel="count", title="boxes and images per class")
    ax.legend()
    return _save(fig, path)


def plot_data_sizes(stats: DataStats, path: Path) -> Path:
    """Boxes per COCO size bucket."""
    fig, axes = _figure(5, 4)
    ax = axes[0, 0]
    ax.bar(SIZE_BUCKETS, [stats.sizes[b] for b in SIZE_BUCKETS], color="tab:blue")
    ax.set(ylabel="boxes", title="boxes per size bucket")
    return _save(fig, path)


def plot_boxes_per_image(stats: DataStats, path: Path) -> Path:
    """How many images have 0, 1, 2 … boxes."""
    fig, axes = _figure(6, 4)
    ax = axes[0, 0]
    hist = stats.boxes_per_image.histogram
    ax.bar(np.arange(len(hist)), hist, color="tab:blue")
    ax.set(xlabel="boxes in the image", ylabel="images", title="boxes per image")
    return _save(fig, path)


def write_data_plots(stats: DataStats, out_dir: Path) -> list[Path]:
    """All data-set figures into `out_dir`."""
    return [
        plot_data_classes(stats, out_dir / "data_classes.png"),
        plot_data_sizes(stats, out_dir / "data_sizes.png"),
        plot_boxes_per_image(stats, out_dir / "data_boxes_per_image.png"),
    ]


# --------------------------------------------------------------------------- gradient density
def _grad_axes(ax: Axes, view: ViewStats, edges: Sequence[float]) -> None:
    """The four groups' densities of one view at the bin centres, log y (TN dwarfs the rest);
    empty bins leave a gap, empty groups no line."""
    e = np.asarray(edges)
    centres = (e[:-1] + e[1:]) / 2
    for group in view.groups:
        if group.count:
            d = np.asarray(group.density)
            ax.plot(centres, np.where(d > 0, d, np.nan), marker="o", color=GROUP_COLOURS[group.group],
                    label=f"{group.group} ({group.count})")
    ax.set_yscale("log")
    ax.set(xlim=(0, 1), xlabel="gradient norm g = |σ(x) − y_pseudo|", ylabel="fraction of group",
           title=f"{view.view} ({view.images} images)")
    ax.legend(fontsize=8)


def plot_grad_view(stats: GradStats, view: ViewStats, path: Path) -> Path:
    """One view's gradient-norm density per group."""
    fig, axes = _figure(6, 4)
    _grad_axes(axes[0, 0], view, stats.bin_edges)
    return _save(fig, path)


def plot_grad_views(stats: GradStats, path: Path) -> Path:
    """All views side by side on a shared y axis, to compare how mixing moves FN and FP."""
    n = len(stats.views)
    fig = Figure(figsize=(4.5 * n, 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False, sharey=True)
    for ax, view in zip(axes[0], stats.views, strict=True):
        _grad_axes(ax, view, stats.bin_edges)
    fig.suptitle(f"{stats.detector}: gradient-norm density (pseudo: score > {stats.score_thr:g})")
    return _save(fig, path)


def write_grad_plots(stats: GradStats, out_dir: Path) -> list[Path]:
    """`grad_<view>.png` per view and `grad_views.png` with all of them."""
    paths = [plot_grad_view(stats, v, out_dir / f"grad_{v.view}.png") for v in stats.views]
    return [*paths, plot_grad_views(stats, out_dir / "grad_views.png")]
