"""Mean Teacher with an oracle teacher: the unlabeled images' hidden ground truth as pseudo-labels.

    python benchmarks/diagnostics/oracle_teacher.py --mode MODE [--wrong P] -- TRAIN_OPTIONS
    python benchmarks/diagnostics/oracle_teacher.py --mode MODE [--wrong P] -- --resume RUN_DIR

TRAIN_OPTIONS are `ssodkit train`'s (`--config`, `--seed`, `--iters`, `--name`, `--runs-dir`,
`--init-from`, `--set k=v`, …; `-- --help` lists them), parsed by its own command, so a run
is set up, logged, checkpointed and resumed exactly as `ssodkit train` does it: the same run
folder (config.yaml, metrics.jsonl, checkpoints/, eval/) plus `oracle.json` naming the mode.
The method is always mean_teacher (`--method` defaults to it); `--name` defaults to
`oracle-MODE`. Resuming needs the same `--mode` and `--wrong` (oracle.json is checked).

MODE, what the teacher's boxes are replaced with (precision / recall of the pseudo-labels):
  oracle      all hidden boxes (100 % / 100 %)
  drop50      each box kept with probability 0.5 (100 % / 50 %)
  fp100       all boxes plus, for each, a copy moved by one box size in a random direction
              with a random class (50 % / 100 %)
  wrongclass  all boxes, a fraction P (`--wrong`, default 0.2) relabelled to a different class
              drawn uniformly: boxes exactly on real objects, class precision 1 − P. The
              teacher's most common error, measured (18 % of its kept boxes; 9 % duplicates,
              8 % poor boxes, 5 % background)
Together they say which kind of pseudo-label error costs a student what.

The seam: the method's `PseudoLabeler.predict` (the teacher's detections on the weak view)
is what changes — `OracleLabeler` returns the hidden boxes in weak-view pixels (score 1), and
the method's own filters, projection into the strong view and empty-image rule run
unchanged. Draws come from a generator seeded by (run seed, iteration, image ids), so a
resumed run draws what an uninterrupted one would. The run's `pseudo/*` quality metrics
still score the EMA teacher's own boxes; `pseudo_per_image` counts the oracle's.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ssodkit.data.coco import CocoDataset
from ssodkit.detectors.protocol import Detections
from ssodkit.errors import SsodkitError
from ssodkit.methods.base import ViewBatch
from ssodkit.pseudo.labeler import PseudoLabeler, PseudoLabelParams
from ssodkit.rng import derive_seed, seeded_generator
from ssodkit.views.geometry import warp_boxes

MODES = ("oracle", "drop50", "fp100", "wrongclass")
ORACLE_STREAM = 0x0AC1E  # keeps the oracle's draws apart from every other seeded stream
RECORD = "oracle.json"


# --------------------------------------------------------------------------- corruptions
def drop(boxes: Tensor, labels: Tensor, g: torch.Generator, keep: float = 0.5) -> tuple[Tensor, Tensor]:
    """Each box kept with probability `keep` (recall `keep`, precision 100 %)."""
    kept = torch.rand(len(boxes), generator=g) < keep
    return boxes[kept], labels[kept]


def add_displaced(
    boxes: Tensor, labels: Tensor, size: tuple[int, int], num_classes: int, g: torch.Generator
) -> tuple[Tensor, Tensor]:
    """All boxes plus, for each, a copy moved by one box size along x and y (random signs),
    clipped to the image, with a random class; copies under 2 px are left out."""
    wh = boxes[:, 2:] - boxes[:, :2]
    sign = torch.randint(0, 2, boxes[:, :2].shape, generator=g) * 2 - 1
    moved = boxes + (wh * sign).repeat(1, 2)
    h, w = size
    moved[:, 0::2] = moved[:, 0::2].clamp(0, w)
    moved[:, 1::2] = moved[:, 1::2].clamp(0, h)
    ok = ((moved[:, 2:] - moved[:, :2]) > 2).all(1)
    fake = torch.randint(0, num_classes, (len(boxes),), generator=g)
    return torch.cat([boxes, moved[ok]]), torch.cat([labels, fake[ok]])


def relabel(labels: Tensor, fraction: float, num_classes: int, g: torch.Generator) -> Tensor:
    """`labels` with k of them moved to a different class, drawn uniformly from the other
    K − 1; k = P·n stochastically rounded (⌊P·n⌋ or ⌈P·n⌉, expected P·n), the boxes chosen
    uniformly. Exactly k labels differ from the input."""
    n = len(labels)
    k = int(fraction * n + float(torch.rand((), generator=g, dtype=torch.float64)))
    chosen = torch.randperm(n, generator=g)[:k]
    shift = torch.randint(1, num_classes, (len(chosen),), generator=g)  # 1..K-1: never the same class
    out = labels.clone()
    out[chosen] = (labels[chosen] + shift) % num_classes
    return out


# --------------------------------------------------------------------------- the oracle labeler
class OracleLabeler(PseudoLabeler):
    """The method's pseudo-labeler with the teacher's weak-view detections replaced by the
    hidden ground truth (`truth`, original-image pixels) mapped into the weak view and
    corrupted as `mode` says. Everything after `predict` is the method's own."""

    def __init__(
        self, params: PseudoLabelParams, class_names: list[str], detector: Any, *, truth: CocoDataset,
        mode: str, wrong: float = 0.2, seed: int = 0, iteration: Callable[[], int] = lambda: 0,
    ) -> None:
        super().__init__(params, class_names, detector)
        if mode not in MODES:
            raise SsodkitError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        if list(truth.class_names) != list(class_names):
            raise SsodkitError(f"hidden ground truth has classes {truth.class_names}, the run {class_names}")
        if mode == "wrongclass" and len(class_names) < 2:
            raise SsodkitError("wrongclass needs at least two classes")
        self.truth, self.mode, self.wrong, self.seed = truth, mode, wrong, seed
        self.iteration = iteration  # the trainer's step: seeds this step's draws
        self.num_classes = len(class_names)
        self.calls = 0

    def truth_in_view(self, weak: ViewBatch, i: int) -> tuple[Tensor, Tensor]:
        """Image i's hidden boxes in its weak view (the view's own matrix, clipped; boxes the
        view leaves degenerate dropped, as a view does with labeled boxes)."""
        boxes, labels = self.truth.training_targets(weak.image_ids[i])
        size = (int(weak.images[i].shape[-2]), int(weak.images[i].shape[-1]))
        warped, keep = warp_boxes(torch.from_numpy(boxes), weak.matrices[i].cpu(), size)
        return warped, torch.from_numpy(labels)[keep]

    def generator(self, weak: ViewBatch) -> torch.Generator:
        return seeded_generator(derive_seed(self.seed, ORACLE_STREAM, self.iteration(), *weak.image_ids))

    @torch.no_grad()
    def predict(self, teacher: nn.Module, weak: ViewBatch) -> list[Detections]:
        self.calls += 1
        g = self.generator(weak)
        truths = [self.truth_in_view(weak, i) for i in range(len(weak))]
        if self.mode == "drop50":
            truths = [drop(b, lab, g) for b, lab in truths]
        elif self.mode == "fp100":
            truths = [
                add_displaced(b, lab, tuple(weak.images[i].shape[-2:]), self.num_classes, g)
                for i, (b, lab) in enumerate(truths)
            ]
        elif self.mode == "wrongclass":  # over the whole batch, so that P·n is not rounded per image
            counts = [len(lab) for _, lab in truths]
            flat = relabel(torch.cat([lab for _, lab in truths]), self.wrong, self.num_classes, g)
            truths = [(b, lab) for (b, _), lab in zip(truths, flat.split(counts))]
        return [
            Detections(b, torch.ones(len(b)), lab.long()).to(weak.images[i].device)
            for i, (b, lab) in enumerate(truths)
        ]


