"""docs/security.md names the test behind each promise; a renamed or deleted test must not
leave a promise without its proof.

The docs name a test by its file's basename (`test_file.py::test_name`), wherever under
tests/ the file lives, so every basename is unique.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

from tests.support import ROOT

# A cell lists `file.py::test_a`, then `test_b` (same file), ...
REFERENCE = re.compile(r"`(test_\w+\.py)::(test_\w+)`((?:, `test_\w+`)*)")


def python_test_files() -> list[Path]:
    return sorted((ROOT / "tests").rglob("test_*.py"))


def referenced_tests() -> list[tuple[str, str]]:
    text = (ROOT / "docs" / "security.md").read_text()
    found = []
    for match in REFERENCE.finditer(text):
        module, first, more = match.groups()
        found += [(module, name) for name in [first, *re.findall(r"`(test_\w+)`", more)]]
    return found


def test_it_keeps_every_test_file_name_unique():
    names = Counter(path.name for path in python_test_files())
    assert [name for name, count in names.items() if count > 1] == []


def test_it_names_only_tests_that_exist():
    references = referenced_tests()
    assert len(references) > 60
    by_name = {path.name: path for path in python_test_files()}
    missing = []
    for module, name in references:
        path = by_name.get(module)
        tree = ast.parse(path.read_text()) if path else ast.Module(body=[], type_ignores=[])
        defined = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        if name not in defined:
            missing.append(f"{module}::{name}")
    assert missing == []
