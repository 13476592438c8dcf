"""Run config: recipes, flags, --set overrides and one-line errors."""

from __future__ import annotations

import pytest

from ssodkit.config import build_config, load_saved_config, save_config
from ssodkit.errors import ConfigError


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
    cfg = build_config(None, None, ["optim.lr=0.03", "method.some_param=4"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_saved_config(tmp_path / "config.yaml")
    assert again == cfg
    assert again.method.params == {"some_param": 4}


def test_method_params_are_validated_by_the_method():
    from ssodkit.methods.supervised import Supervised

    cfg = build_config(None, None, ["method.unsup_weight=2"])
    with pytest.raises(ConfigError, match="unknown config key 'method.unsup_weight'"):
        Supervised.from_config(cfg, 3)
