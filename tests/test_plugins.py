"""Plugin manager: built-ins through the hooks, third-party plugins, clear failures, a
registry collected only when used."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from ssodkit.errors import SsodkitError
from ssodkit.plugins import get_plugin_manager, get_registry, plugin_entries, reset_plugin_manager
from ssodkit.plugins.manager import BUILTIN_PLUGINS
from tests.distributions import install_distribution

RAISES_WHILE_REGISTERING = """
    from ssodkit.plugins import hookimpl

    @hookimpl
    def register_detectors(register):
        raise RuntimeError("boom")
"""


@pytest.fixture
def fresh_plugins(monkeypatch):
    reset_plugin_manager()
    yield monkeypatch
    reset_plugin_manager()


def install_fake_distribution(
    tmp_path, monkeypatch, module_source: str, dist: str = "ssodkit-demo",
    entry_points: str = "demo = demo_plugin",
) -> None:
    """A plugin module `demo_plugin` in an installed distribution `dist`, no pip needed."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "demo_plugin.py").write_text(textwrap.dedent(module_source))
    install_distribution(tmp_path, monkeypatch, dist=dist, version="0.3.1", entry_points=entry_points)
    sys.modules.pop("demo_plugin", None)


def test_builtins_are_registered_through_the_hooks(fresh_plugins):
    registry = get_registry()
    assert {"faster_rcnn", "retinanet", "fcos"} <= set(registry.names("detectors"))
    assert "supervised" in registry.names("methods")
    assert {"labeled", "eval", "weak", "strong"} <= set(registry.names("views"))
    provider = registry.entries("detectors")[0].provider
    assert provider.distribution == "ssodkit"


def test_unknown_name_lists_the_valid_ones(fresh_plugins):
    with pytest.raises(SsodkitError, match=r"unknown detector 'fcoss'; valid: faster_rcnn, fcos, retinanet\. Did you mean 'fcos'\?"):
        get_registry().get("detectors", "fcoss")


def test_entry_point_plugin_is_picked_up_with_its_package(fresh_plugins, tmp_path):
    install_fake_distribution(tmp_path, fresh_plugins, """
        from ssodkit.plugins import hookimpl
        from ssodkit.methods.supervised import Supervised

        class Demo(Supervised):
            name = "demo"

        @hookimpl
        def register_methods(register):
            register("demo", Demo)
    """)
    fresh_plugins.setenv("SSODKIT_LOAD_PLUGINS", "ssodkit-demo")
    entry = next(e for e in get_registry().entries("methods") if e.name == "demo")
    assert (entry.provider.distribution, entry.provider.version) == ("ssodkit-demo", "0.3.1")


def test_external_plugins_load_only_when_selected(fresh_plugins, tmp_path):
    install_fake_distribution(tmp_path, fresh_plugins, """
        from ssodkit.plugins import hookimpl

        @hookimpl
        def register_detectors(register):
            register("demo_det", object)
    """)
    fresh_plugins.setenv("SSODKIT_LOAD_PLUGINS", "")
    assert "demo_det" not in get_registry().names("detectors")


def test_plugin_that_raises_while_registering_is_named(fresh_plugins, tmp_path):
    install_fake_distribution(tmp_path, fresh_plugins, RAISES_WHILE_REGISTERING, dist="ssodkit-broken")
    fresh_plugins.setenv("SSODKIT_LOAD_PLUGINS", "ssodkit-broken")
    with pytest.raises(SsodkitError, match=r"plugin 'demo' from distribution 'ssodkit-broken' 0.3.1 raised while registering detectors: RuntimeError: boom"):
        get_registry()


def test_plugin_that_fails_to_import_is_named_and_the_others_still_load(fresh_plugins, tmp_path, capsys):
    install_fake_distribution(tmp_path / "bad", fresh_plugins, "import not_a_module_anywhere\n", dist="ssodkit-badimport")
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "good_plugin.py").write_text(textwrap.dedent("""
        from ssodkit.plugins import hookimpl

        @hookimpl
        def register_detectors(register):
            register("good_det", object)
    """))
    install_distribution(tmp_path / "good", fresh_plugins, dist="ssodkit-good", version="1.0", entry_points="good = good_plugin")
    fresh_plugins.setenv("SSODKIT_LOAD_PLUGINS", "ssodkit-badimport,ssodkit-good")
    expected = (
        "plugin 'demo' from distribution 'ssodkit-badimport' 0.3.1 failed to load: "
        "ModuleNotFoundError: No module named 'not_a_module_anywhere'"
    )
    assert get_plugin_manager().failures == [expected]
    assert {"good_det", "fcos"} <= set(get_registry().names("detectors"))
    with pytest.raises(SsodkitError, match=r"unknown detector 'demo_det'; valid: .* Not loaded: plugin 'demo' from distribution 'ssodkit-badimport'"):
        get_registry().get("detectors", "demo_det")
    from ssodkit.cli.app import build_app

    build_app()
    assert capsys.readouterr().err.splitlines() == [f"warning: {expected}"]


