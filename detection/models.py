"""Analysis, FrameScore and Incident models arrive with the detection issue."""

from __future__ import annotations
