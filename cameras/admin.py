"""Camera admin arrives with the Camera model."""

from __future__ import annotations
