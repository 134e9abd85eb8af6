"""docs/security.md names the test behind each promise; a renamed or deleted test must not
leave a promise without its proof."""

from __future__ import annotations

import ast
import re

from tests.conftest import ROOT

# A cell lists `file.py::test_a`, then `test_b` (same file), ...
REFERENCE = re.compile(r"`(test_\w+\.py)::(test_\w+)`((?:, `test_\w+`)*)")


def referenced_tests() -> list[tuple[str, str]]:
    text = (ROOT / "docs" / "security.md").read_text()
    found = []
    for match in REFERENCE.finditer(text):
        module, first, more = match.groups()
        found += [(module, name) for name in [first, *re.findall(r"`(test_\w+)`", more)]]
    return found


def test_it_names_only_tests_that_exist():
    references = referenced_tests()
    assert len(references) > 60
    missing = []
    for module, name in references:
        tree = ast.parse((ROOT / "tests" / module).read_text())
        defined = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        if name not in defined:
            missing.append(f"{module}::{name}")
    assert missing == []
