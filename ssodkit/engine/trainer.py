"""The iteration-based training loop shared by every method.

Read top to bottom: set-up (devices, data, model, method, optimiser, resume), then `run`,
which steps, logs, evaluates and checkpoints. The method owns the inside of a step.
"""

from __future__ import annotations

import copy
import math
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ssodkit.config import RunConfig, resolve_method, save_config
from ssodkit.data.coco import SKIP_INVALID_REMEDY
from ssodkit.detectors.protocol import check_capabilities
from ssodkit.engine import checkpoint as ckpt
from ssodkit.engine.burn_in import BurnIn
from ssodkit.engine.collapse import CollapseWatcher
from ssodkit.engine.data_setup import TrainData, build_train_data
from ssodkit.engine.distributed import (
    DistInfo,
    all_gather_objects,
    any_rank,
    barrier,
    broadcast_object,
    init_distributed,
    shutdown_distributed,
)
from ssodkit.engine.ema import EMA
from ssodkit.engine.metrics import MetricsLog, read_metrics
from ssodkit.engine.predict import autocast_context, evaluate_model
from ssodkit.engine.probe import LabeledProbe, spread
from ssodkit.engine.progress import TrainProgress
from ssodkit.engine.results import results_rows, write_results_csv
from ssodkit.engine.runtime import (
    build_model,
    initial_weights,
    resolve_amp,
    resolve_device,
    resolve_freeze_bn,
    resolve_schedule_offset,
)
from ssodkit.engine.run_lock import RunLock
from ssodkit.engine.samples import SampleImages, sample_path
from ssodkit.engine.schedule import build_scheduler
from ssodkit.engine.summary import build_summary, repro_card, split_hash, write_summary
from ssodkit.engine.tensorboard import open_tensorboard
from ssodkit.errors import SsodkitError
from ssodkit.evaluation.coco_eval import EvalResult
from ssodkit.methods.base import Method, ModelHandle
from ssodkit.plugins import build_view, method_class
from ssodkit.pseudo.labeler import (
    PseudoLabeler,
    PseudoLabelParams,
    resolve_for_detector,
)


@dataclass
class TrainSummary:
    run_dir: Path
    iterations: int
    status: str  # "finished", "interrupted" or "collapsed" (train.stop_on_collapse)
    skipped_steps: int
    sec_per_iter: float
    final: dict[str, EvalResult] = field(default_factory=dict)  # "student"/"teacher" → metrics
    best: float | None = None  # best.pt's mAP: the higher of teacher and student at its evaluation
    final_iter: int | None = None  # the iteration `final` was measured at
    best_eval: ckpt.BestEval | None = None  # which model best.pt holds for inference, and when
    summary: dict[str, Any] = field(default_factory=dict)  # summary.json's content
    collapse: list[str] = field(default_factory=list)  # the collapse watcher's warnings (docs/troubleshooting.md)


def next_run_dir(runs_dir: Path, name: str) -> Path:
    """runs/<name>, runs/<name>-2, … (never reuse a folder: nothing is lost)."""
    candidate, n = runs_dir / name, 2
    while candidate.exists():
        candidate, n = runs_dir / f"{name}-{n}", n + 1
    return candidate


# A teacher started from trained weights (train.init_from) should not be overwritten by the
# student's first, noisy semi-supervised steps: warn when the EMA momentum is still above
# FAST_TEACHER_MOMENTUM after FAST_TEACHER_UPDATES updates (the default schedule gives 0.038).
FAST_TEACHER_UPDATES = 100
FAST_TEACHER_MOMENTUM = 0.01
SLOW_TEACHER_HINT = "--set teacher.momentum=0.001"  # mmdet's constant


def fast_teacher_warning(ema: EMA, offset: int = 0) -> str | None:
    """One line when a run started from a checkpoint has a teacher that follows the student
    closely early on (the EMA momentum 100 iterations in is above 0.01), else None. `offset`
    is the schedule's t at iteration 0 (`teacher.schedule_offset`)."""
    late = ema.momentum_at(offset + FAST_TEACHER_UPDATES)
    if late <= FAST_TEACHER_MOMENTUM:
        return None
    if ema.momentum is None:
        how = (
            f"the EMA schedule max(min_momentum, γ/(γ+t)) from t = {offset} gives m = {ema.momentum_at(offset):.3g} "
            f"at the first update and {late:.3g} after {FAST_TEACHER_UPDATES}"
        )
    else:
        how = f"the constant m = {late:g} is above {FAST_TEACHER_MOMENTUM:g}"
    return (
        f"train.init_from with teacher.momentum {ema.momentum if ema.momentum is not None else 'null'}: {how}, "
        "so the teacher follows the student's first noisy steps instead of staying near the checkpoint; "
        f"{SLOW_TEACHER_HINT} (mmdet's constant) keeps it there"
    )


