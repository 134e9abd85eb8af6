from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def detection(request: HttpRequest) -> dict[str, object]:
    # Random weights make every score meaningless; base.html shows a banner on every
    # page so nobody mistakes a test deployment for a working one.
    return {"random_weights": settings.DETECTION_PRETRAINED.lower() == "none"}