def install(trainer: Any, mode: str, wrong: float, resumed: bool) -> OracleLabeler:
    """Give `trainer`'s Mean Teacher the oracle labeler; record (or, resuming, check) the mode."""
    cfg, method = trainer.cfg, trainer.method
    if cfg.method.name != "mean_teacher":
        raise SsodkitError(f"the oracle diagnostic runs mean_teacher, not {cfg.method.name!r}")
    truth = trainer.data.sources.unlabeled_gt
    if truth is None:
        raise SsodkitError(
            "no hidden ground truth for the unlabeled images: use --labeled-percent, or an --unlabeled "
            "COCO JSON that has annotations (the synthetic recipes do)"
        )
    missing = set(trainer.data.sources.unlabeled.image_ids) - set(truth.image_ids)
    if missing:
        raise SsodkitError(f"{len(missing)} unlabeled images have no hidden ground truth (e.g. id {min(missing)})")
    record = {"mode": mode, "wrong": wrong if mode == "wrongclass" else None}
    path = Path(trainer.run_dir) / RECORD
    if resumed:
        saved = json.loads(path.read_text()) if path.is_file() else None
        if saved != record:
            raise SsodkitError(f"{trainer.run_dir} was run with {saved} ({RECORD}); resume it with the same --mode/--wrong")
    elif trainer.dist.is_main:
        path.write_text(json.dumps(record) + "\n")
    labeler = OracleLabeler(
        method.params, method.class_names, trainer.model, truth=truth, mode=mode, wrong=wrong,
        seed=cfg.train.seed, iteration=lambda: trainer.iteration,
    )
    method.labeler = labeler
    return labeler


