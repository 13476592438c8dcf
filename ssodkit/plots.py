"""PNG figures of `PseudoStats`, `DataStats`, `GradStats` and of training runs (`results.csv` rows,
the sample grid): the one plotting module, shared by `ssodkit stats`, the trainer and
`ssodkit report`. It loads no `stats` module at import (their models are only type hints),
so that the training loop stays independent of the diagnostics.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot: no global backend is
switched (a notebook that imports ssodkit keeps its own), nothing needs a display, and no
figure lingers in pyplot's registry after it is saved.
"""

from __future__ import annotations

import os
import tempfile
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

if TYPE_CHECKING:  # only their result models: the trainer draws its figures without loading `stats`
    from ssodkit.stats.data import DataStats
    from ssodkit.stats.pseudo import OperatingPoint, PseudoStats, ThresholdSweep
    from ssodkit.detectors.protocol import Detections
    from ssodkit.stats.grad import GradStats, ViewStats

PSEUDO_COLOUR, GT_COLOUR = "tab:red", "tab:green"
CURVE_IOUS = (0.5, 0.75, 0.95)  # a few IoUs keep the curves readable
MAX_CLASS_LABELS = 100  # beyond this, tick labels overlap into a black band
EXAMPLES_PER_KIND = 3
GROUP_COLOURS = {"TP": "tab:green", "FP": "tab:red", "FN": "tab:orange", "TN": "tab:blue"}


def _figure(
    width: float, height: float, *, ncols: int = 1, nrows: int = 1
) -> tuple[Figure, np.ndarray]:
    """A figure on an Agg canvas and its axes as an `[nrows, ncols]` array."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig: Figure, path: Path) -> Path:
    """Save through a temp file in the same folder and rename it: a figure rewritten at each
    evaluation (results.png) is read by browsers and `report` while training runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, dpi=100, format=path.suffix.lstrip(".") or "png")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; figures are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
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
    from ssodkit.stats.pseudo import SIZE_BUCKETS

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


# --------------------------------------------------------------------------- training runs
ROLE_STYLES = {"teacher": "-", "student": "--"}  # line style per model, in overlays too
COLLAPSE_COLOUR = "tab:red"


def _series(rows: Sequence[Mapping[str, Any]], key: str, scale: float = 1.0) -> np.ndarray:
    """A `results.csv` column as floats, NaN where the cell is empty (matplotlib leaves a gap)."""
    return np.array(
        [np.nan if row.get(key) is None else scale * float(row[key]) for row in rows], dtype=float
    )


def _has(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).any())


def _no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")


def _map_panel(ax: Axes, rows: Sequence[Mapping[str, Any]], iters: np.ndarray) -> None:
    """Teacher and student mAP (×100), each model's best starred and the overall best labelled."""
    best: tuple[float, float, str] | None = None
    for role, style in ROLE_STYLES.items():
        values = _series(rows, f"{role}_map", 100.0)
        if not _has(values):
            continue  # no teacher in a supervised run
        (line,) = ax.plot(iters, values, style, marker="o", markersize=3, label=role)
        i = int(np.nanargmax(values))
        ax.plot([iters[i]], [values[i]], "*", color=line.get_color(), markersize=13)
        if best is None or values[i] > best[1]:
            best = (float(iters[i]), float(values[i]), role)
    if best is None:
        _no_data(ax, "no mAP evaluated")
    else:
        x, y, role = best
        ax.annotate(f"best {y:.1f} ({role} @ {x:g})", (x, y), textcoords="offset points",
                    xytext=(0, 9), ha="center", fontsize=8)
        ax.margins(y=0.15)  # room for the label above the best point
        ax.legend(fontsize=8, loc="lower right")
    ax.set(xlabel="iteration", ylabel="mAP (×100)", title="(a) COCO mAP")


def _loss_panel(ax: Axes, rows: Sequence[Mapping[str, Any]], iters: np.ndarray) -> None:
    shown = False
    for key, label in (("sup_loss", "supervised"), ("unsup_loss", "unsupervised")):
        values = _series(rows, key)
        if _has(values):
            ax.plot(iters, values, marker=".", label=label)
            shown = True
    if not shown and _has(total := _series(rows, "loss")):  # a log without named loss terms
        ax.plot(iters, total, marker=".", label="loss")
        shown = True
    if shown:
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "no loss logged")
    ax.set(xlabel="iteration", ylabel="mean loss since the previous evaluation",
           title="(b) training loss")


