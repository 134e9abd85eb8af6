"""Input rules shared by the engine and the portal's validation (no heavy imports).

Prompts are one of them: the portal's models, forms and validators and the engine's
prompt ensembles all read a class's prompts with `split_prompts` and judge them with
`prompt_problem`, each in its own words (a form error, a CLI line).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

MAX_PROMPTS_PER_CLASS = 64
MAX_PROMPT_CHARS = 1000  # one prompt; CLIP reads ~77 tokens, far fewer characters
MAX_SAMPLING_FPS = 120.0
MAX_LEARN_SECONDS = 24 * 3600.0  # a day of learning is plenty; the memory is bounded anyway
MODES = ("prompts", "normality", "combined")  # how a frame is scored (engine.detector)


def split_prompts(text: str | None) -> list[str]:
    """A class's prompts from text: one per line, stripped, blank lines dropped."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


@dataclass(frozen=True)
class PromptProblem:
    code: Literal["blank", "too_many", "too_long"]
    found: int  # how many prompts, or how long the longest
    limit: int


def prompt_problem(prompts: Sequence[str]) -> PromptProblem | None:
    """What is wrong with a class's (split) prompts, or None."""
    if not prompts:
        return PromptProblem("blank", 0, 1)
    if len(prompts) > MAX_PROMPTS_PER_CLASS:
        return PromptProblem("too_many", len(prompts), MAX_PROMPTS_PER_CLASS)
    longest = max(len(p) for p in prompts)
    if longest > MAX_PROMPT_CHARS:
        return PromptProblem("too_long", longest, MAX_PROMPT_CHARS)
    return None
