"""The synthetic data sets (shapes, fine): deterministic, valid COCO, long-tailed, all sizes."""

from __future__ import annotations

import colorsys
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from ssodkit.cli import data_cmd
from ssodkit.data import synthetic
from ssodkit.data.coco import count_objects, load_coco, load_unlabeled
from ssodkit.data.synthetic import SyntheticPaths, ensure_synthetic, generate_synthetic
from ssodkit.errors import DataError, SsodkitError

SMALL = {"n_train": 24, "n_val": 6, "n_unlabeled": 6}


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> SyntheticPaths:
    return generate_synthetic(tmp_path_factory.mktemp("synth") / "data", seed=0, **SMALL)


def test_layout_has_images_and_annotations_per_split(generated):
    assert generated.exists()
    assert len(list((generated.images / "train").glob("*.png"))) == 24
    assert len(list((generated.images / "val").glob("*.png"))) == 6
    assert (
        json.loads(generated.unlabeled.read_text())["images"][0]["file_name"]
        == "unlabeled/000001.png"
    )


def test_same_seed_gives_byte_identical_files(generated, tmp_path):
    again = generate_synthetic(tmp_path / "again", seed=0, **SMALL)
    assert _files(again.root) == _files(generated.root)


def test_different_seed_gives_different_data(generated, tmp_path):
    other = generate_synthetic(tmp_path / "other", seed=1, **SMALL)
    assert other.train.read_bytes() != generated.train.read_bytes()
    assert (other.images / "train" / "000001.png").read_bytes() != (
        generated.images / "train" / "000001.png"
    ).read_bytes()


@pytest.mark.parametrize("split", ["train", "val", "unlabeled"])
def test_every_split_is_valid_coco_with_decodable_images(generated, split):
    coco = load_coco(getattr(generated, split), check_images="decode")
    assert coco.image_root == generated.images
    assert coco.defects == []
    for img in coco.images:
        assert 256 <= img.width <= 320 and 256 <= img.height <= 320


def test_classes_are_many_and_long_tailed(generated):
    per_class = Counter()
    for split in ("train", "val", "unlabeled"):
        per_class.update(
            count_objects(load_coco(getattr(generated, split), check_images="none"))[0]
        )
    assert len(per_class) >= 6 and min(per_class.values()) > 0
    assert max(per_class.values()) / min(per_class.values()) >= 5


def test_objects_cover_all_three_coco_size_buckets(generated):
    _, per_size = count_objects(load_coco(generated.train, check_images="none"))
    assert set(per_size) == {"small", "medium", "large"} and min(per_size.values()) > 0


def test_full_size_split_follows_the_planned_class_and_size_shares():
    plan = [obj for image in synthetic._plan_split(0, 0, 1000) for obj in image]
    classes = Counter(obj.cls for obj in plan)
    assert classes[0] / len(plan) == pytest.approx(0.35, abs=0.005)
    assert classes[6] / len(plan) == pytest.approx(0.03, abs=0.005)
    small = sum(obj.area < 32**2 for obj in plan) / len(plan)
    large = sum(obj.area >= 96**2 for obj in plan) / len(plan)
    assert small == pytest.approx(0.35, abs=0.005) and large == pytest.approx(0.25, abs=0.005)


def test_unlabeled_split_keeps_hidden_ground_truth_that_unlabeled_loading_ignores(generated):
    assert load_coco(generated.unlabeled, check_images="none").annotations
    pool = load_unlabeled(generated.unlabeled)
    assert pool.annotations == [] and len(pool.images) == 6


def test_objects_stay_mostly_visible_under_occlusion(generated):
    """Boxes are full extents; area (visible-or-not pixel count) fits in its box."""
    coco = load_coco(generated.train, check_images="none")
    for ann in coco.annotations:
        assert 0 < ann.area <= ann.bbox[2] * ann.bbox[3]


def test_existing_non_empty_output_folder_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and is not an empty folder"):
        generate_synthetic(tmp_path / "out", n_train=1, n_val=1, n_unlabeled=1)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_generation_leaves_no_temporary_folder_behind(tmp_path):
    generate_synthetic(tmp_path / "out", n_train=2, n_val=1, n_unlabeled=1)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_ensure_synthetic_generates_once_into_the_cache_and_reuses_it(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "DEFAULT_SIZES", (3, 2, 2))
    monkeypatch.setenv("SSODKIT_CACHE_DIR", str(tmp_path / "cache"))
    first = ensure_synthetic(seed=3)
    assert first.root == tmp_path / "cache" / "synthetic-v1-seed3"
    stamp = first.train.stat().st_mtime_ns
    monkeypatch.setattr(synthetic, "_generate_into", lambda *a: pytest.fail("regenerated"))
    assert ensure_synthetic(seed=3) == first and first.train.stat().st_mtime_ns == stamp


def test_ensure_synthetic_loser_of_a_race_discards_its_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "DEFAULT_SIZES", (2, 1, 1))
    target = tmp_path / "synthetic-v1-seed0"
    real = synthetic._generate_into

    def racing(tmp, seed, sizes, kind):
        real(tmp, seed, sizes, kind)
        shutil.copytree(tmp, target)  # another process finished first

    monkeypatch.setattr(synthetic, "_generate_into", racing)
    paths = ensure_synthetic(tmp_path, seed=0)
    assert paths.root == target and paths.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic-v1-seed0"]


