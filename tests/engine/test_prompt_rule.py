"""One prompt rule (detection/engine/limits.py) for the model, the portal's forms and the
engine: the same text gives the same prompts everywhere, and what one refuses all refuse."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from detection import validators
from detection.engine import PromptError
from detection.engine.limits import MAX_PROMPT_CHARS, MAX_PROMPTS_PER_CLASS
from detection.engine.prompts import normalize_prompts
from detection.models import Analysis
from detection.web.forms import PromptsForm

TEXTS = {
    "plain": "a street\na road",
    "spaces and blank lines": "  a street \n\n\t\n a road\r\n",
    "blank": " \n \n",
    "too many": "\n".join(f"prompt {i}" for i in range(MAX_PROMPTS_PER_CLASS + 1)),
    "too long": "a street\n" + "x" * (MAX_PROMPT_CHARS + 1),
}


def engine(text: str) -> list[str] | None:
    try:
        return list(normalize_prompts(text, "normal"))
    except PromptError:
        return None


def validator(text: str) -> bool:
    try:
        validators.prompt_lines(text)
    except ValidationError:
        return False
    return True


def form(text: str) -> list[str] | None:
    bound = PromptsForm({"normal_prompts": text, "anomaly_prompts": "a fire", "threshold": 0.6})
    if not bound.is_valid():
        assert "normal_prompts" in bound.errors, bound.errors
        return None
    return bound.cleaned_data["normal_prompts"].splitlines()


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_it_reads_and_judges_prompts_the_same_way_everywhere(text):
    stored = Analysis(normal_prompts=text).prompt_list("normal")
    by_engine, by_form = engine(text), form(text)
    assert by_engine == by_form
    assert (by_engine is not None) == validator(text)
    if by_engine is not None:
        assert stored == by_engine == ["a street", "a road"]
