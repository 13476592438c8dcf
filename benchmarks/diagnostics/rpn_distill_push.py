"""Which way does SED's RPN distillation push objectness, and from which anchors?

With teacher = student = the checkpoint, the only difference between the teacher's view
(weak) and the student's (strong: colour op + erasing, same geometry) is the augmentation.
For each bin of the teacher's objectness, prints anchors per image, the student's and the
teacher's mean objectness, and Σ w·(p_s − p_t) — the weighted BCE gradient on the logits
(> 0 pushes objectness down) — with every anchor counted alike (`sampled_cells: all`) and
weighted by the RPN sampler's expected rates (`expected`, the default): the measurement
behind `method.sampled_cells` (docs/methods/sed.md).

    python benchmarks/diagnostics/rpn_distill_push.py RECIPE CHECKPOINT [BATCHES]
"""
import sys
from pathlib import Path

import torch

from checkpoint_trainer import first_batches, trainer_from
from ssodkit.detectors.dense import crop_common
from ssodkit.methods.sed import SEDParams
from ssodkit.methods.sed_losses import expected_sample_rates, per_image, soft_cls_terms

BINS = (0.0, 0.01, 0.05, 0.2, 0.5, 0.8, 1.01)
torch.manual_seed(0)
recipe, checkpoint = Path(sys.argv[1]), Path(sys.argv[2])
num_batches = int(sys.argv[3]) if len(sys.argv) > 3 else 3
trainer, _ = trainer_from(recipe, checkpoint, {"train.unlabeled_batch_size": 8})
views = [unlabeled for _, unlabeled in first_batches(trainer, num_batches)]
model = trainer.model.eval()
params = SEDParams()


def rpn(images: list[torch.Tensor]):
    image_list, features = model.features(images)
    return model.rpn_dense(image_list, features)


# per bin: anchors, Σ p_s, Σ p_t, push (all), push (expected)
sums = torch.zeros(len(BINS) - 1, 5, dtype=torch.float64)
with torch.no_grad():
    for view in views:
        teacher, student = rpn(view["weak"].images), rpn(view["strong"].images)
        pairs = [crop_common(teacher.cls_logits[lv], student.cls_logits[lv]) for lv in range(teacher.num_levels)]
        t_probs = [t.sigmoid() for t, _ in pairs]
        pos_rate, neg_rate = expected_sample_rates(t_probs, teacher.sampled_per_image, teacher.positive_fraction)
        for (_, s_logits), t in zip(pairs, t_probs):
            _, weight = soft_cls_terms(s_logits, t, params)
            push = weight * (s_logits.sigmoid() - t)
            sampled = push * (t * per_image(pos_rate, t) + (1 - t) * per_image(neg_rate, t))
            for b in range(len(BINS) - 1):
                m = (t >= BINS[b]) & (t < BINS[b + 1])
                sums[b] += torch.tensor([m.sum(), s_logits.sigmoid()[m].sum(), t[m].sum(), push[m].sum(),
                                         sampled[m].sum()], dtype=torch.float64)
images = sum(len(v["weak"].images) for v in views)
print(f"{images} unlabeled images, {checkpoint}; push = Σ w·(p_s − p_t) per image, > 0 lowers objectness")
print(f"{'teacher p':>12} {'anchors':>9} {'p student':>9} {'p teacher':>9} {'push all':>9} {'push expected':>13}")
for b, (n, ps, pt, push_all, push_exp) in enumerate(sums.tolist()):
    if n:
        print(f"[{BINS[b]:.2f}, {min(BINS[b + 1], 1):.2f}) {n / images:9.1f} {ps / n:9.3f} {pt / n:9.3f} "
              f"{push_all / images:+9.3f} {push_exp / images:+13.3f}")
total = sums.sum(0).tolist()
print(f"{'total':>12} {total[0] / images:9.1f} {'':>9} {'':>9} {total[3] / images:+9.3f} {total[4] / images:+13.3f}")
trainer.close()
