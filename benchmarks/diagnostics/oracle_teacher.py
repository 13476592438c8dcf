"""Mean Teacher with an oracle teacher: the unlabeled images' hidden ground truth as pseudo-labels.

    python benchmarks/diagnostics/oracle_teacher.py ITERS SUPERVISED_CKPT oracle [key=value ...]
"""
import sys, torch
from pathlib import Path
from ssodkit.config import build_config
from ssodkit.engine.trainer import Trainer
from ssodkit.detectors.protocol import Detections
from ssodkit.pseudo.labels import PseudoLabels
iters = int(sys.argv[1]); init = sys.argv[2]; mode = sys.argv[3]; overrides = sys.argv[4:]
cfg = build_config(Path("recipes/synthetic/mean_teacher_fcos.yaml"), {"train.device": "cpu", "output.runs_dir": "runs/diagnostics",
    "output.name": f"oracle-{mode}", "schedule.iters": iters, "schedule.warmup_iters": 20, "eval.interval": iters,
    "train.log_interval": 25, "data.num_workers": 0, "train.init_from": init}, overrides)
tr = Trainer(cfg)
if mode == "oracle":
    tr.data.unlabeled_dataset.base.with_targets = True
    def oracle(teacher, weak):
        dets = [Detections(t["boxes"], torch.ones(len(t["boxes"])), t["labels"]) for t in weak.targets]
        return PseudoLabels.from_detections(dets)
    tr.method.pseudo_labels = oracle
try:
    s = tr.run()
finally:
    tr.close()
