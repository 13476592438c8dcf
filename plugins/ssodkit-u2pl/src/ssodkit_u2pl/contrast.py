"""U2PL's optional contrastive term on the heads' features (`contrastive: true`).

As the official `compute_contra_memobank_loss`, carried to cells: for each class c,
- anchors: the student's features at reliable candidate cells whose teacher class is c with
  probability > `anchor_thr` (low entropy, confident);
- positive: the class prototype, the mean of the teacher's features at those cells;
- negatives: a per-class FIFO memory of teacher features of unreliable cells for which c is
  a negative class (ranked r_l..K by the teacher) — "what is surely not c";
- InfoNCE over cosine similarities / temperature, the positive at index 0.

Features are the classification tower's output (`DenseOutputs.cls_features`): U2PL adds a
representation head; a method here cannot add parameters to the detector.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ssodkit_u2pl.cells import negative_classes


class NegativeMemory:
    """Per class, the newest `capacity` teacher features of cells where the class is a
    negative (FIFO, no gradient). Per process, like MixPL's cache; saved for resume."""

    def __init__(self, num_classes: int, capacity: int) -> None:
        self.capacity = capacity
        self.banks: list[Tensor | None] = [None] * num_classes

    def push(self, cls: int, features: Tensor) -> None:
        if features.numel() == 0:
            return
        bank = self.banks[cls]
        features = features.detach()
        joined = features if bank is None else torch.cat([bank.to(features), features])
        self.banks[cls] = joined[-self.capacity :]

    def size(self, cls: int) -> int:
        bank = self.banks[cls]
        return 0 if bank is None else int(bank.shape[0])

    def sample(self, cls: int, rows: int, per_row: int, device: torch.device) -> Tensor:
        """`[rows, per_row, C]` drawn uniformly with replacement, on `device` (a bank restored
        from a checkpoint comes back on the CPU)."""
        bank = self.banks[cls]
        assert bank is not None and bank.shape[0] > 0
        bank = self.banks[cls] = bank.to(device)
        index = torch.randint(bank.shape[0], (rows, per_row), device=device)
        return bank[index]

    def state_dict(self) -> dict[str, Any]:
        return {"banks": [None if b is None else b.cpu() for b in self.banks]}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str) -> None:
        self.banks = [None if b is None else b.to(device) for b in state["banks"]]


def info_nce(anchors: Tensor, positive: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """Mean over anchors `[M, C]` of −log softmax(cos(a, [p, n_1..n_k]) / T)[0];
    `positive` `[C]`, `negatives` `[M, k, C]`."""
    keys = torch.cat([positive.expand(anchors.shape[0], 1, -1), negatives], dim=1)  # [M, 1 + k, C]
    logits = F.cosine_similarity(anchors[:, None, :], keys, dim=-1) / temperature
    return F.cross_entropy(logits, torch.zeros(anchors.shape[0], dtype=torch.long, device=anchors.device))


def location_roles(
    teacher_probs: list[Tensor], unreliable: list[Tensor], rank_low: int, anchor_thr: float
) -> tuple[Tensor, Tensor]:
    """Per location (rows of `DenseOutputs.cls_features`, all levels), `[L, K]` each:
    whether it is an anchor of class c (one of its cells is reliable, with teacher class c at
    probability > `anchor_thr`), and whether it is a negative for c (one of its cells is
    unreliable with c ranked r_l..K). RetinaNet's A anchors share a location's feature."""
    anchor_of, negative_of = [], []
    for probs, mask in zip(teacher_probs, unreliable):
        top_prob, top_class = probs.max(dim=-1)
        confident = ~mask & (top_prob > anchor_thr)
        anchor = F.one_hot(top_class, probs.shape[-1]).bool() & confident[..., None]
        negative = negative_classes(probs, rank_low) & mask[..., None]
        anchor_of.append(anchor.any(dim=3).flatten(0, 2))
        negative_of.append(negative.any(dim=3).flatten(0, 2))
    return torch.cat(anchor_of), torch.cat(negative_of)


def contrastive_loss(
    student_feats: Tensor, teacher_feats: Tensor, anchor_of: Tensor, negative_of: Tensor, memory: NegativeMemory,
    *, num_anchors: int, num_negatives: int, temperature: float,
) -> tuple[Tensor, int]:
    """The term over one batch's locations (rows aligned): features `[L, C]`, `anchor_of` and
    `negative_of` `[L, K]` (`location_roles`).

    The memory takes this batch's negatives first, then is sampled (the official order).
    Returns the mean over the classes that have anchors and negatives, and their count.
    """
    for c in range(anchor_of.shape[1]):
        memory.push(c, teacher_feats[negative_of[:, c]])
    terms = []
    for c in range(anchor_of.shape[1]):
        rows = torch.where(anchor_of[:, c])[0]
        if rows.numel() == 0 or memory.size(c) == 0:
            continue
        prototype = teacher_feats[rows].mean(dim=0).detach()
        if rows.numel() > num_anchors:
            rows = rows[torch.randperm(rows.numel(), device=rows.device)[:num_anchors]]
        negatives = memory.sample(c, rows.numel(), num_negatives, student_feats.device)
        terms.append(info_nce(student_feats[rows].float(), prototype.float(), negatives.float(), temperature))
    if not terms:
        return student_feats.sum() * 0.0, 0
    return torch.stack(terms).mean(), len(terms)
