"""The plugin API of docs/plugins.md: every listed name exists, the packages under plugins/
import nothing else from ssodkit, and the core never imports a plugin."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `(ssodkit[\w.]*)` \| (.+) \|$")


def public_api() -> dict[str, set[str]]:
    """module → names, from the table under `## Public API` in docs/plugins.md."""
    text = (REPO / "docs" / "plugins.md").read_text().split("## Public API", 1)[1]
    rows = (ROW.match(line) for line in text.splitlines())
    return {m[1]: set(re.findall(r"`(\w+)`", m[2])) for m in rows if m}


def plugin_imports() -> list[tuple[Path, str, str]]:
    """(file, module, name) of every `ssodkit` import in the plugin packages' source."""
    found = []
    for path in sorted(REPO.glob("plugins/*/src/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ssodkit":
                found += [(path, node.module or "", alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                found += [(path, a.name, "") for a in node.names if a.name.split(".")[0] == "ssodkit"]
    return found


def test_the_documented_api_imports():
    api = public_api()
    assert {"ssodkit.plugins", "ssodkit.detectors", "ssodkit.errors"} <= set(api)
    for module, names in api.items():
        imported = importlib.import_module(module)
        missing = sorted(n for n in names if not hasattr(imported, n))
        assert not missing, f"{module}: {missing}"


def test_plugins_import_only_the_public_api():
    api = public_api()
    imports = plugin_imports()
    assert imports, "no plugin package found under plugins/"
    wrong = [(str(p.relative_to(REPO)), m, n) for p, m, n in imports if n not in api.get(m, set())]
    assert not wrong, f"not in docs/plugins.md's public API: {wrong}"


def test_the_core_never_imports_a_plugin():
    packages = {p.name for p in REPO.glob("plugins/*/src/*") if p.is_dir() and not p.name.endswith(".egg-info")}
    assert packages
    offenders = [
        str(path.relative_to(REPO)) for path in sorted((REPO / "ssodkit").rglob("*.py"))
        if any(re.search(rf"\b{p}\b", path.read_text()) for p in packages)
    ]
    assert not offenders
