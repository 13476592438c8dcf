"""The plain pycocotools evaluation a user would otherwise run (the reference of
benchmarks/cost.py's evaluate figure):

    python benchmarks/pycocotools_eval.py GT.json RESULTS.json

Prints COCOeval's twelve box stats as one JSON list on the last line.
"""

import json
import sys

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

gt = COCO(sys.argv[1])
dt = gt.loadRes(sys.argv[2])
evaluator = COCOeval(gt, dt, "bbox")
evaluator.evaluate()
evaluator.accumulate()
evaluator.summarize()
print(json.dumps([float(x) for x in evaluator.stats]))
