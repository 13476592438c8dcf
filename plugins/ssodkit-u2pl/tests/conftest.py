"""Fixtures: the repository's tiny synthetic data and in-process CLI, and the plugin
registered from this folder through a dist-info on sys.path (no pip: CI installs only the
core, and a user's editable install points at the same files)."""

from __future__ import annotations

from tests.conftest import cli, tiny_config, tiny_data  # noqa: F401  (shared fixtures)
from tests.distributions import repo_plugin_fixture

u2pl = repo_plugin_fixture("ssodkit-u2pl", "u2pl")
