"""`ssodkit pseudolabel` end to end on a tiny trained checkpoint."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
import torch

from tests.conftest import run_cli
from tests.test_cli import data_args, tiny_set_args


@pytest.fixture(scope="module")
def ckpt(tiny_data, tmp_path_factory):
    """A supervised checkpoint (no teacher), trained 2 iterations through the CLI."""
    runs = tmp_path_factory.mktemp("pl_runs")
    result = run_cli(
        "train", "--method", "supervised", "--detector", "fcos", *data_args(tiny_data),
        "--iters", "2", "--runs-dir", str(runs), "--name", "pl", *tiny_set_args(),
    )
    assert result.exit_code == 0, result.output
    path = runs / "pl" / "checkpoints" / "last.pt"
    assert torch.load(path, weights_only=False)["teacher"] is None
    return path


@pytest.fixture(scope="module")
def teacher_ckpt(ckpt):
    """The same checkpoint with a teacher whose weights differ from the student's."""
    from ssodkit.engine.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(ckpt)
    gen = torch.Generator().manual_seed(0)
    state["teacher"] = {
        k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
        for k, v in state["student"].items()
    }
    state.pop("version", None)
    path = ckpt.with_name("with_teacher.pt")
    save_checkpoint(state, path)
    return path


@pytest.fixture
def image_folder(tiny_data, tmp_path):
    """The unlabeled images copied into a flat folder (ids 1..8 in sorted name order)."""
    folder = tmp_path / "imgs"
    shutil.copytree(tiny_data.images / "unlabeled", folder)
    return folder


def _pl(*args):
    result = run_cli("pseudolabel", *[str(a) for a in args])
    return result


def _gt_from(coco_dataset, classes_from):
    """A pycocotools COCO ground truth built from the input images + checkpoint categories."""
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = {
        "images": [img.model_dump(include={"id", "file_name", "width", "height"}) for img in coco_dataset.images],
        "annotations": [],
        "categories": classes_from,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _checkpoint_categories(path):
    state = torch.load(path, weights_only=False)
    return [{"id": c, "name": n} for c, n in zip(state["index_to_cat_id"], state["classes"], strict=True)]


def test_results_format_loads_against_the_input_gt(ckpt, tiny_data, tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "missing" / "folder" / "pseudo.json"
    result = _pl("--checkpoint", ckpt, "--images", tiny_data.unlabeled, "--out", out, "--score-thr", "0.0")
    assert result.exit_code == 0, result.output
    assert out.is_file() and not (tmp_path / "missing" / "folder" / "pseudo.skipped.json").exists()
    entries = json.loads(out.read_text())
    assert isinstance(entries, list) and entries
    assert set(entries[0]) == {"image_id", "category_id", "bbox", "score"}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tiny_data.unlabeled))  # the unlabeled file carries hidden GT
        dt = gt.loadRes(entries)
    assert len(dt.getAnnIds()) == len(entries)
    assert set(dt.getImgIds()) <= set(gt.getImgIds())
    # boxes are in original pixels: inside each input image
    sizes = {img["id"]: (img["width"], img["height"]) for img in gt.dataset["images"]}
    for e in entries:
        x, y, w, h = e["bbox"]
        W, H = sizes[e["image_id"]]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= W + 1e-3 and y + h <= H + 1e-3
    assert "8/8 images" in result.stdout


def test_coco_format_loads_with_load_coco(ckpt, tiny_data, tmp_path):
    from ssodkit.data.coco import load_coco

    out = tmp_path / "pl.json"
    result = _pl(
        "--checkpoint", ckpt, "--images", tiny_data.unlabeled, "--image-root", tiny_data.images,
        "--out", out, "--score-thr", "0.0", "--format", "coco",
    )
    assert result.exit_code == 0, result.output
    loaded = load_coco(out, tiny_data.images, check_images="none")
    loaded_checked = load_coco(out, tiny_data.images, check_images="exists")  # files and sizes agree
    assert len(loaded_checked.images) == 8
    raw = json.loads(out.read_text())
    src = json.loads(tiny_data.unlabeled.read_text())
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in raw["images"]] == [
        (i["id"], i["file_name"], i["width"], i["height"]) for i in src["images"]
    ]
    assert raw["categories"] == _checkpoint_categories(ckpt)  # names and original ids
    assert loaded.class_names == torch.load(ckpt, weights_only=False)["classes"]
    anns = raw["annotations"]
    assert anns and [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    for a in anns:
        assert a["iscrowd"] == 0 and 0.0 <= a["score"] <= 1.0
        assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])
    assert len(loaded.annotations) == len(anns)
    assert "image root:" in result.stdout


