"""Where SED's RoI box distillation puts its weight: the teacher's proposals by its
foreground probability, with their IoU to the hidden ground truth of the unlabeled images.

Teacher = student = the checkpoint; the teacher sees the weak view, the student the strong
view (same geometry), as in training. For each bin of the teacher's top foreground
probability p on its top 256 proposals per image: RoIs per image, their mean IoU with the
nearest hidden box, the share of RoIs with IoU ≥ 0.5 (those the RoI head's own box loss
trains on), and the bin's share of the box term Σ p·smoothL1 (the weight `roi_terms` gave
every RoI before it counted only those with p > 0.5; `box_cell_weight: fg` restores it).

    python benchmarks/diagnostics/roi_box_targets.py RECIPE CHECKPOINT [BATCHES]
"""
import sys
from pathlib import Path

import torch
from torchvision.ops import box_iou

from checkpoint_trainer import first_batches, trainer_from
from ssodkit.methods.sed_losses import delta_loss, top_class_deltas

BINS = (0.0, 0.05, 0.2, 0.5, 0.8, 1.01)
torch.manual_seed(0)
recipe, checkpoint = Path(sys.argv[1]), Path(sys.argv[2])
num_batches = int(sys.argv[3]) if len(sys.argv) > 3 else 3
trainer, _ = trainer_from(recipe, checkpoint, {"train.unlabeled_batch_size": 8})
trainer.data.unlabeled_dataset.base.with_targets = True  # the hidden boxes, for IoU only
views = [unlabeled for _, unlabeled in first_batches(trainer, num_batches)]
model = trainer.model.eval()

# per bin: RoIs, Σ IoU, RoIs with IoU ≥ 0.5, Σ p·loss
sums = torch.zeros(len(BINS) - 1, 4, dtype=torch.float64)
images = 0
with torch.no_grad():
    for view in views:
        weak, strong = view["weak"], view["strong"]
        t_list, t_feats = model.features(weak.images)
        boxes = [b[:256] for b in model.proposals(t_list, t_feats)]
        t_logits, t_deltas = model.roi_outputs(t_feats, boxes, t_list.image_sizes)
        s_list, s_feats = model.features(strong.images)
        s_logits, s_deltas = model.roi_outputs(s_feats, boxes, s_list.image_sizes)
        fg_prob, p_box, t_box = top_class_deltas(t_logits.float().softmax(-1), s_deltas, t_deltas)
        weighted = fg_prob * delta_loss(p_box, t_box, "smooth_l1")
        ious = torch.cat([
            box_iou(b, t["boxes"]).max(1).values if len(t["boxes"]) else torch.zeros(len(b))
            for b, t in zip(boxes, weak.targets)
        ])
        images += len(boxes)
        for i, (lo, hi) in enumerate(zip(BINS[:-1], BINS[1:])):
            m = (fg_prob >= lo) & (fg_prob < hi)
            sums[i] += torch.tensor([m.sum(), ious[m].sum(), (ious[m] >= 0.5).sum(), weighted[m].sum()], dtype=torch.float64)

total = sums[:, 3].sum()
print(f"{images} unlabeled images, teacher = student = {checkpoint}")
print("teacher fg prob | RoIs/img | mean IoU to GT | IoU>=0.5 | share of RoI box term")
for i, (lo, hi) in enumerate(zip(BINS[:-1], BINS[1:])):
    n, iou, pos, w = sums[i].tolist()
    print(f"[{lo:.2f}, {min(hi, 1):.2f}) | {n / images:8.1f} | {iou / max(n, 1):14.2f} | {pos / max(n, 1):8.0%} | {w / total:6.1%}")
