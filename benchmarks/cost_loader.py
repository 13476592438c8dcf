"""Does data loading keep up with the step? (issue 18, item 6; part of `benchmarks/cost.py`)

For each method of the step table (its views: labeled, and unlabeled weak/strong or the
method's own), the trainer's own batch stream — `RunData.batches`, the loaders a run uses,
decoding, view pipelines and collation included — is drained with no training step, for
each worker count of `--loader-workers`: images per second over `--loader-batches` batches
after two warm-up batches. The step's demand is the images one step consumes (labeled +
unlabeled) divided by the method's median step time from the same `cost.py` run.

With workers the loader runs beside the step, so it keeps up when its rate is at least the
demand (`keeps_up`). With 0 workers loading is serial with the step; its cost is the share
of a step spent loading (`serial_share`). On a machine whose cores the step already uses,
worker processes compete with it: the rate measured here, with the step idle, is an upper
bound of what they deliver during training.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

WARMUP_BATCHES = 2


def scaled_copy(data: Any, root: Path, scale: float) -> Any:
    """The synthetic set with every image resized ×`scale` and saved as JPEG (as COCO's are),
    boxes scaled alike: a loader cost near a real data set's (`--loader-scale 2` gives
    ~600 × 600 px images)."""
    import json

    from PIL import Image

    from ssodkit.data.synthetic import SyntheticPaths

    out = SyntheticPaths(root)
    for split_json in (data.train, data.val, data.unlabeled):
        coco = json.loads(split_json.read_text())
        for image in coco["images"]:
            src = data.images / image["file_name"]
            image["file_name"] = str(Path(image["file_name"]).with_suffix(".jpg"))
            image["width"], image["height"] = round(image["width"] * scale), round(image["height"] * scale)
            dst = out.images / image["file_name"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                Image.open(src).convert("RGB").resize((image["width"], image["height"])).save(dst, quality=90)
        for ann in coco.get("annotations", []):
            ann["bbox"] = [v * scale for v in ann["bbox"]]
            ann["area"] = ann.get("area", 0) * scale * scale
        target = root / split_json.relative_to(data.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(coco))
    return out


def images_in(batch: tuple[list[Any], dict[str, list[Any]] | None]) -> int:
    """Images one step consumes: the labeled samples and the unlabeled images (each image
    counted once, however many views it comes in)."""
    labeled, unlabeled = batch
    n_unlabeled = len(next(iter(unlabeled.values()))) if unlabeled else 0
    return len(labeled) + n_unlabeled


def loader_rate(flags: dict[str, Any], workers: int, n_batches: int) -> tuple[float, int]:
    """(images per second, images per step) of the trainer's batch stream with `workers`."""
    from ssodkit.config import build_config
    from ssodkit.engine.trainer import Trainer

    trainer = Trainer(build_config(None, {**flags, "data.num_workers": workers}, []))
    try:
        stream = trainer.data.batches(start_batch=0)
        per_step = 0
        for _ in range(WARMUP_BATCHES):  # worker start-up and first-touch costs
            per_step = images_in(next(stream))
        start = time.perf_counter()
        images = sum(images_in(next(stream)) for _ in range(n_batches))
        elapsed = time.perf_counter() - start
    finally:
        trainer.data.close()
        trainer.close()
    return images / elapsed, per_step


def loader_entry(rates: dict[int, float], per_step: int, step_s: float | None) -> dict[str, Any]:
    """One method's record: rate per worker count against the step's demand."""
    entry: dict[str, Any] = {
        "images_per_step": per_step,
        "images_per_s": {str(w): r for w, r in rates.items()},
    }
    if step_s:
        demand = per_step / step_s
        entry["demand_images_per_s"] = demand
        entry["keeps_up"] = {str(w): r >= demand for w, r in rates.items() if w > 0}
        if 0 in rates:
            entry["serial_share"] = (per_step / rates[0]) / (step_s + per_step / rates[0])
    return entry


def step_seconds(steps: dict[str, dict[str, Any]], method: str, detector: str) -> float | None:
    """The median step time of `method` on `detector` from the step table (supervised: its
    step over the same images, recorded beside every pair of that detector)."""
    if method != "supervised":
        return steps.get(f"{method}/{detector}", {}).get("sec_per_iter")
    return next((e["supervised_sec_per_iter"] for p, e in steps.items() if p.endswith(f"/{detector}")), None)


def run_loaders(
    args: argparse.Namespace, tmp: Path, steps: dict[str, dict[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """Loader rates for each method of the step table (on its first detector)."""
    from benchmarks.cost import cost_flags
    from benchmarks.trace import PAIRS, make_data

    data = make_data(tmp / "data")
    if args.loader_scale != 1:
        data = scaled_copy(data, tmp / "scaled", args.loader_scale)
    seen: set[str] = set()
    result: dict[str, dict[str, Any]] = {}
    for method, detector in PAIRS:
        pair = f"{method}/{detector}"
        wanted = method == "supervised" or not args.only or pair in args.only
        if method in seen or not wanted:
            continue
        seen.add(method)
        flags = cost_flags(method, detector, data, tmp / "runs", args)
        if args.loader_short_side:
            flags["views.train_short_side"] = args.loader_short_side
            flags["views.max_size"] = args.loader_max_size
        rates: dict[int, float] = {}
        per_step = 0
        for workers in args.loader_workers:
            rates[workers], per_step = loader_rate(flags, workers, args.loader_batches)
        result[method] = entry = loader_entry(rates, per_step, step_seconds(steps or {}, method, detector))
        entry["detector"] = detector
        shown = ", ".join(f"{w} workers {r:.1f}" for w, r in rates.items())
        demand = f"; the step needs {entry['demand_images_per_s']:.1f}" if "demand_images_per_s" in entry else ""
        print(f"loader {method}: {shown} img/s{demand}", flush=True)
    return result
