"""Input limits shared by the engine and the portal's validation (no heavy imports)."""

from __future__ import annotations

MAX_PROMPTS_PER_CLASS = 64
MAX_SAMPLING_FPS = 120.0
