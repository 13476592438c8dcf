"""Fixtures: the repository's tiny synthetic data and in-process CLI, and the plugin
registered from this folder through a dist-info on sys.path (no pip: CI installs only the
core, and a user's editable install points at the same files)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ssodkit.plugins import reset_plugin_manager
from tests.conftest import cli, tiny_config, tiny_data  # noqa: F401  (shared fixtures)
from tests.distributions import install_repo_plugin


@pytest.fixture
def pseco(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """ssodkit-pseco installed and selected by `SSODKIT_LOAD_PLUGINS`; its distribution name."""
    dist = install_repo_plugin("ssodkit-pseco", tmp_path_factory.mktemp("site"), monkeypatch)
    monkeypatch.setenv("SSODKIT_LOAD_PLUGINS", dist)
    reset_plugin_manager()
    yield dist
    reset_plugin_manager()
