"""Seeded generators: every call site draws from exactly the seed it drew from before the
helpers were shared (pinned numbers), so runs, resumes and traces stay reproducible."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ssodkit.data.datasets import EvalDataset, LabeledDataset, UnlabeledDataset
from ssodkit.data.sampler import InfiniteBatchSampler
from ssodkit.engine.data_setup import MultiViewDataset
from ssodkit.methods.soft_teacher import SoftTeacher
from ssodkit.stats.grad import _generator


@pytest.mark.parametrize(
    ("seed", "index", "view", "expected"),
    [(0, 0, "weak", 0), (7, 123, "mosaic", 28000579), (-3, 5, "strong", 9223372036842775793),
     (2**62, 9, "mixup", 38)],
)
def test_grad_view_generators_keep_their_seeds(seed, index, view, expected):
    assert _generator(seed, index, view).initial_seed() == expected


@pytest.mark.parametrize(
    ("seed", "it", "image_ids", "expected"),
    [(0, 0, [1, 2], 3840132825052968429), (42, 1000, [17, 3, 99], 7282976317511515048),
     (-5, 7, [123456789], 2753523808929649812)],
)
def test_soft_teacher_jitter_generator_keeps_its_seed(seed, it, image_ids, expected):
    method = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(seed=seed)))
    weak = SimpleNamespace(image_ids=image_ids)
    assert SoftTeacher.jitter_generator(method, weak, it).initial_seed() == expected


def test_sampler_augmentation_seeds_are_unchanged():
    batches = iter(InfiniteBatchSampler(10, 3, seed=5, rank=1, world_size=2))
    assert next(batches) == [(6, 221616376), (3, 1988493393), (4, 1607886762)]
    assert next(batches) == [(9, 1127941244), (8, 747334613), (7, 267389095)]


def test_multi_view_dataset_seeds_each_view_from_the_sample_seed():
    class Base:
        def _sample(self, index, g):
            return {"image": g.initial_seed(), "boxes": None, "labels": None}

    def view(image, boxes, labels, g):
        seeds = (image, g.initial_seed())
        return SimpleNamespace(image=seeds, boxes=None, labels=None, matrix=None, erased=None)

    out = MultiViewDataset(Base(), {"weak": (view, None), "strong": (view, None)})[(0, 2**31 - 5)]
    assert out["weak"]["image"] == (2147483643, 2147483493)
    assert out["strong"]["image"] == (2147483643, 2147483494)


@pytest.mark.parametrize("cls", [LabeledDataset, UnlabeledDataset])
def test_training_datasets_seed_the_view_with_the_sample_seed(cls):
    dataset = cls.__new__(cls)
    dataset._sample = lambda index, g: g.initial_seed()
    assert dataset[(3, 1988493393)] == 1988493393


def test_eval_dataset_uses_seed_zero():
    dataset = EvalDataset.__new__(EvalDataset)
    dataset._sample = lambda index, g: g.initial_seed()
    assert dataset[4] == 0


@pytest.mark.parametrize(("seed", "expected"), [(0, 0), (1234, 1234), (-1, 2**64 - 1)])
def test_mixpl_generator_starts_from_the_run_seed_as_torch_maps_it(tiny_config, seed, expected):
    from ssodkit.methods.mixpl import MixPL

    cfg = tiny_config(method__name="mixpl", train__seed=seed, train__unlabeled_batch_size=2)
    assert MixPL.from_config(cfg, ["a", "b"]).generator.initial_seed() == expected


def test_generators_leave_the_global_rng_alone():
    before = torch.get_rng_state()
    _generator(1, 2, "weak")
    assert torch.equal(torch.get_rng_state(), before)
