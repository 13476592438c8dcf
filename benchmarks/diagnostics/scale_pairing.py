"""Where s↓'s levels are confident, is their scale-consistency partner confident too?

For each level l of the half-size image s↓ (paired with level l+1 of the full-size image s),
counts the anchors / points with max class probability > 0.5 on s↓, how many of them are
confident at the partner s:P_{l+1}, and how many at s:P_l max-pooled 2×2 onto that grid —
the measurement behind `method.scale_bottom_target: union` (docs/methods/sed.md).

    python benchmarks/diagnostics/scale_pairing.py RECIPE CHECKPOINT [BATCHES]
"""
import sys
from pathlib import Path

import torch

from checkpoint_trainer import first_batches, trainer_from
from ssodkit.detectors.dense import crop_common, paired_levels
from ssodkit.methods.sed_losses import half_size, pool_to_next_level

CONFIDENT = 0.5
torch.manual_seed(0)
recipe, checkpoint = Path(sys.argv[1]), Path(sys.argv[2])
num_batches = int(sys.argv[3]) if len(sys.argv) > 3 else 3
trainer, _ = trainer_from(recipe, checkpoint, {"train.unlabeled_batch_size": 8})
weak = [unlabeled["weak"] for _, unlabeled in first_batches(trainer, num_batches)]
trainer.model.eval()


def confident(logits: torch.Tensor) -> torch.Tensor:
    return logits.sigmoid().max(-1).values > CONFIDENT


counts: dict[int, list[int]] = {}
with torch.no_grad():
    for batch in weak:
        large, small = trainer.model.dense(batch.images), trainer.model.dense(half_size(batch.images))
        for l_large, l_small in paired_levels(large, small):
            partner, pred = crop_common(large.cls_logits[l_large], small.cls_logits[l_small])
            below = crop_common(pool_to_next_level(large.cls_logits[l_large - 1]), pred)[0]
            c = counts.setdefault(l_small, [0, 0, 0])
            on_small = confident(pred)
            c[0] += int(on_small.sum())
            c[1] += int((on_small & confident(partner)).sum())
            c[2] += int((on_small & confident(below)).sum())
images = sum(len(b.images) for b in weak)
print(f"{images} unlabeled images, {checkpoint}")
for level, (n, partner, below) in sorted(counts.items()):
    print(f"s↓ level {level}: confident {n}; of them confident at s level {level + 1} (partner) {partner}, "
          f"at s level {level} pooled 2×2 {below}")
trainer.close()