def _pseudo_count_panel(ax: Axes, rows: Sequence[Mapping[str, Any]], iters: np.ndarray) -> None:
    """Boxes per image beside the empty-image fraction on a twin axis: few boxes and many empty
    images together are the student being taught background."""
    per_image, empty = _series(rows, "pseudo_per_image"), _series(rows, "pseudo_empty_frac")
    ax.set(xlabel="iteration", ylabel="pseudo boxes per image", title="(c) pseudo-labels")
    if not (_has(per_image) or _has(empty)):
        _no_data(ax, "no pseudo-labels (supervised, or burn-in)")
        return
    ax.plot(iters, per_image, marker=".", color="tab:blue", label="boxes per image")
    ax.set_ylim(bottom=0)  # from zero: a 10 % dip must not look like a collapse
    twin = ax.twinx()
    twin.plot(iters, empty, marker=".", color="tab:orange", linestyle="--", label="empty-image fraction")
    twin.set(ylabel="empty-image fraction", ylim=(0, 1.02))
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8)


def _quality_panel(ax: Axes, rows: Sequence[Mapping[str, Any]], iters: np.ndarray) -> None:
    shown = False
    for source, colour in (("pseudo", "tab:green"), ("probe", "tab:purple")):
        for metric, style in (("precision50", "-"), ("recall50", "--")):
            values = _series(rows, f"{source}_{metric}")
            if _has(values):
                label = f"{source} {metric[:-2]}"
                ax.plot(iters, values, style, marker=".", color=colour, label=label)
                shown = True
    if shown:
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "no hidden or probe ground truth")
    ax.set(xlabel="iteration", ylabel="at IoU 0.5", ylim=(0, 1.02),
           title="(d) pseudo-label precision / recall")


def plot_results(
    rows: Sequence[Mapping[str, Any]], path: Path, title: str | None = None
) -> Path:
    """`results.png`: mAP, losses, pseudo-label counts and their quality against iteration,
    with a dotted line at each evaluation where the collapse watcher spoke — the four views
    that together tell a diverging run from a slow one. Empty cells leave gaps."""
    fig, axes = _figure(12, 8, nrows=2, ncols=2)
    iters = np.array([float(row["iter"]) for row in rows], dtype=float)
    _map_panel(axes[0, 0], rows, iters)
    _loss_panel(axes[0, 1], rows, iters)
    _pseudo_count_panel(axes[1, 0], rows, iters)
    _quality_panel(axes[1, 1], rows, iters)
    collapses = [float(row["iter"]) for row in rows if row.get("collapse")]
    for ax in axes.flat:
        if len(iters):  # one iteration range everywhere, though a panel's first cells are empty
            pad = 0.03 * (iters.max() - iters.min()) or 1.0
            ax.set_xlim(iters.min() - pad, iters.max() + pad)
        for x in collapses:
            ax.axvline(x, color=COLLAPSE_COLOUR, linestyle=":", linewidth=1.2)
    if collapses:
        fig.text(0.995, 0.005, "dotted red: collapse warning", ha="right", va="bottom",
                 fontsize=8, color=COLLAPSE_COLOUR)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_runs_overlay(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> Path:
    """mAP (×100) of several runs on one axis: a colour per run, teacher solid and student
    dashed, so that runs are compared at equal iterations rather than by their final rows."""
    fig, axes = _figure(9, 5.5)
    ax = axes[0, 0]
    shown = False
    for i, (name, rows) in enumerate(runs.items()):
        iters = np.array([float(row["iter"]) for row in rows], dtype=float)
        for role, style in ROLE_STYLES.items():
            values = _series(rows, f"{role}_map", 100.0)
            if _has(values):
                ax.plot(iters, values, style, marker=".", color=f"C{i % 10}", label=f"{name} {role}")
                shown = True
    if shown:
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "no mAP evaluated")
    ax.set(xlabel="iteration", ylabel="mAP (×100)", title="COCO mAP by run (teacher solid, student dashed)")
    return _save(fig, path)
