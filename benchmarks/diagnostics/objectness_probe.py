"""Which training term moves the RPN's objectness on labeled images, and which way?

For each loss term of one training step (supervised and, for teacher-student methods, the
unsupervised ones), the first-order change of the mean objectness logit on the labeled
images' positive and negative anchors (torchvision's RPN assignment: IoU ≥ 0.7 / < 0.3)
that an SGD step on that term alone would make, per unit learning rate: −∇term · ∇J.
Averaged over BATCHES batches; the checkpoint's teacher is used where it has one (else
teacher = student). The measurement behind SED's `rpn_weight` default (docs/methods/sed.md).

    python benchmarks/diagnostics/objectness_probe.py RECIPE CHECKPOINT [BATCHES] [--set key=value ...]
"""
import sys
from pathlib import Path

import torch

from checkpoint_trainer import first_batches, trainer_from
from ssodkit.methods.base import ModelHandle
from ssodkit.methods.teacher_student import unlabeled_batchnorm

torch.manual_seed(0)
args = [a for a in sys.argv[1:] if a != "--set"]
recipe, checkpoint = Path(args[0]), Path(args[1])
num_batches = int(args[2]) if len(args) > 2 and "=" not in args[2] else 3
overrides = dict(a.split("=", 1) for a in args[2:] if "=" in a)
trainer, state = trainer_from(recipe, checkpoint, overrides)
model, method, cfg = trainer.model, trainer.method, trainer.cfg
if trainer.teacher is not None:
    trainer.teacher.load_state_dict(state.get("teacher") or state["student"])
params = [p for p in model.parameters() if p.requires_grad]


def dot(grads: tuple, probe: tuple) -> float:
    return sum(float((a * b).sum()) for a, b in zip(grads, probe) if a is not None and b is not None)


totals: dict[str, list[float]] = {}
for labeled, unlabeled in first_batches(trainer, num_batches):
    model.eval()  # the probe reads objectness as at test time
    image_list, features = model.features(labeled.images)
    dense = model.rpn_dense(image_list, features)
    anchors = torch.cat(dense.anchors)
    labels, _ = model.rpn.assign_targets_to_anchors(
        [anchors] * len(labeled.images), [{"boxes": t["boxes"].float()} for t in labeled.targets])
    labels = torch.stack(labels)
    objectness = dense.flat("cls_logits")[..., 0]
    grad_pos = torch.autograd.grad(objectness[labels == 1].mean(), params, retain_graph=True, allow_unused=True)
    grad_neg = torch.autograd.grad(objectness[labels == 0].mean(), params, allow_unused=True)
    model.train()
    handle = ModelHandle(model)
    losses = method.supervised_loss(handle, labeled)
    if trainer.teacher is not None and unlabeled is not None:
        with unlabeled_batchnorm(model, method.params.unlabeled_bn_stats):
            losses.update(method.unsupervised_loss(handle, trainer.teacher, unlabeled, cfg.schedule.iters))
    names = list(losses)
    for i, name in enumerate(names):
        grads = torch.autograd.grad(losses[name], params, retain_graph=i < len(names) - 1, allow_unused=True)
        row = totals.setdefault(name, [0.0, 0.0, 0.0])
        row[0] += float(losses[name].detach()) / num_batches
        row[1] -= dot(grads, grad_pos) / num_batches
        row[2] -= dot(grads, grad_neg) / num_batches
print(f"{checkpoint}: change of the mean objectness logit on labeled anchors per unit lr, one SGD step on each term")
print(f"{'term':26s} {'value':>8} {'positives':>10} {'negatives':>10}")
for name, (value, pos, neg) in totals.items():
    print(f"{name:26s} {value:8.4f} {pos:+10.3f} {neg:+10.3f}")
trainer.close()
