"""Fixtures for the engine's tests (the project-wide ones are tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from detection.engine.sources import LiveSource


@pytest.fixture
def sources() -> Iterator[list[LiveSource]]:
    """Sources made by a test; stopped afterwards even if the test fails."""
    made: list[LiveSource] = []
    yield made
    for source in made:
        source.stop()
