"""POST /prompts/suggest/: the prompt assistant behind the "Suggest prompts" boxes.

The upload page, the image page and the admin's analysis form post a phrase ("someone
falling") and an optional scene; static/js/assistant.js fills the prompt fields with the
answer. The engine does the work (detection/engine/prompt_help.py); this view reads the
PROMPT_ASSISTANT_* settings and validates the input. It never fails because the endpoint
did: the engine falls back to templates and says why in `warnings`.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST

from detection.engine.prompt_help import MAX_PHRASE_CHARS, Endpoint, suggest_prompts


class SuggestForm(forms.Form):
    phrase = forms.CharField(
        max_length=MAX_PHRASE_CHARS,
        error_messages={"required": 'Describe the anomaly in a few words, e.g. "someone falling".'},
    )
    scene = forms.CharField(max_length=MAX_PHRASE_CHARS, required=False)


def endpoint_from_settings() -> Endpoint | None:
    """The configured chat-completions endpoint, or None (offline templates)."""
    url = settings.PROMPT_ASSISTANT_URL
    if not url:
        return None
    return Endpoint(
        url=url,
        model=settings.PROMPT_ASSISTANT_MODEL,
        api_key=settings.PROMPT_ASSISTANT_API_KEY,
        timeout_s=settings.PROMPT_ASSISTANT_TIMEOUT,
    )


@login_required
@require_POST
def suggest(request: HttpRequest) -> JsonResponse:
    form = SuggestForm(request.POST)
    if not form.is_valid():
        errors = {name: [str(e) for e in errs] for name, errs in form.errors.items()}
        return JsonResponse({"errors": errors}, status=400)
    try:
        suggestion = suggest_prompts(
            form.cleaned_data["phrase"],
            scene=form.cleaned_data["scene"],
            endpoint=endpoint_from_settings(),
        )
    except ValueError as exc:  # a phrase of punctuation only ("...")
        return JsonResponse({"errors": {"phrase": [f"{str(exc).capitalize()}."]}}, status=400)
    return JsonResponse(suggestion.as_dict())
