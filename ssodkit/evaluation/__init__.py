"""COCO evaluation (faster-coco-eval if installed, else pycocotools; same numbers).

Results are plain data (`EvalResult`); the CLI's tables of them are in `ssodkit.cli.tables`.
"""

from ssodkit.evaluation.coco_eval import EvalResult, detections_to_results, evaluate_coco, evaluate_results_file

__all__ = ["EvalResult", "detections_to_results", "evaluate_coco", "evaluate_results_file"]
