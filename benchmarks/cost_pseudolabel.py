"""benchmarks/cost.py's pseudolabel section: `ssodkit pseudolabel` against a bare loop.

Both run in this process on the same checkpoint (a supervised FCOS of the step benchmark's
size, saved untrained: the cost of a forward does not depend on the weights, and the
detector's score threshold is set to 0 with 100 detections per image so that every image
sends a full set of boxes through the output path), the same images, batch size and
DataLoader workers (`pseudolabel()`'s, which the CLI calls: 0). Timed end to end from
the checkpoint path (model load, image listing, loop, results in original pixels); the
bare loop is what a user would write with torchvision-style code:

    model = load(checkpoint); loader = DataLoader(images, batch_size, num_workers)
    with torch.inference_mode():
        for batch in loader: outputs += model(batch)

`ratio` = ssodkit's images/s ÷ the bare loop's, medians over interleaved repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.95  # issue 18: ≥ 0.95× the bare loop's images/s
BATCH_SIZE = 8  # `ssodkit pseudolabel --batch-size` default
NUM_WORKERS = 0  # what `pseudolabel()` uses (the CLI has no workers option)


def make_checkpoint(args: argparse.Namespace, work: Path) -> tuple[Path, Path, Path]:
    """A checkpoint and `args.pl_images` synthetic unlabeled images (COCO JSON, image root)."""
    from benchmarks.cost import cost_flags
    from ssodkit.config import build_config
    from ssodkit.data.synthetic import generate_synthetic
    from ssodkit.engine.trainer import Trainer

    data = generate_synthetic(work / "data", seed=5, n_train=8, n_val=2, n_unlabeled=args.pl_images)
    flags = cost_flags("supervised", "fcos", data, work / "runs", args)
    flags.update({"detector.score_thresh": 0.0, "detector.detections_per_img": 100})
    torch.manual_seed(0)
    trainer = Trainer(build_config(None, flags, []))
    trainer.save("last")
    trainer.close()
    return trainer.run_dir / "checkpoints" / "last.pt", Path(data.unlabeled), Path(data.images)


def ssodkit_run(checkpoint: Path, images: Path, root: Path, out: Path) -> int:
    from ssodkit.engine import pseudolabel as pl

    result = pl.pseudolabel(
        checkpoint, images, score_thr=0.0, batch_size=BATCH_SIZE, device="cpu", image_root=root,
        num_workers=NUM_WORKERS,
    )
    pl.write(result, out)
    return result.n_predicted


def bare_run(checkpoint: Path, images: Path, root: Path) -> int:
    """The plain loop: the same model, images (eval view), batch size and workers."""
    from torch.utils.data import DataLoader

    from ssodkit.data.coco import load_unlabeled
    from ssodkit.data.datasets import EvalDataset
    from ssodkit.engine.runtime import load_model_from_checkpoint
    from ssodkit.views.pipelines import eval_view

    loaded = load_model_from_checkpoint(checkpoint, weights="auto", device=torch.device("cpu"))
    model = loaded.model.eval()
    coco = load_unlabeled(images, root, skip_invalid=True, check_images="none")
    loader = DataLoader(EvalDataset(coco, eval_view(loaded.cfg.views)), batch_size=BATCH_SIZE,
                        num_workers=NUM_WORKERS, collate_fn=list)
    outputs: list[Any] = []
    with torch.inference_mode():
        for batch in loader:
            outputs.extend(model("predict", [s["image"].float().div_(255.0) for s in batch]))
    return len(outputs)


def run_pseudolabel(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Both loops in a fresh interpreter, as `ssodkit pseudolabel` runs: in the benchmark's
    own process, after the step section, Python's garbage collector walks every object the
    trainers left, which taxes the side that makes more objects (the results records) by up
    to 10 %."""
    work.mkdir(parents=True, exist_ok=True)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), json.dumps(options), str(work)],
        capture_output=True, text=True, env=env, check=False,
    )
    sys.stdout.write("".join(line + "\n" for line in done.stdout.splitlines()[:-1]))
    if done.returncode != 0:
        raise RuntimeError(f"pseudolabel benchmark failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The interleaved measurement itself (run by `run_pseudolabel` in a child process)."""
    torch.set_num_threads(args.threads)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint, images, root = make_checkpoint(args, work)
    runs = {
        "ssodkit": lambda: ssodkit_run(checkpoint, images, root, work / "pseudo.json"),
        "bare": lambda: bare_run(checkpoint, images, root),
    }
    for fn in runs.values():  # warm-up
        fn()
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.pl_repeats):
        for who in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            start = time.perf_counter()
            n = runs[who]()
            rates[who].append(n / (time.perf_counter() - start))
            print(f"pseudolabel: {who} {rates[who][-1]:.1f} images/s", flush=True)
    ours, bare = statistics.median(rates["ssodkit"]), statistics.median(rates["bare"])
    return {
        "ratio": ours / bare,
        "target": TARGET,
        "ssodkit_images_per_s": ours,
        "bare_images_per_s": bare,
        "images": args.pl_images,
        "batch_size": BATCH_SIZE,
        "num_workers": NUM_WORKERS,
        "repeats": args.pl_repeats,
    }


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    options = argparse.Namespace(**json.loads(sys.argv[1]))
    print(json.dumps(measure(options, Path(sys.argv[2]))))
