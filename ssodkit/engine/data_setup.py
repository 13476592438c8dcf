"""Turn a run config into data: sources (synthetic, split), datasets, infinite batch streams."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ssodkit.config import RunConfig
from ssodkit.data.coco import (
    CHECK_REMEDY,
    SKIP_INVALID_REMEDY,
    CocoDataset,
    load_coco,
    load_unlabeled,
)
from ssodkit.data.datasets import (
    EvalDataset,
    Guarded,
    LabeledDataset,
    UnlabeledDataset,
    Unreadable,
    UnreadableImages,
    ignore_sigint,
)
from ssodkit.data.sampler import InfiniteBatchSampler
from ssodkit.data.splits import split_dataset
from ssodkit.engine.distributed import DistInfo, barrier
from ssodkit.errors import DataError
from ssodkit.methods.base import ViewBatch
from ssodkit.plugins import build_view
from ssodkit.rng import seeded_generator

UNLABELED_SEED_OFFSET = 1_000_003  # separate stream from the labeled one
MAX_AUTO_WORKERS = 8


def resolve_num_workers(setting: int | str, cpus: int | None = None, local_processes: int | None = None) -> int:
    """Worker processes per stream for `data.num_workers` (an integer is taken as is).

    `auto`: the CPUs this process may use (its share when torchrun starts several on one
    machine), less one for the training loop, split between the two streams, clamped to
    1..8. Why: the weak and strong views of one ~600 px JPEG cost a core about 80 ms
    (`benchmarks/cost.py --loader-scale 2`, docs/benchmarks.md), so a GPU step that consumes
    20 images/s needs two cores or more of loading, which a fixed count cannot know; more
    workers than cores only contend with the step.
    """
    if setting != "auto":
        return int(setting)
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if local_processes is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    per_process = max(1, cpus // max(1, local_processes))
    return max(1, min(MAX_AUTO_WORKERS, (per_process - 1) // 2))


@dataclass
class DataSources:
    train: CocoDataset
    val: CocoDataset | None
    unlabeled: CocoDataset | None
    unlabeled_gt: CocoDataset | None = None  # hidden ground truth of the unlabeled pool, if any


def hidden_ground_truth(src: Path | None, images: Path | None) -> CocoDataset | None:
    """The unlabeled file's own boxes (benchmark mode: the pool is labeled data in disguise).

    Never used for training; only to measure pseudo-label precision/recall."""
    if src is None or Path(src).is_dir():
        return None
    try:
        coco = load_coco(src, images, check_images="none", remedy=CHECK_REMEDY)
    except DataError:
        return None
    return coco if coco.annotations else None


def split_files(run_dir: Path, train_ann: str | Path, cfg: RunConfig) -> tuple[Path, Path]:
    """Where a run keeps its `labeled_percent` split of `train_ann`: the labeled part and the
    rest, `splits/<stem>.<fold>@<percent>.json` and `…-unlabeled.json`."""
    stem = f"{Path(train_ann).stem}.{cfg.data.fold}@{cfg.data.labeled_percent:g}"
    return run_dir / "splits" / f"{stem}.json", run_dir / "splits" / f"{stem}-unlabeled.json"


def labeled_source(cfg: RunConfig, run_dir: Path | None) -> tuple[Path, Path | None]:
    """The labeled COCO file a run trained on and its image root: the split it saved under
    `run_dir/splits/` when it split `train_ann`, else `train_ann` itself (the synthetic train
    split in synthetic mode)."""
    data = cfg.data
    train_ann, images = data.train_ann, data.train_images
    if data.synthetic:
        from ssodkit.data.synthetic import ensure_synthetic

        paths = ensure_synthetic(seed=data.synthetic_seed, kind=data.synthetic_kind)
        train_ann, images = paths.train, paths.images
    assert train_ann is not None
    if data.labeled_percent is None:
        return Path(train_ann), images
    if run_dir is None:
        raise DataError(
            f"the run trained on a {data.labeled_percent:g}% split of {train_ann}, kept in its run folder's "
            "splits/; give the run folder, or the labeled COCO file (--gt)"
        )
    labeled = split_files(run_dir, train_ann, cfg)[0]
    if not labeled.is_file():
        raise DataError(f"{labeled}: the run's labeled split is missing; give the labeled COCO file (--gt)")
    if images is None:  # the split's file names are relative to train_ann's guessed root, not to splits/
        images = load_coco(train_ann, check_images="none", remedy=CHECK_REMEDY).image_root
    return labeled, images


def resolve_sources(
    cfg: RunConfig, run_dir: Path, dist: DistInfo, need_unlabeled: bool, remedy: str = SKIP_INVALID_REMEDY
) -> DataSources:
    """Read and validate the COCO files a run needs (generating the synthetic set if asked);
    `remedy` ends the message for invalid records (what this user can do about them)."""
    data = cfg.data
    train_ann, train_images = data.train_ann, data.train_images
    val_ann, val_images = data.val_ann, data.val_images
    unlabeled_src, unlabeled_images = data.unlabeled, data.unlabeled_images
    if data.synthetic:
        from ssodkit.data.synthetic import ensure_synthetic

        if dist.is_main:
            paths = ensure_synthetic(seed=data.synthetic_seed, kind=data.synthetic_kind)
        barrier(dist)
        paths = ensure_synthetic(seed=data.synthetic_seed, kind=data.synthetic_kind)
        train_ann, train_images = paths.train, paths.images
        val_ann, val_images = val_ann or paths.val, val_images or (paths.images if val_ann is None else None)
        if unlabeled_src is None and data.labeled_percent is None:
            unlabeled_src, unlabeled_images = paths.unlabeled, paths.images
    assert train_ann is not None
    train = load_coco(train_ann, train_images, skip_invalid=data.skip_invalid, remedy=remedy)
    unlabeled = None
    if data.labeled_percent is not None:
        train, rest = split_dataset(train, data.labeled_percent, data.fold)
        if dist.is_main:
            labeled_file, rest_file = split_files(run_dir, train_ann, cfg)
            train.save(labeled_file)
            rest.save(rest_file)
        if unlabeled_src is None:
            unlabeled = rest
    unlabeled_gt = unlabeled if unlabeled is not None and unlabeled.annotations else None
    if need_unlabeled and unlabeled is None:
        if unlabeled_src is None:
            raise DataError(
                f"method '{cfg.method.name}' needs unlabeled images: pass --unlabeled or --labeled-percent"
            )
        unlabeled = load_unlabeled(unlabeled_src, unlabeled_images, skip_invalid=data.skip_invalid, remedy=remedy)
        unlabeled_gt = hidden_ground_truth(unlabeled_src, unlabeled_images)
    val = load_coco(val_ann, val_images, skip_invalid=data.skip_invalid, remedy=remedy) if val_ann else None
    if val is not None and val.class_names != train.class_names:
        raise DataError(f"{val_ann}: categories {val.class_names} differ from {train_ann}'s {train.class_names}")
    if val is not None and cfg.eval.max_images is not None:
        val = val.subset(val.image_ids[: cfg.eval.max_images])
    if not need_unlabeled:
        unlabeled = unlabeled_gt = None
    return DataSources(train, val, unlabeled, unlabeled_gt)


def parse_view_spec(spec: str) -> tuple[str, str, str | None]:
    """`"weak"` → (key "weak", view "weak", no source); `"strong=photometric_strong@weak"` →
    (key "strong", view "photometric_strong", continued from the output of key "weak")."""
    key, _, rest = spec.partition("=")
    if not rest:
        key, rest = spec.split("@")[0], spec
    view, _, source = rest.partition("@")
    return key, view, source or None


class MultiViewDataset(Dataset):
    """Each image through several named views, decoded once.

    Views draw independent randomness, except a view declared as continuing another
    (`"strong=photometric_strong@weak"`), which starts from that view's output and so keeps
    its geometry (SED's and Unbiased Teacher's strong views share the weak view's). The base
    is an unlabeled data set, or a labeled one whose boxes the views then carry.
    """

    def __init__(self, base: UnlabeledDataset | LabeledDataset, views: dict[str, tuple[Any, str | None]]) -> None:
        self.base = base
        self.views = views

    def __len__(self) -> int:
        return len(self.base)

    @property
    def image_ids(self) -> list[int]:
        """The base data set's image ids, in its index order (the probe picks from them)."""
        return self.base.image_ids

    def __getitem__(self, index: tuple[int, int]) -> dict[str, dict[str, Any]]:
        image_index, seed = index
        plain = self.base._sample(image_index, seeded_generator(seed))  # identity view
        outputs: dict[str, Any] = {}
        samples: dict[str, dict[str, Any]] = {}
        for k, (key, (view, source)) in enumerate(self.views.items()):
            generator = seeded_generator(seed * 31 + k, bits=31)
            if source is None:
                out = view(plain["image"], plain["boxes"], plain["labels"], generator)
            else:
                out = view.from_state(outputs[source], generator)
            outputs[key] = out
            samples[key] = {
                **plain, "image": out.image, "boxes": out.boxes, "labels": out.labels,
                "matrix": out.matrix, "erased": out.erased,
            }
        return samples


def build_multi_view(base: UnlabeledDataset | LabeledDataset, specs: tuple[str, ...], cfg: RunConfig) -> MultiViewDataset:
    """`base` (read through the identity view) through the views named by `specs`."""
    views = {}
    for spec in specs:
        key, view, source = parse_view_spec(spec)
        views[key] = (build_view(view, cfg.views), source)
    return MultiViewDataset(base, views)


def view_after_view(samples: list[dict[str, Any]]) -> list[Any]:
    """Multi-view samples as one list: every sample's first view, then every second view…
    (the labeled batch of a method with several labeled views)."""
    return [s[key] for key in samples[0] for s in samples] if samples else []


def samples_to_batch(samples: list[dict[str, Any]], device: torch.device) -> ViewBatch:
    return ViewBatch(
        images=[s["image"].to(device, non_blocking=True).float().div_(255.0) for s in samples],
        targets=[{"boxes": s["boxes"].to(device), "labels": s["labels"].to(device)} for s in samples],
        matrices=[s["matrix"] for s in samples],
        image_ids=[int(s["image_id"]) for s in samples],
        extras=[{k: v for k, v in s.items() if k not in ("image", "boxes", "labels", "matrix", "image_id")} for s in samples],
    )


@dataclass
class TrainData:
    cfg: RunConfig
    dist: DistInfo
    sources: DataSources
    train_dataset: LabeledDataset | MultiViewDataset  # the latter for several labeled views
    unlabeled_dataset: MultiViewDataset | None
    val_dataset: Guarded | None  # an EvalDataset whose unreadable images go to `unreadable`
    repeat_factors: list[float] | None = None  # Labeled Resampling, one per labeled image
    unreadable: UnreadableImages = field(default_factory=UnreadableImages)
    _loaders: list[Any] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.sources.train.class_names

    @property
    def index_to_cat_id(self) -> list[int]:
        return self.sources.train.index_to_cat_id

    @property
    def val(self) -> CocoDataset | None:
        return self.sources.val

    @property
    def num_unlabeled(self) -> int:
        return 0 if self.unlabeled_dataset is None else len(self.unlabeled_dataset)

    @property
    def val_gt(self) -> dict[str, Any]:
        assert self.sources.val is not None
        if not hasattr(self, "_val_gt"):
            self._val_gt = self.sources.val.to_dict()
        return self._val_gt

    def _stream(
        self, dataset: Dataset, num_images: int, batch_size: int, seed: int, start_batch: int,
        repeat_factors: list[float] | None = None,
    ) -> Iterator[list]:
        sampler = InfiniteBatchSampler(
            num_images, batch_size, seed=seed, rank=self.dist.rank,
            world_size=self.dist.world_size, start_batch=start_batch, repeat_factors=repeat_factors,
        )
        workers = resolve_num_workers(self.cfg.data.num_workers)
        loader = DataLoader(
            Guarded(dataset), batch_sampler=sampler, num_workers=workers, collate_fn=list,
            persistent_workers=False, prefetch_factor=2 if workers else None,
            # its own generator: creating the iterator must not draw from the global RNG,
            # or a resumed run (RNG restored first) would diverge from an uninterrupted one
            generator=seeded_generator(seed), worker_init_fn=ignore_sigint,
        )
        iterator = iter(loader)
        self._loaders.append(iterator)
        return iterator

    def batches(self, start_batch: int) -> Iterator[tuple[list, dict[str, list] | None]]:
        """(labeled samples, unlabeled samples per view) per iteration, from `start_batch` on."""
        seed = self.cfg.train.seed
        labeled = self._stream(
            self.train_dataset, len(self.train_dataset), self.cfg.train.batch_size, seed, start_batch,
            self.repeat_factors,
        )
        unlabeled = None
        if self.unlabeled_dataset is not None and self.cfg.train.unlabeled_per_step > 0:
            unlabeled = self._stream(
                self.unlabeled_dataset, len(self.unlabeled_dataset), self.cfg.train.unlabeled_per_step,
                seed + UNLABELED_SEED_OFFSET, start_batch,
            )
        while True:
            lab = self._readable(self.train_dataset, next(labeled), "labeled")
            if isinstance(self.train_dataset, MultiViewDataset):
                lab = view_after_view(lab)
            if unlabeled is None:
                yield lab, None
            else:
                assert self.unlabeled_dataset is not None
                samples = self._readable(self.unlabeled_dataset, next(unlabeled), "unlabeled")
                yield lab, {name: [s[name] for s in samples] for name in samples[0]}

    def _readable(self, dataset: Dataset, samples: list[Any], kind: str) -> list[Any]:
        """`samples`, each `Unreadable` marker replaced by a readable image (see `_replacement`)."""
        return [self._replacement(dataset, s, kind) if isinstance(s, Unreadable) else s for s in samples]

    def _replacement(self, dataset: Dataset, marker: Unreadable, kind: str) -> Any:
        """The next readable image in index order, drawn with the marker's augmentation seed.

        The batch keeps its size, and the choice depends only on the sampler's key, so a
        resumed run makes the same one; a data set whose images all decode is drawn exactly
        as before. Loaded here in the main process: the workers cannot tell it what they
        skipped, and a damaged file is rare. `unreadable.record` counts each failure (and
        raises in strict mode)."""
        image_index, seed = marker.index
        n = len(dataset)  # type: ignore[arg-type]
        guarded = Guarded(dataset)
        for step in range(1, n):
            self.unreadable.record(marker)
            candidate = guarded[((image_index + step) % n, seed)]
            if not isinstance(candidate, Unreadable):
                return candidate
            marker = candidate
        self.unreadable.record(marker)
        raise DataError(f"none of the {n} {kind} images can be decoded ({marker.error})")

    def to_device(self, batch: tuple[list, dict[str, list] | None], device: torch.device):
        labeled, unlabeled = batch
        lab = samples_to_batch(labeled, device)
        if unlabeled is None:
            return lab, None
        return lab, {name: samples_to_batch(s, device) for name, s in unlabeled.items()}

    def close(self) -> None:
        for it in self._loaders:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        self._loaders.clear()


def labeled_repeat_factors(cfg: RunConfig, dataset: LabeledDataset, default_t: float | None) -> list[float] | None:
    """Class-aware repeat factors of the labeled images (MixPL's Labeled Resampling)."""
    t = cfg.data.repeat_factor_t if cfg.data.repeat_factor_t is not None else default_t
    if not t:
        return None
    from ssodkit.data.resampling import repeat_factors

    per_image, _ = repeat_factors(dataset.coco, t, image_ids=dataset.image_ids)
    return per_image


def build_train_data(
    cfg: RunConfig, run_dir: Path, dist: DistInfo, unlabeled_views: tuple[str, ...],
    default_repeat_factor_t: float | None = None, remedy: str = SKIP_INVALID_REMEDY,
    labeled_views: tuple[str, ...] = ("labeled",),
) -> TrainData:
    """The run's data; `labeled_views` / `unlabeled_views` are the method's view specs
    (`Method.labeled_views`, `Method.unlabeled_views`)."""
    from ssodkit.data.datasets import identity_view

    need_unlabeled = bool(unlabeled_views)
    sources = resolve_sources(cfg, run_dir, dist, need_unlabeled, remedy)
    labeled = LabeledDataset(sources.train, build_view("labeled", cfg.views))
    if len(labeled) == 0:
        raise DataError(f"{sources.train.source}: no image with a (non-crowd) box to train on")
    train_dataset: LabeledDataset | MultiViewDataset = labeled
    if tuple(labeled_views) != ("labeled",):  # the one `labeled` view keeps its own draws
        train_dataset = build_multi_view(LabeledDataset(sources.train, identity_view), labeled_views, cfg)
    unlabeled_dataset = None
    if need_unlabeled and sources.unlabeled is not None:
        unlabeled_dataset = build_multi_view(UnlabeledDataset(sources.unlabeled, identity_view), unlabeled_views, cfg)
    unreadable = UnreadableImages(strict=cfg.data.strict_images)
    val_dataset = None
    if sources.val is not None:
        val_dataset = Guarded(EvalDataset(sources.val, build_view("eval", cfg.views)), unreadable.record)
    factors = labeled_repeat_factors(cfg, labeled, default_repeat_factor_t)
    return TrainData(cfg, dist, sources, train_dataset, unlabeled_dataset, val_dataset, factors, unreadable)
