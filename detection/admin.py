"""Admin for the detection models arrives with the models."""

from __future__ import annotations
