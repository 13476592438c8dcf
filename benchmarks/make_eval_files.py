"""A synthetic COCO ground truth and a large results file for timing evaluators.

    python benchmarks/make_eval_files.py OUT_DIR [--images 5000] [--dets 100] [--seed 0]

Writes OUT_DIR/gt.json (`--images` images of 640×480, 20 categories, 1–12 boxes each,
small, medium and large) and OUT_DIR/results.json (`--dets` detections per image: each
ground-truth box jittered a few times with a high score, the rest random boxes with low
scores, so that AP is neither 0 nor 1). Coordinates are rounded to 0.01 px and scores to
1e-4, as a detector's results file would be. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

WIDTH, HEIGHT, CATEGORIES = 640, 480, 20


def make(out_dir: Path, images: int = 5000, dets: int = 100, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    gt_images, annotations, results = [], [], []
    ann_id = 1
    for image_id in range(1, images + 1):
        gt_images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "width": WIDTH, "height": HEIGHT})
        n = int(rng.integers(1, 13))
        # sides from 8 px (small) to 300 px (large), log-uniform
        w = np.exp(rng.uniform(np.log(8), np.log(300), n))
        h = w * np.exp(rng.uniform(-0.5, 0.5, n))
        h = np.minimum(h, HEIGHT - 1)
        x = rng.uniform(0, WIDTH - w)
        y = rng.uniform(0, HEIGHT - h)
        cats = rng.integers(1, CATEGORIES + 1, n)
        boxes = np.stack([x, y, w, h], 1).round(2)
        for box, cat in zip(boxes, cats):
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": int(cat), "bbox": box.tolist(),
                "area": round(float(box[2] * box[3]), 2), "iscrowd": 0,
            })
            ann_id += 1
        # detections: up to 3 jittered copies of each box, then random boxes
        copies = min(dets, 3 * n)
        src = rng.integers(0, n, copies)
        jit = boxes[src] + rng.normal(0, 0.08, (copies, 4)) * np.repeat(boxes[src][:, 2:], 2, 1)
        jit_cats = np.where(rng.random(copies) < 0.9, cats[src], rng.integers(1, CATEGORIES + 1, copies))
        jit_scores = rng.uniform(0.3, 1.0, copies)
        k = dets - copies
        rw = np.exp(rng.uniform(np.log(4), np.log(300), k))
        rh = rw * np.exp(rng.uniform(-0.5, 0.5, k))
        rand = np.stack([rng.uniform(0, WIDTH - rw), rng.uniform(0, np.maximum(1, HEIGHT - rh)), rw, rh], 1)
        all_boxes = np.concatenate([jit, rand])
        all_boxes[:, 2:] = np.maximum(all_boxes[:, 2:], 1.0)
        all_boxes = all_boxes.round(2)
        all_cats = np.concatenate([jit_cats, rng.integers(1, CATEGORIES + 1, k)])
        all_scores = np.concatenate([jit_scores, rng.uniform(0.0, 0.5, k)]).round(4)
        for box, cat, score in zip(all_boxes.tolist(), all_cats.tolist(), all_scores.tolist()):
            results.append({"image_id": image_id, "category_id": cat, "bbox": box, "score": score})
    gt = {
        "images": gt_images, "annotations": annotations,
        "categories": [{"id": c, "name": f"class{c}"} for c in range(1, CATEGORIES + 1)],
    }
    gt_path, results_path = out_dir / "gt.json", out_dir / "results.json"
    gt_path.write_text(json.dumps(gt))
    results_path.write_text(json.dumps(results))
    return gt_path, results_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gt, res = make(args.out_dir, args.images, args.dets, args.seed)
    print(f"wrote {gt} and {res}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
