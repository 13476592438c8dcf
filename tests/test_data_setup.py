"""Unlabeled multi-view samples: independent views, or a view that continues another."""

from __future__ import annotations

import pytest
import torch

from ssodkit.data.coco import load_unlabeled
from ssodkit.data.datasets import UnlabeledDataset, identity_view
from ssodkit.engine.data_setup import MultiViewDataset, parse_view_spec, resolve_num_workers
from ssodkit.views.config import ViewConfig
from ssodkit.views.pipelines import photometric_strong_view, strong_view, weak_view


def test_view_specs_parse():
    assert parse_view_spec("weak") == ("weak", "weak", None)
    assert parse_view_spec("strong=photometric_strong@weak") == ("strong", "photometric_strong", "weak")


def test_continued_view_keeps_the_geometry_and_independent_views_do_not(tiny_data):
    coco = load_unlabeled(tiny_data.unlabeled, tiny_data.images)
    cfg = ViewConfig(train_short_side=(96, 160))
    dataset = MultiViewDataset(
        UnlabeledDataset(coco, identity_view),
        {"weak": (weak_view(cfg), None), "same": (photometric_strong_view(cfg), "weak"), "strong": (strong_view(cfg), None)},
    )
    differs = 0
    for seed in range(6):
        sample = dataset[(0, seed)]
        assert torch.equal(sample["same"]["matrix"], sample["weak"]["matrix"])
        assert sample["same"]["image"].shape == sample["weak"]["image"].shape
        assert sample["weak"]["boxes"].numel() == 0  # hidden ground truth never leaks
        differs += not torch.equal(sample["strong"]["matrix"], sample["weak"]["matrix"])
    assert differs >= 4
    assert torch.equal(dataset[(0, 1)]["strong"]["image"], dataset[(0, 1)]["strong"]["image"])  # seeded


def test_labeled_resampling_is_the_methods_default_and_configurable(tiny_config):
    from ssodkit.data.datasets import LabeledDataset
    from ssodkit.data.resampling import repeat_factors
    from ssodkit.engine.data_setup import labeled_repeat_factors

    cfg = tiny_config()
    from ssodkit.data.coco import load_coco

    train = load_coco(cfg.data.train_ann, cfg.data.train_images)
    dataset = LabeledDataset(train, identity_view)
    assert labeled_repeat_factors(cfg, dataset, None) is None  # off unless a method or user asks
    assert labeled_repeat_factors(tiny_config(data__repeat_factor_t=0.0), dataset, 1e-3) is None
    factors = labeled_repeat_factors(tiny_config(data__repeat_factor_t=0.9), dataset, None)
    assert factors == repeat_factors(train, 0.9, image_ids=dataset.image_ids)[0]
    assert max(factors) > 1.0 and len(factors) == len(dataset)


def test_several_labeled_views_give_each_image_once_per_view_view_after_view(tiny_config, tmp_path):
    """Unbiased Teacher's labeled batch: every image weak, then every image strong, with the
    same boxes (the strong view continues the weak one); other methods keep one view."""
    from ssodkit.engine.data_setup import build_train_data
    from ssodkit.engine.distributed import DistInfo

    cfg = tiny_config(method__name="unbiased_teacher")
    data = build_train_data(cfg, tmp_path, DistInfo(), ("weak", "strong=ut_strong@weak"),
                            labeled_views=("weak", "strong=ut_strong@weak"))
    try:
        labeled, unlabeled = next(data.batches(0))
        n = cfg.train.batch_size
        assert len(labeled) == 2 * n and len(unlabeled["weak"]) == len(unlabeled["strong"])
        for weak, strong in zip(labeled[:n], labeled[n:]):
            assert weak["image_id"] == strong["image_id"] and len(weak["boxes"]) > 0
            assert torch.equal(weak["boxes"], strong["boxes"]) and torch.equal(weak["labels"], strong["labels"])
            assert torch.equal(weak["matrix"], strong["matrix"]) and weak["image"].shape == strong["image"].shape
            assert not torch.equal(weak["image"], strong["image"])
    finally:
        data.close()
    one = build_train_data(cfg, tmp_path, DistInfo(), ())
    try:
        assert len(next(one.batches(0))[0]) == cfg.train.batch_size
    finally:
        one.close()


def test_synthetic_kind_key_trains_on_the_fine_set_with_hidden_ground_truth(tmp_path, monkeypatch):
    """`--set data.synthetic_kind=fine` in synthetic mode: the fine set is generated into the
    cache, trained on, and its unlabeled pool's hidden boxes score the pseudo-labels."""
    from ssodkit.config import build_config
    from ssodkit.data import synthetic
    from ssodkit.engine.metrics import read_metrics
    from tests.conftest import TINY_FLAGS
    from tests.test_trainer import train

    monkeypatch.setattr(synthetic, "DEFAULT_SIZES", (4, 2, 4))
    monkeypatch.setenv("SSODKIT_CACHE_DIR", str(tmp_path / "cache"))
    flags = {
        **TINY_FLAGS, "data.synthetic_kind": "fine", "method.name": "mean_teacher", "method.score_thr": 0.05,
        "train.unlabeled_batch_size": 2, "schedule.iters": 2, "eval.interval": 2,
        "output.runs_dir": str(tmp_path / "runs"),
    }
    trainer, summary = train(build_config(None, flags))
    assert (tmp_path / "cache" / "synthetic-fine-v1-seed0").is_dir()
    assert trainer.data.classes == [c[0] for c in synthetic.FINE_CLASSES]
    assert trainer.data.sources.unlabeled_gt is not None
    evals = [r for r in read_metrics(summary.run_dir / "metrics.jsonl") if r["type"] == "eval"]
    assert evals[-1]["pseudo/gt_per_image"] > 0


@pytest.mark.parametrize(
    ("cpus", "processes", "expected"),
    [(2, 1, 1), (4, 1, 1), (8, 1, 3), (16, 1, 7), (16, 8, 1), (64, 1, 8), (1, 1, 1)],
)
def test_auto_workers_split_the_process_share_of_cpus_less_one_between_two_streams(cpus, processes, expected):
    assert resolve_num_workers("auto", cpus, processes) == expected


def test_a_number_of_workers_is_taken_as_given(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resolve_num_workers(0) == 0 and resolve_num_workers(5, 2, 4) == 5
    assert resolve_num_workers("auto", 32) == 3  # torchrun's LOCAL_WORLD_SIZE: 8 CPUs each


@pytest.mark.parametrize("bad", ["-1", "many", 1.5, True])
def test_bad_worker_counts_are_refused_in_one_line(bad):
    from ssodkit.config import build_config
    from ssodkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^invalid config: data.num_workers = .*whole number ≥ 0 or 'auto'"):
        build_config(None, {"data.num_workers": bad})
    assert build_config(None, {"data.num_workers": "3"}).data.num_workers == 3
