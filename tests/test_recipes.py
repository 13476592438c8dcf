"""Every shipped recipe validates: config fields, method parameters, detector name."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssodkit.config import build_config
from ssodkit.plugins import method_class, plugin_entries

RECIPES = sorted(p for p in (Path(__file__).parents[1] / "recipes").rglob("*.yaml") if "_base_" not in p.parts)


def test_there_are_recipes_for_both_settings():
    assert {p.parent.name for p in RECIPES} >= {"synthetic", "coco10"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_validates(recipe):
    cfg = build_config(recipe)
    method_class(cfg.method.name).from_config(cfg, ["a", "b"])
    assert cfg.detector.name in {e.name for e in plugin_entries("detectors")}
    assert recipe.stem == f"{cfg.method.name}_{cfg.detector.name}"
