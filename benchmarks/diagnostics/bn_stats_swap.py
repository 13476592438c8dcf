"""Evaluate a run's teacher as saved and with the supervised checkpoint's BatchNorm statistics.

    python benchmarks/diagnostics/bn_stats_swap.py RUN_CKPT SUPERVISED_CKPT
"""
import sys, torch
from pathlib import Path
from torch import nn
from ssodkit.engine.runtime import load_model_from_checkpoint
from ssodkit.engine.predict import evaluate_model
from ssodkit.engine.checkpoint import load_checkpoint
from ssodkit.data.coco import load_coco
from ssodkit.data.datasets import EvalDataset
from ssodkit.views.pipelines import eval_view
ckpt = Path(sys.argv[1])
root = Path.home()/".cache/ssodkit/synthetic-v1-seed0"
loaded = load_model_from_checkpoint(ckpt, weights="teacher")
model, cfg = loaded.model, loaded.cfg
val = load_coco(root/"annotations/val.json", root/"images")
ds = EvalDataset(val, eval_view(cfg.views))
def ev(tag):
    r, _ = evaluate_model(model.eval(), ds, val.to_dict(), val.index_to_cat_id, batch_size=8, device=torch.device("cpu"))
    print(tag, round(r.map*100, 1), flush=True)
ev("teacher as saved")
sup = load_checkpoint(Path(sys.argv[2]))["student"]
bufs = dict(model.named_buffers())
with torch.no_grad():
    for k, v in bufs.items():
        if k in sup and ("running" in k): v.copy_(sup[k])
ev("teacher weights + supervised BN statistics")
drift = [float((dict(model.named_parameters())[k] - sup[k]).norm() / sup[k].norm()) for k, _ in model.named_parameters()]
print("relative weight drift from supervised: mean", sum(drift)/len(drift), "max", max(drift))
