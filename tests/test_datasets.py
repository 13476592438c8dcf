"""Torch datasets yield the sample dict of docs/design.md, reproducibly per (index, seed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ssodkit.data.coco import CocoDataset, load_coco
from ssodkit.data.datasets import (
    EvalDataset,
    IdentityOutput,
    LabeledDataset,
    UnlabeledDataset,
    collate_samples,
    identity_view,
)
from ssodkit.errors import DataError


@pytest.fixture
def coco(tmp_path) -> CocoDataset:
    """Image 1: two boxes; image 2: none; image 3: only a crowd box."""
    root = tmp_path / "images"
    root.mkdir()
    sizes = {1: (40, 30), 2: (20, 24), 3: (16, 16)}
    for image_id, (w, h) in sizes.items():
        pixels = np.full((h, w, 3), image_id * 40, np.uint8)
        Image.fromarray(pixels).save(root / f"{image_id}.png")
    data = {
        "images": [
            {"id": i, "file_name": f"{i}.png", "width": w, "height": h}
            for i, (w, h) in sizes.items()
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 20, "bbox": [1, 2, 10, 5]},
            {"id": 2, "image_id": 1, "category_id": 10, "bbox": [5, 5, 20, 20]},
            {"id": 3, "image_id": 3, "category_id": 10, "bbox": [0, 0, 16, 16], "iscrowd": 1},
        ],
        "categories": [{"id": 10, "name": "a"}, {"id": 20, "name": "b"}],
    }
    ann = tmp_path / "annotations" / "train.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps(data))
    return load_coco(ann)


def _assert_sample(sample: dict, image_id: int, height: int, width: int) -> None:
    assert set(sample) == {
        "image",
        "boxes",
        "labels",
        "image_id",
        "matrix",
        "orig_size",
        "file_name",
        "erased",
    }
    assert sample["erased"].shape[1] == 4
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, height, width)
    assert sample["boxes"].dtype == torch.float32 and sample["boxes"].shape[1] == 4
    assert sample["labels"].dtype == torch.int64 and len(sample["labels"]) == len(sample["boxes"])
    assert sample["matrix"].dtype == torch.float64 and sample["matrix"].shape == (3, 3)
    assert sample["image_id"] == image_id
    assert sample["orig_size"] == (height, width)
    assert sample["file_name"] == f"{image_id}.png"


def test_labeled_dataset_yields_the_sample_dict_with_xyxy_boxes_and_class_indices(coco):
    dataset = LabeledDataset(coco, identity_view)
    sample = dataset[(0, 123)]
    _assert_sample(sample, 1, 30, 40)
    assert int(sample["image"][0, 0, 0]) == 40
    torch.testing.assert_close(sample["boxes"], torch.tensor([[1.0, 2, 11, 7], [5, 5, 25, 25]]))
    assert sample["labels"].tolist() == [1, 0]  # category 20 → index 1, 10 → 0
    torch.testing.assert_close(sample["matrix"], torch.eye(3, dtype=torch.float64))


def test_labeled_dataset_drops_images_without_a_non_crowd_box_unless_asked(coco):
    assert LabeledDataset(coco, identity_view).image_ids == [1]
    kept = LabeledDataset(coco, identity_view, keep_empty=True)
    assert kept.image_ids == [1, 2, 3] and len(kept) == 3
    _assert_sample(kept[(2, 0)], 3, 16, 16)
    assert kept[(2, 0)]["boxes"].shape == (0, 4)


def test_unlabeled_dataset_keeps_every_image_and_yields_no_boxes(coco):
    dataset = UnlabeledDataset(coco, identity_view)
    assert len(dataset) == 3
    for index, image_id in enumerate([1, 2, 3]):
        sample = dataset[(index, 7)]
        assert sample["image_id"] == image_id
        assert sample["boxes"].shape == (0, 4) and sample["labels"].shape == (0,)


def test_eval_dataset_takes_an_int_index_and_keeps_every_image(coco):
    dataset = EvalDataset(coco, identity_view)
    assert len(dataset) == 3
    _assert_sample(dataset[1], 2, 24, 20)
    assert dataset[0]["boxes"].shape == (2, 4)


def test_the_view_gets_a_generator_seeded_by_the_index_seed(coco):
    def noisy_view(image, boxes, labels, generator):
        shift = torch.rand(1, generator=generator, dtype=torch.float64).item()
        return IdentityOutput(image, boxes + shift, labels, torch.eye(3, dtype=torch.float64))

    dataset = LabeledDataset(coco, noisy_view)
    a, b, c = dataset[(0, 5)], dataset[(0, 5)], dataset[(0, 6)]
    torch.testing.assert_close(a["boxes"], b["boxes"])
    assert not torch.equal(a["boxes"], c["boxes"])
    expected = torch.rand(1, generator=torch.Generator().manual_seed(5), dtype=torch.float64).item()
    assert a["boxes"][0, 0].item() == pytest.approx(1 + expected)


def test_collate_returns_the_list_of_samples_through_a_dataloader(coco):
    dataset = UnlabeledDataset(coco, identity_view)
    loader = DataLoader(
        dataset, batch_size=3, sampler=[(0, 1), (1, 1), (2, 1)], collate_fn=collate_samples
    )
    (batch,) = list(loader)
    assert isinstance(batch, list) and [s["image_id"] for s in batch] == [1, 2, 3]


def test_missing_image_at_training_time_raises_data_error_naming_the_file(coco):
    path: Path = coco.image_path(1)
    path.unlink()
    with pytest.raises(DataError, match=r"1\.png: image file not found"):
        LabeledDataset(coco, identity_view)[(0, 0)]