# --------------------------------------------------------------------------- command line
def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="oracle_teacher.py", usage="%(prog)s --mode MODE [--wrong P] -- SSODKIT_TRAIN_OPTIONS",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--mode", required=True, choices=MODES)
    parser.add_argument("--wrong", type=float, default=0.2, help="wrongclass: fraction of boxes relabelled (0.2)")
    if "--" not in argv:
        parser.parse_args(argv)  # --help, or the error for a missing --mode
        parser.error("give the ssodkit train options after --")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    if not 0 <= args.wrong <= 1:
        parser.error("--wrong is a fraction in [0, 1]")
    return args, argv[split + 1:]


def main(argv: list[str] | None = None) -> None:
    import typer

    from ssodkit.cli.app import error_exit, user_error
    from ssodkit.cli.train_cmd import run_train, train

    args, train_args = parse_args(sys.argv[1:] if argv is None else argv)
    state: dict[str, Any] = {}

    def prepare(trainer: Any) -> None:
        state["trainer"], state["start"] = trainer, trainer.iteration
        state["labeler"] = install(trainer, args.mode, args.wrong, resumed=state["resumed"])

    @functools.wraps(train)  # `ssodkit train`'s own options, help and parsing
    def command(**options: Any) -> None:
        state["resumed"] = options["resume"] is not None
        if not state["resumed"]:
            if options["method"] not in (None, "mean_teacher"):
                raise SsodkitError(f"the oracle diagnostic runs mean_teacher; --method {options['method']} given")
            options["method"] = "mean_teacher"
            options["name"] = options["name"] or f"oracle-{args.mode}"
        run_train(options, prepare)
        check_used(state)

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(command)
    try:
        app(train_args, prog_name=f"oracle_teacher.py --mode {args.mode} --")  # exits, as ssodkit does
    except (SsodkitError, OSError) as exc:
        message = user_error(exc)
        if message is None:
            raise
        error_exit(message)


def check_used(state: dict[str, Any]) -> None:
    """Refuse a run in which the method trained past burn-in without asking the oracle: its
    pseudo-label path no longer goes through `PseudoLabeler.predict` (the old version of this
    script patched an attribute nothing read any more, and silently ran plain Mean Teacher)."""
    trainer, labeler = state.get("trainer"), state.get("labeler")
    if labeler is None or labeler.calls:
        return
    if trainer.iteration > max(state["start"], trainer.cfg.teacher.burn_in):
        raise SsodkitError(
            "the method never asked PseudoLabeler.predict for boxes, so this run did not use the oracle "
            "(the method's pseudo-label path changed: move the seam in oracle_teacher.py)"
        )


if __name__ == "__main__":
    main()
