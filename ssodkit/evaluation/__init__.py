"""COCO evaluation (faster-coco-eval if installed, else pycocotools; same numbers)."""

from ssodkit.evaluation.coco_eval import (
    EvalResult,
    detections_to_results,
    evaluate_coco,
    per_class_table,
    results_table,
)

__all__ = ["EvalResult", "detections_to_results", "evaluate_coco", "per_class_table", "results_table"]