def test_data_synth_command_prints_paths_and_counts(tmp_path):
    app = typer.Typer()
    data_cmd.register(app)
    result = CliRunner().invoke(
        app,
        [
            "data",
            "synth",
            "--out",
            str(tmp_path / "s"),
            "--n-train",
            "4",
            "--n-val",
            "2",
            "--n-unlabeled",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "s" / "annotations" / "train.json") in result.output.replace("\n", "")
    for word in ("circle", "hexagon", "small", "large"):
        assert word in result.output


# --------------------------------------------------------------------------- the fine kind
FINE_NAMES = ["dot", "two_dots", "bar", "three_dots", "two_bars", "four_dots", "plus"]


@pytest.fixture(scope="module")
def fine(tmp_path_factory) -> SyntheticPaths:
    return generate_synthetic(tmp_path_factory.mktemp("fine") / "data", seed=0, kind="fine", **SMALL)


def test_fine_kind_is_deterministic_by_seed(fine, tmp_path):
    assert _files(generate_synthetic(tmp_path / "again", seed=0, kind="fine", **SMALL).root) == _files(
        fine.root
    )
    other = generate_synthetic(tmp_path / "other", seed=1, kind="fine", **SMALL)
    assert other.train.read_bytes() != fine.train.read_bytes()


@pytest.mark.parametrize("split", ["train", "val", "unlabeled"])
def test_fine_kind_is_valid_coco_with_its_own_classes(fine, split):
    coco = load_coco(getattr(fine, split), check_images="decode")
    assert coco.defects == [] and coco.annotations
    assert coco.class_names == FINE_NAMES
    assert json.loads(getattr(fine, split).read_text())["info"]["description"] == "ssodkit synthetic fine"
    for img in coco.images:
        assert 256 <= img.width <= 320 and 256 <= img.height <= 320


def test_fine_kind_plans_the_same_objects_and_sizes_as_shapes():
    """Same counts per image, same class shares, same size buckets: only the looks differ."""
    assert synthetic._plan_split(4, 1, 200, synthetic.FINE) == synthetic._plan_split(4, 1, 200)


@pytest.mark.parametrize("area", [15.0**2, 60.0**2, 130.0**2])
def test_fine_classes_share_outline_size_and_hue_and_differ_only_by_their_holes(area):
    """For the same draws every class gets the same outline, the same net area and the same
    colour; the holes are what differs."""
    kind = synthetic.FINE
    outlines, net_areas, colours, holes = [], [], [], []
    for cls in range(len(kind.classes)):
        rings = synthetic._shape(kind, synthetic._Object(cls, area), np.random.default_rng(7), 320, 320)
        outlines.append(rings[0])
        net_areas.append(synthetic._polygon_area(rings[0]) - sum(synthetic._polygon_area(r) for r in rings[1:]))
        holes.append(tuple(np.round(np.concatenate(rings[1:]), 6).ravel()))
        colours.append(synthetic._object_colour(kind, cls, np.random.default_rng(11)))
    for outline, net, colour in zip(outlines, net_areas, colours, strict=True):
        np.testing.assert_allclose(outline, outlines[0])
        assert net == pytest.approx(area, rel=1e-9)
        np.testing.assert_array_equal(colour, colours[0])
    assert len(set(holes)) == len(kind.classes)


def test_fine_hue_does_not_depend_on_the_class_unlike_shapes():
    rng = np.random.default_rng(0)
    for kind, uniform in ((synthetic.FINE, True), (synthetic.SHAPES, False)):
        hues = []
        for _ in range(400):
            r, g, b = synthetic._object_colour(kind, 0, rng) / 255
            hues.append(colorsys.rgb_to_hsv(r, g, b)[0] * 360)
        spread = np.histogram(hues, bins=6, range=(0, 360))[0] / len(hues)
        assert (spread.max() < 0.25) == uniform  # uniform: about 1/6 per bin


def test_ensure_synthetic_caches_each_kind_in_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "DEFAULT_SIZES", (2, 1, 1))
    paths = ensure_synthetic(tmp_path, seed=2, kind="fine")
    assert paths.root == tmp_path / "synthetic-fine-v1-seed2"
    assert load_coco(paths.train, check_images="none").class_names == FINE_NAMES


def test_unknown_kind_is_refused_with_a_suggestion_before_writing(tmp_path):
    with pytest.raises(SsodkitError, match="unknown synthetic data kind 'fin'.*Did you mean 'fine'"):
        generate_synthetic(tmp_path / "out", kind="fin")
    assert not (tmp_path / "out").exists()


def test_data_synth_command_makes_the_fine_kind(tmp_path):
    app = typer.Typer()
    data_cmd.register(app)
    args = ["data", "synth", "--out", str(tmp_path / "f"), "--n-train", "4", "--n-val", "2", "--n-unlabeled", "2"]
    result = CliRunner().invoke(app, [*args, "--kind", "fine"])
    assert result.exit_code == 0, result.output
    assert "two_dots" in result.output and "circle" not in result.output
