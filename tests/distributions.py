"""Fake installed distributions for plugin tests: a dist-info with entry points on sys.path.

`importlib.metadata` finds a distribution by its `*.dist-info` folder on `sys.path`, so a
folder with `METADATA` and `entry_points.txt` is, to ssodkit's plugin manager, exactly what
`pip install` leaves behind — without touching the environment. The core's plugin tests and
the tests of the packages under `plugins/` share it (those run whether or not the package
is pip-installed: CI installs only the core).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
PLUGINS_DIR = REPO / "plugins"


def install_distribution(
    site: Path, monkeypatch: pytest.MonkeyPatch, *, dist: str, version: str, entry_points: str,
    code_path: Path | None = None,
) -> None:
    """Write `<dist>-<version>.dist-info` (group `ssodkit`: `entry_points` lines) into `site`
    and put `site` (then `code_path`, where the plugin's package lives) first on sys.path."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[ssodkit]\n{entry_points}\n")
    if code_path is not None:
        monkeypatch.syspath_prepend(str(code_path))
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()


def install_repo_plugin(folder: str, site: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Install `plugins/<folder>` as its own pyproject declares it (name, version, entry
    points of group `ssodkit`, package under `src/`); returns the distribution name."""
    root = PLUGINS_DIR / folder
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    lines = "\n".join(f"{k} = {v}" for k, v in project["entry-points"]["ssodkit"].items())
    install_distribution(
        site, monkeypatch, dist=project["name"], version=project["version"], entry_points=lines,
        code_path=root / "src",
    )
    packages = {v.split(":")[0].split(".")[0] for v in project["entry-points"]["ssodkit"].values()}
    for module in [m for m in sys.modules if m.split(".")[0] in packages]:
        sys.modules.pop(module)  # import it from `src/`, whatever was imported before
    return str(project["name"])


def repo_plugin_fixture(folder: str, name: str) -> Callable[..., Iterator[str]]:
    """A pytest fixture `name`: `plugins/<folder>` installed (`install_repo_plugin`) and
    selected by `SSODKIT_LOAD_PLUGINS`, the plugin manager rebuilt around it; it yields the
    distribution name. Each plugin's `tests/conftest.py` declares its own with this."""
    from ssodkit.plugins import reset_plugin_manager

    @pytest.fixture(name=name)
    def fixture(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
        dist = install_repo_plugin(folder, tmp_path_factory.mktemp("site"), monkeypatch)
        monkeypatch.setenv("SSODKIT_LOAD_PLUGINS", dist)
        reset_plugin_manager()
        yield dist
        reset_plugin_manager()

    return fixture


def plugin_rows(cli: Callable[..., Any], name: str) -> list[tuple[str, str, str, str]]:
    """`ssodkit plugins --json`'s rows for `name` as (kind, package, version, plugin): what a
    plugin package's test compares with what it registers."""
    import json

    result = cli("plugins", "--json")
    assert result.exit_code == 0, result.output
    return [(r["kind"], r["package"], r["version"], r["plugin"]) for r in json.loads(result.stdout) if r["name"] == name]
