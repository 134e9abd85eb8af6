"""The dependency rule (docs/architecture.md, "Layout"): portal -> detection -> cameras ->
detection.engine, one way.

- `detection.engine` is a Django-free leaf: it imports no Django, Channels, app or project
  module, so scripts, the benchmark and the worker's frame sources can use it alone.
- `cameras` imports nothing of `detection` but the engine.
- Nothing but the project (`portal`) and the benchmark reaches into the others' insides by
  the wrong road: `detection` imports from `portal` only its shared admin helpers.

Read from the source with `ast`, every import (module level or inside a function) counts.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT


def python_files(package: str, root: Path) -> Iterator[Path]:
    for path in sorted((root / package).rglob("*.py")):
        if "migrations" not in path.parts:
            yield path


def imports(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    package = ".".join(path.relative_to(root).parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # `from detection import worker` imports a module too
                yield node.lineno, f"{module}.{alias.name}" if module else alias.name


def violations(package: str, forbidden, allowed=lambda m: False, root: Path = ROOT) -> list[str]:
    found = []
    for path in python_files(package, root):
        for line, module in imports(path, root):
            if forbidden(module) and not allowed(module):
                found.append(f"{path.relative_to(root)}:{line} imports {module}")
    return sorted(set(found))


def under(*roots: str):
    return lambda module: any(module == r or module.startswith(r + ".") for r in roots)


def test_it_keeps_the_engine_free_of_django_and_of_the_apps():
    forbidden = under("django", "channels", "channels_redis", "daphne", "portal", "cameras")
    apps = under("detection")
    engine = under("detection.engine")
    assert violations("detection/engine", forbidden) == []
    assert violations("detection/engine", lambda m: apps(m) and not engine(m)) == []


def test_it_lets_cameras_import_only_the_engine_of_detection():
    assert violations("cameras", under("detection"), allowed=under("detection.engine")) == []


def test_it_lets_the_apps_use_only_the_projects_shared_admin_helpers():
    for app in ("cameras", "detection"):
        assert violations(app, under("portal"), allowed=under("portal.admin")) == []


@pytest.mark.parametrize(
    "needle",
    ["from detection.web", "from detection.live", "from detection.worker", "import detection"],
)
def test_it_notices_a_forbidden_import(tmp_path, needle):
    """The checks above can fail: a cameras module importing detection is reported."""
    (tmp_path / "cameras" / "sub").mkdir(parents=True)
    statement = f"{needle} import x\n" if needle.startswith("from") else f"{needle}\n"
    (tmp_path / "cameras" / "sub" / "probe.py").write_text(statement)
    (tmp_path / "cameras" / "ok.py").write_text("from detection.engine import sources\n")
    (tmp_path / "cameras" / "sub" / "relative.py").write_text("from ... import detection\n")
    found = violations(
        "cameras", under("detection"), allowed=under("detection.engine"), root=tmp_path
    )
    assert sorted({v.split(":")[0] for v in found}) == [
        "cameras/sub/probe.py",
        "cameras/sub/relative.py",
    ]


def test_it_serves_pages_without_loading_torch_or_pyav():
    """The web process imports every view and the ASGI application, never the model stack:
    torch alone adds ~1.3 s and hundreds of MB to each daphne (the worker loads it)."""
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'portal.settings')\n"
        "import django\n"
        "django.setup()\n"
        "import portal.asgi, portal.urls, detection.urls, detection.signals\n"
        "from django.urls import get_resolver\n"
        "get_resolver().url_patterns\n"
        "print(sorted(m for m in ('torch', 'av', 'open_clip') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
