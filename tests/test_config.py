"""Run config: recipes, flags, --set overrides and one-line errors."""

from __future__ import annotations

import pytest

from ssodkit.config import build_config, load_saved_config, save_config
from ssodkit.errors import ConfigError, SsodkitError


def test_defaults_are_a_cpu_sized_synthetic_run():
    cfg = build_config()
    assert cfg.data.synthetic
    assert cfg.method.name == "supervised" and cfg.detector.name == "fcos"


def test_recipe_flags_and_set_apply_in_order(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("optim:\n  lr: 0.05\ndetector:\n  name: retinanet\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("_base_: base.yaml\nschedule:\n  iters: 50\n  warmup_iters: 5\n")
    cfg = build_config(recipe, {"detector.name": "fcos"}, ["optim.lr=0.02", "method.name=supervised"])
    assert cfg.optim.lr == 0.02  # --set beats the recipe
    assert cfg.detector.name == "fcos"  # a flag beats the recipe
    assert cfg.schedule.iters == 50


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=-1", "optim.lr = -1: Input should be greater than 0"),
        ("detector.backbon=resnet50", "unknown config key 'detector.backbon'; did you mean 'backbone'?"),
        ("train.amp=fp8", "train.amp = 'fp8'"),
        ("schedule.warmup_iters=10000", "warmup_iters (10000) > iters"),
        ("lr=0.1", "expected section.key=value"),
    ],
)
def test_invalid_values_give_one_line_naming_field_and_value(override, message):
    with pytest.raises(ConfigError) as err:
        build_config(None, None, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_yaml_names_the_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("optim:\n  lr: [0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+"):
        build_config(recipe)


def test_resolved_config_round_trips(tmp_path):
    cfg = build_config(None, None, ["optim.lr=0.03", "method.name=mean_teacher", "method.unsup_weight=4"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_saved_config(tmp_path / "config.yaml")
    assert again == cfg
    assert again.method.params["unsup_weight"] == 4
    assert again.method.params["drop_covered"] == 0.7  # defaults are written out too


def test_method_params_are_validated_when_the_config_is_loaded():
    with pytest.raises(ConfigError, match="unknown config key 'method.unsup_weight'"):
        build_config(None, None, ["method.unsup_weight=2"])  # supervised takes no parameter
    with pytest.raises(ConfigError, match="method.unsup_weight = 'x'"):
        build_config(None, None, ["method.name=mean_teacher", "method.unsup_weight=x"])
    with pytest.raises(SsodkitError, match="unknown method .mean_teachr."):
        build_config(None, None, ["method.name=mean_teachr"])


def test_teacher_settings_take_the_methods_declared_defaults_unless_set():
    ut = build_config(None, None, ["method.name=unbiased_teacher"])
    assert (ut.teacher.momentum, ut.teacher.burn_in) == (4e-4, 2000)  # keep-rate 0.9996, burn-in 2000
    assert ut.teacher.buffers == "ema"  # the official EMA runs over the whole state dict
    mine = build_config(None, None, ["method.name=unbiased_teacher", "teacher.burn_in=5"])
    assert (mine.teacher.momentum, mine.teacher.burn_in) == (4e-4, 5)
    mt = build_config(None, None, ["method.name=mean_teacher"])
    assert (mt.teacher.momentum, mt.teacher.burn_in) == (None, 0)  # the schedule max(2e-4, 4/(4+t))
    assert (mt.teacher.buffers, mt.teacher.interval) == ("ema", 1)  # BN statistics averaged, every step
    mixpl = build_config(None, None, ["method.name=mixpl", "train.unlabeled_batch_size=4"])
    assert mixpl.teacher.interval == 3  # MixPL's MeanTeacherHook
    assert build_config(None, None, ["method.name=unbiased_teacher"]).method.params["score_thr"] is None


def test_teacher_keys_under_method_point_to_the_teacher_section():
    with pytest.raises(ConfigError, match="'method.burn_in' is now 'teacher.burn_in'"):
        build_config(None, None, ["method.name=mean_teacher", "method.burn_in=5"])


def test_a_config_saved_before_the_teacher_section_still_loads(tmp_path):
    old = tmp_path / "config.yaml"
    old.write_text("method:\n  name: unbiased_teacher\n  ema_momentum: 0.001\n  burn_in: 7\n")
    cfg = load_saved_config(old)
    assert (cfg.teacher.momentum, cfg.teacher.burn_in) == (0.001, 7)


def test_the_empty_image_rule_is_a_setting_not_a_filter():
    with pytest.raises(ConfigError, match="method.empty_images"):
        build_config(None, None, ["method.name=mean_teacher", "method.filters=[score,empty_image]"])
    assert build_config(None, None, ["method.name=mean_teacher", "method.empty_images=none"]).method.params[
        "empty_images"] == "none"
