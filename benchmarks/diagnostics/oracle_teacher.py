"""Mean Teacher with an oracle teacher: the unlabeled images' hidden ground truth as pseudo-labels.

    python benchmarks/diagnostics/oracle_teacher.py ITERS SUPERVISED_CKPT MODE [key=value ...]

MODE: `oracle` (all hidden boxes, precision = recall = 100 %), `drop50` (each box kept with
probability 0.5: recall 50 %, precision 100 %), `fp100` (all boxes plus, for each, a copy
moved by one box size in a random direction with a random class: recall 100 %, precision
50 %). Together they say which kind of pseudo-label error costs a student what.
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
g = torch.Generator().manual_seed(0)
num_classes = len(tr.classes)


def corrupt(boxes, labels, size):
    if mode == "drop50":
        keep = torch.rand(len(boxes), generator=g) < 0.5
        return boxes[keep], labels[keep]
    if mode == "fp100":
        wh = boxes[:, 2:] - boxes[:, :2]
        sign = torch.randint(0, 2, boxes[:, :2].shape, generator=g) * 2 - 1
        moved = boxes + (wh * sign).repeat(1, 2)
        h, w = size
        moved[:, 0::2] = moved[:, 0::2].clamp(0, w)
        moved[:, 1::2] = moved[:, 1::2].clamp(0, h)
        ok = ((moved[:, 2:] - moved[:, :2]) > 2).all(1)
        fake = torch.randint(0, num_classes, (len(boxes),), generator=g)
        return torch.cat([boxes, moved[ok]]), torch.cat([labels, fake[ok]])
    return boxes, labels


if mode in ("oracle", "drop50", "fp100"):
    tr.data.unlabeled_dataset.base.with_targets = True

    def oracle(teacher, weak):
        dets = []
        for t, image in zip(weak.targets, weak.images):
            boxes, labels = corrupt(t["boxes"], t["labels"], image.shape[-2:])
            dets.append(Detections(boxes, torch.ones(len(boxes)), labels))
        return PseudoLabels.from_detections(dets)
    tr.method.pseudo_labels = oracle
else:
    sys.exit(f"unknown mode {mode!r}")
try:
    s = tr.run()
finally:
    tr.close()