def build_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    # No weight decay on norms and biases, as in torchvision's detection references.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.optim.lr)
    return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum)


class MethodStep(nn.Module):
    """One training step as a module, so that DDP sees exactly one forward per iteration.

    A method may call the student several times (labeled, unlabeled, mixed views) and skip
    calls on some ranks; wrapping the whole step keeps DDP's bookkeeping (one forward, one
    backward, unused-parameter search over all the step's outputs) correct.
    """

    def __init__(self, student: nn.Module, method: Method, teacher: nn.Module | None) -> None:
        super().__init__()
        self.student = student
        self.method = method
        self._teacher = [teacher]  # a list, so the teacher is not a submodule DDP would sync

    def forward(self, labeled: Any, unlabeled: Any, iteration: int) -> dict[str, Tensor]:
        return self.method.step(ModelHandle(self.student), self._teacher[0], labeled, unlabeled, iteration)


class Trainer:
    def __init__(self, cfg: RunConfig, *, resume: Path | None = None, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.device = resolve_device(cfg.train.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        cfg = resolve_method(cfg)  # method parameters and the teacher section, before any data is read
        self.cfg = cfg
        self.amp_dtype = resolve_amp(cfg.train.amp, self.device)
        torch.manual_seed(cfg.train.seed + self.dist.rank)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        self.method_cls: type[Method] = method_class(cfg.method.name)
        self.run_dir = resume if resume is not None else self._new_run_dir()
        self._lock = RunLock(self.run_dir)
        if self.dist.is_main:
            self._lock.acquire()  # one training process per folder (engine/run_lock.py)
        try:
            self._set_up(cfg, resume)
        except BaseException:
            self._lock.release()
            if resume is None and self.dist.is_main:
                self._remove_unused_run_dir()
            raise

    def _remove_unused_run_dir(self) -> None:
        """A run that failed at start-up leaves no folder behind (nothing was trained)."""
        if not any((self.run_dir / "checkpoints").glob("*.pt")):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _set_up(self, cfg: RunConfig, resume: Path | None) -> None:
        remedy = SKIP_INVALID_REMEDY  # --resume takes no option: the run's own config is the way
        if resume is not None:
            remedy = f" (set data.skip_invalid: true in {resume / 'config.yaml'} to drop them, or fix the file)"
        params = self.method_cls.Params.model_validate(cfg.method.params)  # resolved: valid
        self.data: TrainData = build_train_data(
            cfg, self.run_dir, self.dist, self.method_cls.unlabeled_views,
            self.method_cls.default_repeat_factor_t, remedy, self.method_cls.labeled_views(params),
        )
        self.classes = self.data.classes
        self._check_same_split()

        init = None
        if cfg.train.init_from is not None and resume is None:
            init = initial_weights(cfg.train.init_from, cfg, self.classes)
            self._say(f"init from {cfg.train.init_from}: {init.used}")
        cfg = resolve_freeze_bn(cfg, init.source if init is not None else None)  # before the model is built
        cfg = resolve_schedule_offset(cfg, init)
        self.model = build_model(cfg, len(self.classes)).to(self.device)
        if init is not None:
            self.model.load_state_dict(init.weights)
        check_capabilities(cfg.detector.name, self.model, cfg.method.name, self.method_cls.requires)
        self.cfg = cfg = resolve_for_detector(cfg, self.model)  # what config.yaml records
        self.method = self.method_cls.from_config(cfg, self.classes)
        self.method.check_detector(self.model)
        self.teacher: nn.Module | None = None
        self.collapse: CollapseWatcher | None = None
        if self.method_cls.uses_teacher:
            self.collapse = CollapseWatcher()
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
            t = cfg.teacher
            self.ema = EMA(t.momentum, t.gamma, t.min_momentum, t.buffers, t.interval)
            if cfg.train.init_from is not None and resume is None:
                warning = fast_teacher_warning(self.ema, t.schedule_offset or 0)
                if warning is not None:
                    self._say(f"warning: {warning}", style="yellow")
        self._set_up_probe()
        self._set_up_samples()
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        step_module = MethodStep(self.model, self.method, self.teacher)
        self.step_module: nn.Module = (
            DistributedDataParallel(
                step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
            if self.dist.enabled
            else step_module
        )
        self.iteration = 0
        self.skipped_steps = 0
        self.best: float | None = None
        self.best_eval: ckpt.BestEval | None = None
        self.wall_before = 0.0  # seconds trained before this process (a resumed run's)
        tensorboard = open_tensorboard(cfg.output.tensorboard, self.run_dir)  # every rank: a missing package stops all
        self.tensorboard = tensorboard if self.dist.is_main else None  # writes nothing before its first record
        self.metrics = MetricsLog(
            self.run_dir / "metrics.jsonl", enabled=self.dist.is_main,
            sinks=[self.tensorboard] if self.tensorboard is not None else [],
        )
        if resume is not None:
            self._load(resume / "checkpoints" / "last.pt")
            self.metrics.truncate_after(self.iteration)
        elif self.dist.is_main:
            save_config(cfg, self.run_dir / "config.yaml")
        self._stop_requested = False
        self._collapsed = False  # train.stop_on_collapse: the watcher warned, stop after this step

    # ------------------------------------------------------------------ set-up helpers
    def _say(self, text: str, style: str | None = None) -> None:
        """One start-up line on the run's console (rank 0), never wrapped or read as markup."""
        if self.dist.is_main:
            self.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    def _new_run_dir(self) -> Path:
        name = self.cfg.output.name or f"{self.cfg.method.name}-{self.cfg.detector.name}"
        run_dir = next_run_dir(self.cfg.output.runs_dir, name) if self.dist.is_main else None
        run_dir = broadcast_object(run_dir, self.dist)
        if self.dist.is_main:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        barrier(self.dist)
        return run_dir

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.model_dump(mode="json"),
            "classes": self.classes,
            "index_to_cat_id": self.data.index_to_cat_id,
            "iteration": self.iteration,
            "burn_in": self.burn_in.state_dict(),  # with teacher.burn_in: auto, the iteration it chose
            "student": self.model.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "method": self.method.state_dict(),
            "rng": ckpt.rng_state(),
            "skipped_steps": self.skipped_steps,
            "best": self.best,
            "best_eval": self.best_eval.to_state() if self.best_eval is not None else None,
            "wall_s": self.wall_s,
            "collapse": self.collapse.state_dict() if self.collapse is not None else None,
        }

    def _load(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path, map_location=self.device)
        if list(state["classes"]) != list(self.classes):
            raise SsodkitError(f"{path}: classes {state['classes']} differ from the data's {self.classes}")
        self.model.load_state_dict(state["student"])
        if self.teacher is not None and state.get("teacher") is not None:
            self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state.get("method", {}))
        self.iteration = int(state["iteration"])
        self.burn_in.load_state_dict(state.get("burn_in"))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.best = state.get("best")
        self.best_eval = ckpt.BestEval.from_state(state.get("best_eval"))
        self.wall_before = float(state.get("wall_s", 0.0))
        if self.collapse is not None:
            self.collapse.load_state_dict(state.get("collapse"))
        ckpt.set_rng_state(state["rng"])

    def save(self, name: str) -> None:
        if self.dist.is_main:
            state = self.state_dict()
            if name == "best" and self.best_eval is not None:
                state["best_role"] = self.best_eval.role  # these weights won: inference on best.pt uses them
            ckpt.save_checkpoint(state, self.run_dir / "checkpoints" / f"{name}.pt")

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: Any) -> dict[str, float] | None:
        """One optimiser step; None when it was skipped for a non-finite loss or gradient."""
        labeled, unlabeled = self.data.to_device(batch, self.device)
        supervised_only = self.teacher is not None and self.burn_in.active(self.iteration)
        if supervised_only:
            unlabeled = None  # supervised only until the teacher is ready
        self.model.train()
        # A skipped step must leave the student as it was, BatchNorm statistics included: a
        # forward that overflowed would otherwise leave NaN running statistics behind (and the
        # teacher copies them). The buffers are small; the copy costs little.
        buffers = [b.detach().clone() for b in self.model.buffers()]
        with autocast_context(self.device, self.amp_dtype):
            losses = self.step_module(labeled, unlabeled, self.iteration)
        total: Tensor = sum(losses.values(), torch.zeros((), device=self.device))
        self.optimizer.zero_grad(set_to_none=True)
        if any_rank(not bool(torch.isfinite(total)), self.dist, self.device):
            return self._skip(buffers)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.cfg.optim.grad_clip or math.inf
        )
        if self.amp_dtype != torch.float16 and any_rank(
            not bool(torch.isfinite(grad_norm)), self.dist, self.device
        ):
            self.optimizer.zero_grad(set_to_none=True)
            return self._skip(buffers)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if supervised_only:
            self.teacher.load_state_dict(self.model.state_dict())  # teacher = student when burn-in ends
        elif self.teacher is not None:
            assert self.burn_in.end is not None
            # t counts every iteration the student has trained (burn-in and init_from's included)
            self.ema.update(self.teacher, self.model, (self.cfg.teacher.schedule_offset or 0) + self.iteration)
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["loss"] = float(total.detach())
        out.update(self.method.stats)
        return out

    @torch.no_grad()
    def _skip(self, buffers: list[Tensor]) -> None:
        """Count a skipped step and put back the buffers its forward changed."""
        for b, saved in zip(self.model.buffers(), buffers):
            b.copy_(saved)
        self.skipped_steps += 1
        return None

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, EvalResult]:
        """mAP of the student (and of the teacher, which is what `predict` uses)."""
        if self.data.val is None:
            return {}
        models: dict[str, nn.Module] = {"student": self.model}
        if self.teacher is not None:
            models["teacher"] = self.teacher
        out: dict[str, EvalResult] = {}
        for role, model in models.items():
            result, results = evaluate_model(
                model, self.data.val_dataset, self.data.val_gt, self.data.index_to_cat_id,
                backend=self.cfg.eval.backend,
                batch_size=self.cfg.eval.batch_size, device=self.device, dist=self.dist,
                amp_dtype=self.amp_dtype,
            )
            if result is not None:
                out[role] = result
                from ssodkit.io import write_json_atomic

                write_json_atomic(self.run_dir / "eval" / f"{role}_iter{self.iteration:07d}.json", results)
        return broadcast_object(out, self.dist)

    def pseudo_label_quality(self) -> dict[str, float]:
        """Precision/recall of the teacher's pseudo-labels against the unlabeled pool's hidden
        ground truth (benchmark mode): tells whether the unsupervised signal is any good. The
        boxes are the ones the method's pseudo-labeler keeps (its filters, its τ and rule);
        a method without one (SED) is scored at the detector's default τ."""
        gt = self.data.sources.unlabeled_gt
        n = self.cfg.eval.pseudo_images
        if self.teacher is None or gt is None or n == 0:
            return {}
        from ssodkit.data.datasets import EvalDataset, Guarded
        from ssodkit.engine.predict import predict_results
        from ssodkit.pseudo.quality import pseudo_label_quality

        labeler = self.method.labeler or PseudoLabeler(PseudoLabelParams(), self.classes, self.model)
        subset = gt.subset(gt.image_ids[:n])
        dataset = Guarded(EvalDataset(subset, build_view("eval", self.cfg.views)), self.data.unreadable.record)
        results = predict_results(
            self.teacher, dataset, self.data.index_to_cat_id, batch_size=self.cfg.eval.batch_size,
            device=self.device, dist=self.dist, amp_dtype=self.amp_dtype, keep=labeler.keep,
        )
        quality = pseudo_label_quality(subset, results, None, image_ids=subset.image_ids)
        return {f"pseudo/{k}": v for k, v in quality.items()}

    # ------------------------------------------------------------------ labeled probe, burn-in
    def _set_up_probe(self) -> None:
        """The labeled probe (`eval.probe_images` evenly spread labeled images, still trained
        on) and the burn-in schedule, which reads it when `teacher.burn_in` is `auto`."""
        self.burn_in = BurnIn(self.cfg.teacher)
        self.probe: LabeledProbe | None = None
        if self.cfg.eval.probe_images > 0:
            self.probe = LabeledProbe(
                self.data.sources.train, spread(self.data.train_dataset.image_ids, self.cfg.eval.probe_images),
                build_view("weak", self.cfg.views), self.cfg.train.seed, self.data.unreadable.record,
            )

    def probe_quality(self) -> dict[str, float]:
        """Pseudo-label precision / recall on the labeled probe, the boxes kept as the method
        keeps the unlabeled ones (its pseudo-labeler; the detector's τ for SED and supervised).
        The teacher is probed, or the student of a method without one. Identical on every
        rank (rank 0's); the global RNGs are left as they were."""
        if self.probe is None:
            return {}
        labeler = self.method.labeler or PseudoLabeler(PseudoLabelParams(), self.classes, self.model)
        quality = self.probe.score(
            self.teacher if self.teacher is not None else self.model, labeler.keep, self.data.index_to_cat_id,
            batch_size=self.cfg.eval.batch_size, device=self.device, dist=self.dist, amp_dtype=self.amp_dtype,
        )
        return broadcast_object(quality, self.dist)

    def _update_burn_in(self) -> None:
        """`teacher.burn_in: auto`: probe when due, log it, end the burn-in when the rule says."""
        if self.teacher is None or not self.burn_in.due(self.iteration):
            return
        quality = self.probe_quality()
        p, r = quality["probe/precision50"], quality["probe/recall50"]
        reason = self.burn_in.observe(self.iteration, p, r)
        self.metrics.write({"type": "probe", "iter": self.iteration, **quality})
        if reason is None:
            return
        self.metrics.write({"type": "burn_in_end", "iter": self.iteration, "reason": reason, **quality})
        t = self.cfg.teacher
        why = (
            f"precision ≥ {t.burn_in_precision:g}, recall flat over the last {t.burn_in_patience} probe(s)"
            if reason == "probe" else f"teacher.burn_in_max {t.burn_in_max}"
        )
        self._progress.print(
            f"iter {self.iteration}: burn-in ends (labeled probe P {100 * p:.0f}% R {100 * r:.0f}% @IoU.5; {why}); "
            "unlabeled images from the next step"
        )

    def _evaluate_or_save(self) -> dict[str, EvalResult]:
        """Evaluate; if that fails (a damaged val image in strict mode, a full disk), keep the
        training done so far and say how to go on."""
        try:
            return self.evaluate()
        except Exception as exc:  # noqa: BLE001 - whatever failed, the training state is saved
            self.save("last")
            reason = str(exc) if isinstance(exc, SsodkitError) else ckpt.readable_reason(exc)
            raise SsodkitError(
                f"evaluation at iteration {self.iteration} failed: {reason}; the training state is saved, "
                f"resume with --resume {self.run_dir}"
            ) from exc

    def _record_eval(self, results: dict[str, EvalResult]) -> bool:
        """Log eval metrics; True when this is the best model so far.

        The score is the higher mAP of teacher and student (the teacher on a tie): best.pt
        holds both, and `best_eval.role` says which one won, the one inference uses."""
        if not results:
            return False
        maps = {role: res.map for role, res in results.items()}
        role = ckpt.better_role(maps)
        assert role is not None  # results hold the student at least
        score = maps[role] if maps[role] is not None else -1.0
        record: dict[str, Any] = {"type": "eval", "iter": self.iteration}
        for name, res in results.items():
            record.update({f"{name}/{k}": v for k, v in res.model_dump().items() if k not in ("per_class", "backend")})
        record["best_role"] = role
        record["wall_s"] = self.wall_s
        quality = self.pseudo_label_quality()
        record.update(quality)
        probe = self.probe_quality()
        record.update(probe)
        self.metrics.write(record)
        if self.collapse is not None:
            self._warn_collapse(self.collapse.observe_eval(record, burn_in=self.burn_in.active(self.iteration)))
        parts = [f"{name} mAP {100 * (r.map or 0):.1f}" for name, r in results.items()]
        if quality:
            parts.append(
                f"pseudo-labels P {100 * quality['pseudo/precision50']:.0f}% "
                f"R {100 * quality['pseudo/recall50']:.0f}% @IoU.5"
            )
        if probe:
            parts.append(f"labeled probe P {100 * probe['probe/precision50']:.0f}% R {100 * probe['probe/recall50']:.0f}%")
        improved = self.best is None or score > self.best
        if improved:
            self.best = score
            self.best_eval = ckpt.BestEval(self.iteration, role, maps)
            parts.append(f"new best ({role})")
        self._progress.print(f"iter {self.iteration} eval: " + ", ".join(parts))
        return improved

    # ------------------------------------------------------------------ the run folder a user looks at
    @property
    def wall_s(self) -> float:
        """Seconds of training so far, earlier processes of a resumed run included."""
        start = getattr(self, "_wall_start", None)
        return self.wall_before + (time.monotonic() - start if start is not None else 0.0)

    def _check_same_split(self) -> None:
        """Every rank must train on the same labeled images: a split drawn per process (a
        seed from the rank) would silently train on the union. The hashes go in summary.json."""
        ids = self.data.train_dataset.image_ids
        self.split_hashes: list[str] = all_gather_objects(split_hash(ids), self.dist)
        if len(set(self.split_hashes)) > 1:
            raise SsodkitError(
                f"the ranks drew different labeled splits (hashes {', '.join(self.split_hashes)}): "
                "pass the same --labeled file or data.labeled_percent / data.fold on every rank"
            )

    def _set_up_samples(self) -> None:
        """The fixed unlabeled images (the val images when there is no pool) of the sample grid."""
        pool = self.data.sources.unlabeled or self.data.sources.val
        self.samples: SampleImages | None = None
        if self.dist.is_main and self.cfg.output.samples > 0 and pool is not None and pool.images:
            self.samples = SampleImages(
                pool, self.cfg.output.samples, build_view("eval", self.cfg.views), self.data.unreadable.record,
            )

    def _write_samples(self) -> Path | None:
        if self.samples is None:
            return None
        labeler = self.method.labeler or PseudoLabeler(PseudoLabelParams(), self.classes, self.model)
        role = "teacher" if self.teacher is not None else "student"
        path = self.samples.draw(
            self.teacher if self.teacher is not None else self.model, labeler.keep, self.classes,
            sample_path(self.run_dir, self.iteration), device=self.device, amp_dtype=self.amp_dtype,
            title=f"iter {self.iteration}: the {role}'s boxes, kept as pseudo-labels solid, filtered dashed",
        )
        if self.tensorboard is not None:
            from ssodkit.data.images import load_image

            self.tensorboard.image("samples", np.asarray(load_image(path)), self.iteration)
        return path

    def _write_run_files(self, status: str, sec_per_iter: float | None = None) -> dict[str, Any]:
        """results.csv, results.png, the sample grid and summary.json (rank 0): after each
        evaluation and at the end. One figure write per evaluation at most; a failure to draw
        never stops training."""
        if not self.dist.is_main:
            return {}
        metrics_path = self.run_dir / "metrics.jsonl"
        records = read_metrics(metrics_path) if metrics_path.exists() else []
        rows = results_rows(records)
        write_results_csv(self.run_dir, rows)
        if status == "running":
            try:
                self._write_samples()
                if self.cfg.output.plots:
                    from ssodkit.plots import plot_results

                    plot_results(rows, self.run_dir / "results.png", title=self.run_dir.name)
            except Exception as exc:  # noqa: BLE001 - a figure is not worth a run
                self._progress.print(f"[yellow]could not draw the run's figures: {ckpt.readable_reason(exc)}")
        summary = build_summary(
            records, status=status, iterations=self.iteration, wall_s=self.wall_s, sec_per_iter=sec_per_iter,
            best_eval=self.best_eval.to_state() if self.best_eval is not None else None,
            repro=repro_card(
                self.cfg, split_hashes=self.split_hashes, num_labeled=len(self.data.train_dataset.image_ids),
                num_unlabeled=self.data.num_unlabeled, world_size=self.dist.world_size,
                uses_teacher=self.teacher is not None, burn_in_end=self.burn_in.end,
            ),
        )
        write_summary(self.run_dir, summary)
        return summary

    def _warn_collapse(self, line: str | None) -> None:
        """Print and log the collapse watcher's warning; stop after this step if asked to."""
        if line is None or self.collapse is None:
            return
        self._progress.print(f"[yellow]{escape(line)}")
        self.metrics.write({"type": "collapse", "iter": self.iteration, "message": line, "signals": self.collapse.signals})
        self._collapsed = self._collapsed or self.cfg.train.stop_on_collapse

    # ------------------------------------------------------------------ the loop
    def _handle_sigint(self, signum: int, frame: Any) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        self.console.print("[yellow]interrupt: saving a checkpoint after this step (Ctrl-C again to abort)")

    def run(self) -> TrainSummary:
        cfg = self.cfg
        total_iters = cfg.schedule.iters
        stream = self.data.batches(start_batch=self.iteration)
        previous = signal.signal(signal.SIGINT, self._handle_sigint)
        status = "finished"
        window: dict[str, list[float]] = {}
        start_iter, step_time = self.iteration, 0.0
        self._wall_start = time.monotonic()
        self._progress = TrainProgress(total_iters, self.iteration, self.dist.is_main, cfg.train.log_interval, self.console)
        final: dict[str, EvalResult] = {}
        final_iter: int | None = None
        try:
            with self._progress:
                while self.iteration < total_iters:
                    if any_rank(self._stop_requested or self._collapsed, self.dist, self.device):
                        status = "collapsed" if any_rank(self._collapsed, self.dist, self.device) else "interrupted"
                        break
                    step_start = time.monotonic()
                    losses = self.train_step(next(stream))
                    self.scheduler.step()
                    self.iteration += 1
                    step_time += time.monotonic() - step_start
                    if losses is not None:
                        for k, v in losses.items():
                            window.setdefault(k, []).append(v)
                    means = {k: sum(v) / len(v) for k, v in window.items()}  # the console's and metrics.jsonl's
                    if losses is None:
                        self._progress.print(f"[yellow]iter {self.iteration}: non-finite loss or gradient, step skipped")
                    else:
                        self._progress.update(self.iteration, means, self.optimizer.param_groups[0]["lr"])
                    if self.iteration % cfg.train.log_interval == 0 or self.iteration == total_iters:
                        record = {
                            "type": "train", "iter": self.iteration,
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "sec_per_iter": time.monotonic() - step_start,
                            "skipped_steps": self.skipped_steps,
                            "unreadable_images": sum(self.data.unreadable.counts.values()),
                            "wall_s": self.wall_s,
                            **means,
                        }
                        self.metrics.write(record)
                        window_start = self.iteration - cfg.train.log_interval
                        # whole window semi-supervised and past the LR warm-up: a reference taken while
                        # the LR still rises (an --init-from run's first windows) made the supervised loss
                        # "rise ×1.6" as soon as the LR reached its base value
                        if (self.collapse is not None and not self.burn_in.active(window_start)
                                and window_start >= cfg.schedule.warmup_iters):
                            self._warn_collapse(self.collapse.observe_train(record))
                        window = {}
                    self._update_burn_in()
                    is_last = self.iteration == total_iters
                    if self.iteration % cfg.eval.interval == 0 or is_last:
                        final, final_iter = self._evaluate_or_save(), self.iteration
                        if self._record_eval(final):
                            self.save("best")
                        self._write_run_files(status="running")
                    if self.iteration % cfg.train.checkpoint_interval == 0 or is_last:
                        self.save("last")
                if status == "interrupted":
                    self.save("last")
                    self._progress.print(f"[yellow]stopped at iteration {self.iteration}; resume with --resume {self.run_dir}")
                elif status == "collapsed":
                    self.save("last")
                    self._progress.print(
                        f"[yellow]stopped at iteration {self.iteration} (train.stop_on_collapse): last.pt saved, best.pt "
                        f"holds the best model; change what the warning suggests in {self.run_dir / 'config.yaml'} and "
                        f"resume with --resume {self.run_dir}, or start again from best.pt with --init-from"
                    )
        except BaseException:
            self._lock.release()
            if self.dist.is_main:
                self._remove_unused_run_dir()  # nothing trained was saved: leave no empty run folder
            raise
        finally:
            signal.signal(signal.SIGINT, previous)
        sec_per_iter = step_time / max(1, self.iteration - start_iter)
        summary = self._write_run_files(status=status, sec_per_iter=sec_per_iter)
        self._lock.release()  # the folder is complete: a resume may take it now
        barrier(self.dist)
        return TrainSummary(
            run_dir=self.run_dir, iterations=self.iteration, status=status,
            skipped_steps=self.skipped_steps,
            # training steps only (data wait included; evaluation and checkpoints excluded)
            sec_per_iter=sec_per_iter, final=final, best=self.best,
            final_iter=final_iter, best_eval=self.best_eval, summary=summary,
            collapse=list(self.collapse.messages) if self.collapse is not None else [],
        )

    def close(self) -> None:
        self._lock.release()
        if self.tensorboard is not None:
            self.tensorboard.close()
        self.data.close()
        shutdown_distributed()