def test_corrupt_and_truncated_images_are_skipped_not_fatal(ckpt, image_folder, tmp_path):
    from pycocotools.coco import COCO

    from ssodkit.data.coco import load_unlabeled

    (image_folder / "000003.png").write_bytes(b"this is not a png at all" * 10)  # header unreadable
    good = (image_folder / "000005.png").read_bytes()
    (image_folder / "000005.png").write_bytes(good[: len(good) // 3])  # header fine, pixels cut
    out = tmp_path / "pl.json"
    result = _pl("--checkpoint", ckpt, "--images", image_folder, "--out", out, "--score-thr", "0.0", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    assert "skipped 2 unreadable images" in result.stderr
    assert "000003.png" in result.stderr and "000005.png" in result.stderr
    assert "6/8 images" in result.stdout
    side = json.loads((tmp_path / "pl.skipped.json").read_text())
    assert sorted(s["file_name"] for s in side["skipped"]) == ["000003.png", "000005.png"]
    reasons = {s["file_name"]: s["reason"] for s in side["skipped"]}
    assert "not an image" in reasons["000003.png"]  # found by the folder scan
    assert "corrupt image" in reasons["000005.png"]  # found while predicting, batch goes on
    entries = json.loads(out.read_text())
    skipped_ids = {s["image_id"] for s in side["skipped"]}
    assert skipped_ids == {3, 5}
    assert entries and not {e["image_id"] for e in entries} & skipped_ids
    coco_in = load_unlabeled(image_folder, skip_invalid=True)
    gt = _gt_from(coco_in, _checkpoint_categories(ckpt))
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(entries)
    assert isinstance(dt, COCO) and len(dt.getAnnIds()) == len(entries)

    # a clean rerun to the same path removes the stale list of skipped images
    (image_folder / "000003.png").unlink()
    (image_folder / "000005.png").unlink()
    again = _pl("--checkpoint", ckpt, "--images", image_folder, "--out", out, "--score-thr", "0.0")
    assert again.exit_code == 0, again.output
    assert not (tmp_path / "pl.skipped.json").exists()


def test_missing_image_of_a_json_input_is_skipped(ckpt, tiny_data, tmp_path):
    from ssodkit.engine.pseudolabel import pseudolabel, write

    raw = json.loads(tiny_data.unlabeled.read_text())
    raw["images"][0]["file_name"] = "unlabeled/nope.png"
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(raw))
    result = pseudolabel(ckpt, ann, image_root=tiny_data.images, score_thr=0.0, fmt="coco")
    assert result.n_images == 8 and result.n_predicted == 7
    assert [s.file_name for s in result.skipped] == ["unlabeled/nope.png"]
    assert raw["images"][0]["id"] not in {img["id"] for img in result.images}
    write(result, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.skipped.json").read_text())["skipped"][0]["image_id"] == raw["images"][0]["id"]


def test_score_threshold_is_respected(ckpt, tiny_data):
    from ssodkit.engine.pseudolabel import pseudolabel

    everything = pseudolabel(ckpt, tiny_data.unlabeled, score_thr=0.0)
    scores = sorted(e["score"] for e in everything.entries)
    assert len(scores) > 4
    thr = scores[len(scores) // 2]
    kept = pseudolabel(ckpt, tiny_data.unlabeled, score_thr=thr)
    assert kept.entries and all(e["score"] > thr for e in kept.entries)  # the one rule: score > τ
    assert len(kept.entries) == sum(s > thr for s in scores)
    assert pseudolabel(ckpt, tiny_data.unlabeled, score_thr=1.0).entries == []
    default = pseudolabel(ckpt, tiny_data.unlabeled)  # 0.5
    assert all(e["score"] >= 0.5 for e in default.entries)


def test_teacher_is_the_default_and_student_the_fallback(ckpt, teacher_ckpt, tiny_data, tmp_path):
    from ssodkit.engine.pseudolabel import pseudolabel

    default = pseudolabel(teacher_ckpt, tiny_data.unlabeled, score_thr=0.0)
    teacher = pseudolabel(teacher_ckpt, tiny_data.unlabeled, score_thr=0.0, weights="teacher")
    student = pseudolabel(teacher_ckpt, tiny_data.unlabeled, score_thr=0.0, weights="student")
    assert default.weights == "teacher" and not default.teacher_missing
    assert default.entries == teacher.entries
    assert student.weights == "student" and student.entries != teacher.entries

    fallback = pseudolabel(ckpt, tiny_data.unlabeled, score_thr=0.0)
    assert fallback.weights == "student" and fallback.teacher_missing
    assert fallback.entries == pseudolabel(ckpt, tiny_data.unlabeled, score_thr=0.0, weights="student").entries

    said = _pl("--checkpoint", teacher_ckpt, "--images", tiny_data.unlabeled, "--out", tmp_path / "t.json")
    assert said.exit_code == 0, said.output
    assert "weights: teacher" in said.stdout
    said = _pl("--checkpoint", ckpt, "--images", tiny_data.unlabeled, "--out", tmp_path / "s.json")
    assert said.exit_code == 0, said.output
    assert "weights: student (last.pt has no teacher)" in said.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "{tmp}/nope.pt"], "nope.pt: checkpoint not found"),
        (["--images", "{tmp}/no_such_dir"], "no_such_dir: images path not found"),
        (["--format", "yolo"], "unknown format 'yolo'; valid: coco, results"),
        (["--format", "coc"], "Did you mean 'coco'?"),
        (["--weights", "ema"], "unknown weights 'ema'; valid: auto, student, teacher"),
        (["--score-thr", "1.5"], "--score-thr 1.5: must be between 0 and 1"),
        (["--score-thr", "-0.1"], "--score-thr -0.1: must be between 0 and 1"),
        (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
        (["--device", "tpu9"], "--device = 'tpu9'"),
        (["--out", "{ann}"], "would overwrite the input file"),
        (["--out", "{tmp}"], "is a directory"),
        (["--images", "{imgs}", "--image-root", "{tmp}"], "an image root only applies to a JSON source"),
    ],
)
def test_bad_input_is_one_line(args, message, ckpt, tiny_data, tmp_path):
    ann = tmp_path / "ann.json"
    shutil.copy(tiny_data.unlabeled, ann)
    before = ann.read_bytes()
    subs = {"{tmp}": str(tmp_path), "{ann}": str(ann), "{imgs}": str(tiny_data.images / "unlabeled")}
    args = [next((a.replace(k, v) for k, v in subs.items() if k in a), a) for a in args]
    base = {"--checkpoint": str(ckpt), "--images": str(ann), "--out": str(tmp_path / "o.json")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    result = _pl(*[x for kv in base.items() for x in kv])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert ann.read_bytes() == before  # the input is never touched
    assert not (tmp_path / "o.json").exists()
