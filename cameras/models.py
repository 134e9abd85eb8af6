"""Camera model and its sharing rules arrive with the cameras issue."""

from __future__ import annotations
