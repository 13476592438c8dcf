"""The optional contrastive term on hand-made features: InfoNCE, the FIFO memory, which
locations are anchors and negatives, where the gradient goes, and resume."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def contrast(u2pl):
    """`ssodkit_u2pl.contrast`, imported from this folder's `src/`."""
    import ssodkit_u2pl.contrast

    return ssodkit_u2pl.contrast


def test_info_nce_is_minus_log_softmax_of_the_positive(contrast):
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    pos = torch.tensor([1.0, 1.0])
    neg = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]], [[0.0, -1.0], [1.0, 0.0]]])
    t = 0.5
    expected = 0.0
    for i in range(2):
        sims = [torch.cosine_similarity(a[i], k, dim=0) / t for k in (pos, *neg[i])]
        expected += -(sims[0] - torch.logsumexp(torch.stack(sims), 0)) / 2
    assert float(contrast.info_nce(a, pos, neg, t)) == pytest.approx(float(expected), rel=1e-6)


def test_memory_keeps_the_newest_per_class_and_round_trips(contrast):
    memory = contrast.NegativeMemory(num_classes=2, capacity=4)
    memory.push(0, torch.arange(3.0)[:, None])
    memory.push(0, torch.arange(3.0, 6.0)[:, None])
    memory.push(1, torch.zeros(0, 1))
    assert memory.banks[0].flatten().tolist() == [2.0, 3.0, 4.0, 5.0] and memory.size(1) == 0
    restored = contrast.NegativeMemory(num_classes=2, capacity=4)
    restored.load_state_dict(memory.state_dict(), "cpu")
    assert torch.equal(restored.banks[0], memory.banks[0]) and restored.banks[1] is None
    drawn = memory.sample(0, 3, 5, torch.device("cpu"))
    assert drawn.shape == (3, 5, 1) and set(drawn.flatten().tolist()) <= {2.0, 3.0, 4.0, 5.0}


def test_location_roles_anchor_confident_reliable_cells_and_negate_low_ranks_of_unreliable(contrast):
    # one level, one image, 1×2 locations, A = 2 anchors each, K = 4 classes
    probs = torch.tensor([[[
        [[0.9, 0.1, 0.0, 0.0], [0.2, 0.1, 0.0, 0.0]],  # loc 0: anchor 0 confident class 0; anchor 1 not
        [[0.5, 0.4, 0.3, 0.1], [0.1, 0.6, 0.2, 0.05]],  # loc 1: anchor 0 unreliable; anchor 1 class 1
    ]]])
    unreliable = torch.tensor([[[[False, False], [True, False]]]])
    anchor_of, negative_of = contrast.location_roles([probs], [unreliable], rank_low=3, anchor_thr=0.3)
    assert anchor_of.tolist() == [[True, False, False, False], [False, True, False, False]]
    # loc 1's unreliable anchor ranks 0 > 1 > 2 > 3: classes 2 and 3 are its negatives
    assert negative_of.tolist() == [[False, False, False, False], [False, False, True, True]]


def test_gradient_reaches_only_the_anchors_student_features(contrast):
    torch.manual_seed(0)
    locations, channels, k = 12, 8, 3
    student = torch.randn(locations, channels, requires_grad=True)
    teacher = torch.randn(locations, channels)
    anchor_of = torch.zeros(locations, k, dtype=torch.bool)
    anchor_of[[0, 1, 2], 0] = True
    anchor_of[[3, 4], 1] = True  # class 1 has no negatives anywhere: skipped
    negative_of = torch.zeros(locations, k, dtype=torch.bool)
    negative_of[[8, 9, 10], 0] = True
    negative_of[[11], 2] = True  # class 2 has negatives but no anchors: skipped
    memory = contrast.NegativeMemory(k, capacity=16)
    loss, classes = contrast.contrastive_loss(
        student, teacher, anchor_of, negative_of, memory, num_anchors=256, num_negatives=5, temperature=0.5,
    )
    assert classes == 1 and memory.size(0) == 3 and memory.size(2) == 1  # pushed before sampling
    assert torch.equal(memory.banks[0], teacher[[8, 9, 10]])
    loss.backward()
    assert (student.grad[[0, 1, 2]].abs().sum(dim=1) > 0).all()
    assert student.grad[3:].abs().max() == 0
    assert float(loss.detach()) > 0


def test_no_anchor_or_no_memory_gives_a_zero_term(contrast):
    student = torch.randn(4, 3, requires_grad=True)
    memory = contrast.NegativeMemory(2, capacity=8)
    none = torch.zeros(4, 2, dtype=torch.bool)
    loss, classes = contrast.contrastive_loss(
        student, torch.randn(4, 3), none, none, memory, num_anchors=4, num_negatives=2, temperature=0.5
    )
    assert classes == 0 and float(loss.detach()) == 0.0


def test_the_method_saves_its_memory_for_resume(u2pl, tiny_config):
    from ssodkit.plugins import method_class

    cfg = tiny_config(method__name="u2pl", method__contrastive=True, method__contrast_memory=8)
    method = method_class("u2pl").from_config(cfg, ["a", "b", "c"])
    method.memory.push(1, torch.ones(3, 4))
    state = method.state_dict()
    fresh = method_class("u2pl").from_config(cfg, ["a", "b", "c"])
    fresh.load_state_dict(state)
    assert torch.equal(fresh.memory.banks[1], torch.ones(3, 4)) and fresh.memory.banks[0] is None
    plain = method_class("u2pl").from_config(tiny_config(method__name="u2pl"), ["a", "b", "c"])
    assert plain.memory is None and "memory" not in plain.state_dict()
