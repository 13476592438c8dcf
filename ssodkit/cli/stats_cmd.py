"""`ssodkit stats pseudo`, `stats data` and `stats grad`: why pseudo-labels help or hurt.

The commands live on the `stats_app` sub-app, one group for every diagnostic. The figures are
computed by `ssodkit.stats`; this module only parses, prints and writes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ssodkit.cli.output import console
from ssodkit.cli.tables import pct
from ssodkit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from ssodkit.stats.calibrate import Calibration
    from ssodkit.stats.data import DataStats
    from ssodkit.stats.grad import GradStats
    from ssodkit.stats.pseudo import PseudoStats

stats_app = typer.Typer(
    help="Diagnostics: pseudo-labels against hidden ground truth, data set profiles, gradient density.",
    no_args_is_help=True,
)

DEFAULT_SWEEP = "0.05:0.95:0.05"
DEFAULT_PRECISION = 0.8  # as ssodkit.stats.calibrate's; not imported, to keep `--help` light
DEFAULT_MIN_BOXES = 10
TABLE_IOUS = (0.5, 0.75)  # the sweep table's IoU columns, besides --iou
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
SPARK_FLOOR = 1e-6  # the lowest density a sparkline block shows (▁); below it, a blank


def register(app: typer.Typer) -> None:
    app.add_typer(stats_app, name="stats")


# --------------------------------------------------------------------------- parsing
def parse_thresholds(text: str) -> list[float]:
    """`start:stop:step` (stop included) or a comma list, e.g. `0.05:0.95:0.05` or `0.3,0.5`.

    Grid values are rounded to 10 decimals so that 0.05·3 is 0.15, the threshold a user
    typed, not 0.15000000000000002 (which a score of exactly 0.15 would miss)."""
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            return [round(start + i * step, 10) for i in range(count)]
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"--thresholds '{text}': expected start:stop:step with stop ≥ start and step > 0, "
            "or a comma list of numbers"
        ) from None


# --------------------------------------------------------------------------- formatting
def _ratio(pseudo: int, gt: int) -> str:
    return "-" if gt == 0 else f"{pseudo / gt:.2f}"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _summary_table(stats: PseudoStats) -> Table:
    im = stats.images
    table = Table(title="pseudo-labels vs ground truth", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("images", str(stats.num_images))
    table.add_row("detections (any score)", str(stats.num_detections))
    table.add_row(
        f"pseudo boxes (score > {stats.score_thr:g})",
        f"{stats.num_pseudo}  (per image: mean {_num(im.mean_pseudo)}, "
        f"median {_num(im.median_pseudo, 1)})",
    )
    table.add_row(
        "GT boxes (non-crowd)",
        f"{stats.num_gt}  (per image: mean {_num(im.mean_gt)}, median {_num(im.median_gt, 1)})",
    )
    table.add_row("GT crowd regions", str(stats.num_crowd))
    table.add_row("images without pseudo / GT", f"{im.no_pseudo} / {im.no_gt}")
    table.add_row("images with GT, no pseudo", f"{im.missed} (train as background)")
    table.add_row("images with pseudo, no GT", str(im.hallucinated))
    at, best = stats.at_score_thr, stats.best_f1
    table.add_row(
        f"P / R / F1 (IoU {stats.iou:g})",
        f"{pct(at.precision)} / {pct(at.recall)} / {pct(at.f1)} %",
    )
    table.add_row("TP / FP / FN / on crowd", f"{at.tp} / {at.fp} / {at.fn} / {at.ignored}")
    if best is not None:
        table.add_row(
            f"best F1 (IoU {stats.iou:g})",
            f"{pct(best.f1)} % at score > {best.threshold:g} "
            f"(P {pct(best.precision)}, R {pct(best.recall)})",
        )
    return table


def _sizes_table(stats: PseudoStats) -> Table:
    table = Table(
        title="by COCO size bucket",
        caption="area: box w·h for pseudo boxes, annotation 'area' for GT (as COCOeval)",
    )
    for column in ("bucket", "GT", "pseudo", "pseudo/GT", "mean score"):
        table.add_column(column, justify="left" if column == "bucket" else "right")
    for s in stats.sizes:
        ratio = _ratio(s.pseudo, s.gt)
        table.add_row(s.bucket, str(s.gt), str(s.pseudo), ratio, _num(s.mean_score))
    return table


def _classes_table(stats: PseudoStats) -> Table:
    table = Table(
        title=f"by class, most GT first (%, IoU {stats.iou:g}, score > {stats.score_thr:g})"
    )
    table.add_column("class")
    for column in ("GT", "pseudo", "pseudo/GT", "P", "R", "best thr", "best F1"):
        table.add_column(column, justify="right")
    for c in stats.classes:
        best = c.best_f1
        table.add_row(
            escape(c.name),
            str(c.gt),
            str(c.pseudo),
            _ratio(c.pseudo, c.gt),
            pct(c.at_score_thr.precision),
            pct(c.at_score_thr.recall),
            "-" if best is None else f"{best.threshold:g}",
            pct(None if best is None else best.f1),
        )
    return table


def _sweep_table(stats: PseudoStats) -> Table:
    sweeps = [s for s in stats.sweeps if s.iou in {*TABLE_IOUS, stats.iou}]
    main = next(s for s in sweeps if s.iou == stats.iou)
    table = Table(title="precision / recall of all detections by score threshold (%)")
    table.add_column("score >", justify="right")
    table.add_column("boxes", justify="right")
    for s in sweeps:
        table.add_column(f"P@{s.iou:g}", justify="right")
        table.add_column(f"R@{s.iou:g}", justify="right")
    table.add_column(f"F1@{stats.iou:g}", justify="right")
    for j, point in enumerate(main.points):
        cells = [f"{point.threshold:g}", str(point.tp + point.fp + point.ignored)]
        for s in sweeps:
            cells += [pct(s.points[j].precision), pct(s.points[j].recall)]
        table.add_row(*cells, pct(point.f1))
    return table


def _images_table(stats: PseudoStats) -> Table | None:
    rows = [("over", c) for c in stats.images.over_labelled]
    rows += [("under", c) for c in stats.images.under_labelled]
    if not rows:
        return None
    table = Table(title="most over- and under-labelled images")
    for column in ("", "file", "image id", "pseudo", "GT"):
        table.add_column(column, justify="left" if column in ("", "file") else "right")
    for kind, c in rows:
        table.add_row(kind, escape(c.file_name), str(c.image_id), str(c.pseudo), str(c.gt))
    return table


def _data_tables(stats: DataStats) -> list[Table]:
    bpi = stats.boxes_per_image
    summary = Table(title=f"data set {escape(stats.source or '')}", show_header=False)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    summary.add_row("images", str(stats.num_images))
    summary.add_row("boxes (non-crowd)", str(stats.num_boxes))
    summary.add_row("crowd regions", str(stats.num_crowd))
    summary.add_row("images without boxes", str(stats.images_without_boxes))
    summary.add_row(
        "boxes per image", f"mean {_num(bpi.mean)}, median {_num(bpi.median, 1)}, max {bpi.max}"
    )
    for bucket, n in stats.sizes.items():
        summary.add_row(f"{bucket} boxes", str(n))
    classes = Table(title="by class, most boxes first")
    classes.add_column("class")
    for column in ("boxes", "images", "small", "medium", "large"):
        classes.add_column(column, justify="right")
    for c in stats.classes:
        counts = (c.boxes, c.images, c.small, c.medium, c.large)
        classes.add_row(escape(c.name), *map(str, counts))
    return [summary, classes]


def repeat_factor_table(stats: DataStats) -> Table:
    """Class, images containing it, ``f(c)`` and ``r(c)`` (``-`` for an absent class, never
    sampled); rarest first, so the classes resampling repeats most lead."""
    table = Table(
        title=f"Labeled Resampling (t = {stats.resampling.t:g}, {stats.num_images} images)"
    )
    table.add_column("class")
    for column in ("images", "f(c)", "r(c)"):
        table.add_column(column, justify="right")
    for c in sorted(stats.classes, key=lambda c: (c.images, c.category_id)):
        frequency = c.images / stats.num_images if stats.num_images else 0.0
        table.add_row(c.name, str(c.images), f"{frequency:.4f}", _num(c.repeat_factor))
    return table


def _sparkline(density: list[float]) -> str:
    """One block per bin on a log scale from SPARK_FLOOR (▁) to 1 (█), blank where empty or
    below the floor: TN's mass sits in the first bin by orders of magnitude, so a linear
    scale would show one block and nothing else."""
    chars = []
    for value in density:
        if value < SPARK_FLOOR:
            chars.append(" ")
            continue
        level = 1.0 - math.log10(value) / math.log10(SPARK_FLOOR)  # 0 at the floor, 1 at 1
        chars.append(SPARK_BLOCKS[min(len(SPARK_BLOCKS) - 1, int(level * len(SPARK_BLOCKS)))])
    return "".join(chars)


def _grad_table(stats: GradStats) -> Table:
    edges = stats.bin_edges
    table = Table(
        title=f"GHM gradient norm g = |σ(x) − y_pseudo| of the student's classification logits "
        f"(pseudo: score > {stats.score_thr:g}, {stats.num_images} images)",
        caption=f"anchor × class elements; density: {stats.bins} bins over [0, 1], "
        f"log scale (▁ {SPARK_FLOOR:g} … █ 1)",
    )
    table.add_column("view")
    table.add_column("group")
    for column in ("count", "mean g", "Σg %", f"g<{edges[1]:g} %", f"g≥{edges[-2]:g} %"):
        table.add_column(column, justify="right")
    table.add_column("density")
    for view in stats.views:
        for i, g in enumerate(view.groups):
            table.add_row(
                view.view if i == 0 else "", g.group, str(g.count), _num(g.mean_g, 3),
                pct(g.share), pct(g.density[0] if g.count else None),
                pct(g.density[-1] if g.count else None), _sparkline(g.density),
                end_section=i == len(view.groups) - 1,
            )
    return table


# --------------------------------------------------------------------------- commands
@stats_app.command("pseudo")
def pseudo(
    pseudo_path: Annotated[
        Path | None,
        typer.Option(
            "--pseudo",
            help="Pseudo-labels: a COCO results JSON (with --calibrate: detections on labeled images).",
        ),
    ] = None,
    gt: Annotated[
        Path | None,
        typer.Option(
            "--gt",
            help="Hidden ground truth: COCO JSON (with --calibrate: the labeled images; default "
            "the run's labeled split).",
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="Image folder; with --plots, draws the most over- and under-labelled images "
            "(with --calibrate: the image root of --gt).",
        ),
    ] = None,
    score_thr: Annotated[
        float | None,
        typer.Option(
            "--score-thr",
            help="Pseudo boxes are detections with score > this (the rule training uses); default "
            "0.5. With --calibrate: the global τ of classes too rare to calibrate (default: the "
            "run's τ).",
        ),
    ] = None,
    out_json: Annotated[
        Path | None, typer.Option("--json", help="Write every figure to this JSON file.")
    ] = None,
    plots: Annotated[Path | None, typer.Option("--plots", help="Write PNG figures here.")] = None,
    iou: Annotated[
        float, typer.Option("--iou", help="IoU of the summary, per-class and best-F1 figures.")
    ] = 0.5,
    thresholds: Annotated[
        str,
        typer.Option("--thresholds", help="Score thresholds to sweep: start:stop:step or a,b,c."),
    ] = DEFAULT_SWEEP,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate",
            help="Per-class τ instead: the lowest τ_c at which class c's pseudo-labels on labeled "
            "images reach --precision; writes a method.class_score_thr YAML snippet.",
        ),
    ] = False,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="With --calibrate: a run folder or checkpoint whose teacher labels the labeled images.",
        ),
    ] = None,
    precision: Annotated[
        float, typer.Option("--precision", help="With --calibrate: target pseudo-label precision at IoU --iou.")
    ] = DEFAULT_PRECISION,
    min_boxes: Annotated[
        int,
        typer.Option("--min-boxes", help="With --calibrate: classes with fewer GT boxes keep the global τ."),
    ] = DEFAULT_MIN_BOXES,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="With --calibrate: write the YAML snippet here (else print it)."),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="With --calibrate --checkpoint: auto, cpu, cuda or cuda:N.")
    ] = "auto",
) -> None:
    """Pseudo-labels against hidden GT: counts, sizes, classes, precision/recall by threshold.

    Matching is COCOeval's (greedy by descending score, per image and class; a detection on a
    crowd region is neither TP nor FP), at IoU 0.5, 0.75 and --iou.

    With --calibrate: per-class thresholds for a target precision, from a run's teacher on
    its labeled images (--checkpoint) or from detections on labeled images (--pseudo, --gt).
    """
    if calibrate:
        if plots is not None or thresholds != DEFAULT_SWEEP:
            raise ConfigError("--plots and --thresholds do not apply with --calibrate")
        _calibrate(
            pseudo_path, gt, images, checkpoint, score_thr=score_thr, precision=precision,
            min_boxes=min_boxes, iou=iou, out=out, out_json=out_json, device=device,
        )
        return
    if checkpoint is not None or out is not None:
        raise ConfigError("--checkpoint and --out apply with --calibrate only")
    if pseudo_path is None or gt is None:
        raise ConfigError("give --pseudo (pseudo-labels) and --gt (their hidden ground truth), or --calibrate")
    from ssodkit.data.coco import CHECK_REMEDY, load_coco, load_results
    from ssodkit.io import write_json_atomic
    from ssodkit.stats.pseudo import compute_pseudo_stats

    score_thr = 0.5 if score_thr is None else score_thr
    score_thresholds = parse_thresholds(thresholds)
    if images is not None and not images.is_dir():
        raise DataError(f"{images}: not a folder of images")
    coco = load_coco(gt, images, check_images="none", remedy=CHECK_REMEDY)
    results = load_results(pseudo_path, coco)
    stats = compute_pseudo_stats(
        coco, results, score_thr=score_thr, iou=iou, score_thresholds=score_thresholds
    )
    stdout = console()
    tables = (_summary_table, _sizes_table, _classes_table, _sweep_table, _images_table)
    for make_table in tables:
        table = make_table(stats)
        if table is not None:
            stdout.print(table)
    if out_json is not None:
        stdout.print(f"wrote {write_json_atomic(out_json, stats.model_dump(mode='json'))}")
    if plots is not None:
        from ssodkit.plots import write_pseudo_plots

        written = write_pseudo_plots(
            stats, plots, coco=coco if images is not None else None, results=results
        )
        stdout.print(f"wrote {len(written)} plots to {plots}")


def _calibration_table(cal: Calibration) -> Table:
    from ssodkit.stats.calibrate import status_note

    source = f" of {escape(Path(cal.source).name)}" if cal.source else ""
    table = Table(
        title=f"per-class τ for pseudo-label precision ≥ {cal.target_precision:g} at IoU {cal.iou:g} "
        f"({cal.num_images} labeled images{source})",
        caption=f"global τ {cal.global_thr:g}" + (f" ({cal.global_thr_from})" if cal.global_thr_from else "")
        + f"; pseudo boxes: score > τ; classes with < {cal.min_boxes} GT boxes keep the global τ",
    )
    table.add_column("class")
    for column in ("GT", "boxes", "τ", "kept", "P %", "R %"):
        table.add_column(column, justify="right")
    table.add_column("how")
    for c in cal.classes:
        style = "" if c.status == "calibrated" else "yellow"
        table.add_row(
            escape(c.name), str(c.gt), str(c.detections), f"{c.threshold:.4g}", str(c.kept),
            pct(c.precision), pct(c.recall), escape(status_note(c, cal)), style=style,
        )
    return table


def _calibrate(
    pseudo_path: Path | None,
    gt: Path | None,
    images: Path | None,
    checkpoint: Path | None,
    *,
    score_thr: float | None,
    precision: float,
    min_boxes: int,
    iou: float,
    out: Path | None,
    out_json: Path | None,
    device: str,
) -> None:
    from ssodkit.io import write_json_atomic
    from ssodkit.stats import calibrate as calib

    calib.check_calibration_args(precision, min_boxes)
    if (pseudo_path is None) == (checkpoint is None):
        raise ConfigError(
            "--calibrate needs --checkpoint (a run folder or .pt, whose teacher labels the labeled "
            "images) or --pseudo with --gt (detections on labeled images), not both"
        )
    for path in (out, out_json):
        if path is not None and path.is_dir():
            raise ConfigError(f"{path}: is a directory; give a file path")
    if checkpoint is not None:
        cal = calib.calibrate_checkpoint(
            checkpoint, ann=gt, images=images, precision=precision, min_boxes=min_boxes,
            global_thr=score_thr, iou=iou, device=device, progress=True,
        )
    else:
        if gt is None:
            raise ConfigError("--calibrate --pseudo needs --gt: the labeled images' COCO JSON")
        from ssodkit.data.coco import CHECK_REMEDY, load_coco, load_results

        coco = load_coco(gt, images, check_images="none", remedy=CHECK_REMEDY)
        cal = calib.calibrate_thresholds(
            coco, load_results(pseudo_path, coco), precision=precision, min_boxes=min_boxes, iou=iou,
            global_thr=0.5 if score_thr is None else score_thr,
        ).model_copy(update={"source": str(gt), "global_thr_from": "default" if score_thr is None else "given"})
    stdout = console()
    stdout.print(_calibration_table(cal))
    if out is not None:
        stdout.print(f"wrote {escape(str(calib.write_calibration(cal, out)))}")
    else:
        stdout.print(calib.calibration_yaml(cal), markup=False, highlight=False, end="")
    if out_json is not None:
        stdout.print(f"wrote {write_json_atomic(out_json, cal.model_dump(mode='json'))}")


@stats_app.command("data")
def data(
    ann: Annotated[Path, typer.Option("--ann", help="COCO instance JSON.")],
    resampling_t: Annotated[
        float,
        typer.Option("--resampling-t", help="Labeled Resampling threshold t (0: no resampling)."),
    ] = 0.001,
    out_json: Annotated[
        Path | None, typer.Option("--json", help="Write every figure to this JSON file.")
    ] = None,
    plots: Annotated[Path | None, typer.Option("--plots", help="Write PNG figures here.")] = None,
) -> None:
    """Class and size profile of a COCO file and the Labeled Resampling factors it would get."""
    from ssodkit.data.coco import CHECK_REMEDY, load_coco
    from ssodkit.io import write_json_atomic
    from ssodkit.stats.data import compute_data_stats

    coco = load_coco(ann, check_images="none", remedy=CHECK_REMEDY)
    stats = compute_data_stats(coco, resampling_t=resampling_t)
    stdout = console()
    for table in _data_tables(stats):
        stdout.print(table)
    stdout.print(repeat_factor_table(stats))
    r = stats.resampling
    stdout.print(
        f"Labeled Resampling: {r.images_repeated} of {stats.num_images} images repeated, "
        f"an epoch draws {r.epoch_images:.1f} images (max r(I) {_num(r.max_factor)})"
    )
    if out_json is not None:
        stdout.print(f"wrote {write_json_atomic(out_json, stats.model_dump(mode='json'))}")
    if plots is not None:
        from ssodkit.plots import write_data_plots

        written = write_data_plots(stats, plots)
        stdout.print(f"wrote {len(written)} plots to {plots}")


@stats_app.command("grad")
def grad(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Checkpoint of a dense detector.")],
    ann: Annotated[Path, typer.Option("--ann", help="Ground truth of the images: COCO JSON.")],
    images: Annotated[Path, typer.Option("--images", help="Image folder of --ann.")],
    views: Annotated[
        str, typer.Option("--views", help="Comma list of student views: weak, strong, mixup, mosaic.")
    ] = "weak,strong,mixup,mosaic",
    score_thr: Annotated[
        float | None,
        typer.Option(
            "--score-thr",
            help="Pseudo labels: teacher detections with score > this (default: the run's τ, "
            "else the detector's).",
        ),
    ] = None,
    max_images: Annotated[int, typer.Option("--max-images", help="Use the first N images.")] = 50,
    bins: Annotated[int, typer.Option("--bins", help="Equal bins of g over [0, 1].")] = 10,
    out_json: Annotated[
        Path | None, typer.Option("--json", help="Write every figure to this JSON file.")
    ] = None,
    plots: Annotated[Path | None, typer.Option("--plots", help="Write PNG figures here.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the views, mixup pairs and mosaics.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Gradient-norm density of TP / FP / FN / TN elements under pseudo labels (MixPL Fig. 6).

    The teacher labels a weak view of each image; the student's dense classification logits
    on each view are assigned by the detector's own matcher to the pseudo labels and to the
    GT. g = |σ(x) − y_pseudo| (the BCE gradient under the pseudo target) is binned per group:
    a heavy FN tail is the student being taught to miss objects. Dense detectors only
    (RetinaNet, FCOS).
    """
    from ssodkit.io import write_json_atomic
    from ssodkit.stats.grad import gradient_density

    stats = gradient_density(
        checkpoint, ann, images, views=[v.strip() for v in views.split(",") if v.strip()],
        score_thr=score_thr, max_images=max_images, bins=bins, seed=seed, device=device,
    )
    stdout = console()
    stdout.print(_grad_table(stats))
    if out_json is not None:
        stdout.print(f"wrote {write_json_atomic(out_json, stats.model_dump(mode='json'))}")
    if plots is not None:
        from ssodkit.plots import write_grad_plots

        written = write_grad_plots(stats, plots)
        stdout.print(f"wrote {len(written)} plots to {plots}")