def test_plugins_command_lists_builtins(fresh_plugins, cli):
    result = cli("plugins", "--json")
    assert result.exit_code == 0, result.output
    import json

    rows = json.loads(result.stdout)
    names = {(r["kind"], r["name"]) for r in rows}
    assert {("detector", "fcos"), ("method", "supervised"), ("view", "strong")} <= names
    assert all(r["package"] == "ssodkit" for r in rows)


def test_builtins_register_without_installed_metadata(fresh_plugins):
    """A source checkout (no dist-info) gets the same built-ins, from the same hooks."""
    fresh_plugins.setattr(metadata, "entry_points", lambda **kw: [])
    plugins = {(e.provider.plugin, e.provider.distribution) for e in plugin_entries()}
    assert plugins == {(name, "ssodkit") for name, _ in BUILTIN_PLUGINS}


def test_stale_builtin_entry_points_of_an_older_install_are_ignored(fresh_plugins, tmp_path):
    install_fake_distribution(
        tmp_path, fresh_plugins, "raise RuntimeError('must not be imported')\n", dist="ssodkit",
        entry_points="builtin_detectors = demo_plugin",
    )
    fresh_plugins.setenv("SSODKIT_LOAD_PLUGINS", "ssodkit")
    entry = plugin_entries("detectors")[0]
    assert (entry.provider.plugin, entry.provider.distribution) == ("builtin_detectors", "ssodkit")


def test_registry_is_collected_only_when_a_name_is_looked_up(fresh_plugins, tmp_path):
    install_fake_distribution(tmp_path, fresh_plugins, RAISES_WHILE_REGISTERING, dist="ssodkit-broken")
    fresh_plugins.setenv("SSODKIT_LOAD_PLUGINS", "ssodkit-broken")
    get_plugin_manager().add_commands(object())  # what building the app does: no registration
    with pytest.raises(SsodkitError, match="plugin 'demo' from distribution 'ssodkit-broken'"):
        get_registry()


def test_building_the_app_does_not_import_torch():
    """`ssodkit --help` and `--version` stay fast: plugins load, nothing heavy registers."""
    code = "import sys; from ssodkit.cli.app import build_app; build_app(); print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert out.stdout.strip() == "False", out.stderr


def test_a_generic_tier_plugin_detector_trains_with_generic_methods_and_is_refused_by_others(
    fresh_plugins, tmp_path, tiny_config
):
    """A third-party detector with `loss` and `predict` only: no capability to declare."""
    from ssodkit.detectors import check_capabilities
    from ssodkit.errors import CapabilityError
    from tests.test_trainer import train

    install_fake_distribution(tmp_path, fresh_plugins, """
        from torch import nn
        from ssodkit.detectors.one_stage import FCOSDetector
        from ssodkit.plugins import hookimpl

        class GenericOnly(nn.Module):
            def __init__(self, num_classes, cfg):
                super().__init__()
                self.num_classes = num_classes
                self.inner = FCOSDetector(num_classes, cfg)

            def forward(self, mode, *args, **kwargs):
                return {"loss": self.loss, "predict": self.predict}[mode](*args, **kwargs)

            def loss(self, images, targets, **kwargs):
                return self.inner.loss(images, targets, **kwargs)

            def predict(self, images):
                return self.inner.predict(images)

        @hookimpl
        def register_detectors(register):
            register("generic_det", GenericOnly)
    """)
    fresh_plugins.setenv("SSODKIT_LOAD_PLUGINS", "ssodkit-demo")
    _, summary = train(tiny_config(method__name="mean_teacher", detector__name="generic_det", schedule__iters=2,
                                   train__unlabeled_batch_size=2))
    assert summary.status == "finished" and summary.iterations == 2
    registry = get_registry()
    model = registry.get("detectors", "generic_det")(3, tiny_config().detector)
    for method in ("supervised", "mean_teacher", "unbiased_teacher", "mixpl"):
        check_capabilities("generic_det", model, method, registry.get("methods", method).requires)
    for method, capability in (("sed", "dense_outputs"), ("soft_teacher", "two_stage")):
        with pytest.raises(CapabilityError, match=f"needs the {capability} capability.*it has: generic tier only"):
            check_capabilities("generic_det", model, method, registry.get("methods", method).requires)
