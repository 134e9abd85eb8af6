"""Live frame sources under test: a status callback that records.

(The fixture that stops a test's sources afterwards, `sources`, is tests/engine/conftest.py's.)
"""

from __future__ import annotations

from detection.engine.sources import SourceStatus


class Recorder:
    """An `on_status` callback that remembers every change."""

    def __init__(self) -> None:
        self.events: list[tuple[SourceStatus, str]] = []

    def __call__(self, status: SourceStatus, error: str) -> None:
        self.events.append((status, error))

    @property
    def statuses(self) -> list[SourceStatus]:
        return [s for s, _ in self.events]
