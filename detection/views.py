"""The analysis page: configuration, status, summary, incidents and stored scores."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from .access import visible_analyses
from .models import FrameScore

SCORES_PER_PAGE = 100


def _metadata_rows(metadata: object) -> list[tuple[str, object]]:
    # The worker writes a flat dict; anything else (an old list, null) is not a table.
    if not isinstance(metadata, dict):
        return []
    return sorted((str(key), value) for key, value in metadata.items())


@login_required
def analysis_detail(request: HttpRequest, pk: int) -> HttpResponse:
    # Hidden and missing analyses answer the same 404: no probing for ids.
    analysis = get_object_or_404(visible_analyses(request.user).select_related("camera"), pk=pk)
    scores = FrameScore.objects.filter(analysis=analysis).order_by("frame_index")
    # get_page() turns junk or out-of-range ?page= into the first or last page, not a 500.
    page = Paginator(scores, SCORES_PER_PAGE).get_page(request.GET.get("page"))
    incidents = analysis.incidents.select_related("acknowledged_by").order_by("start_time_s", "id")
    return render(
        request,
        "analysis.html",
        {
            "analysis": analysis,
            "camera": analysis.camera,
            "normal_prompts": analysis.prompt_list("normal"),
            "anomaly_prompts": analysis.prompt_list("anomaly"),
            "metadata": _metadata_rows(analysis.metadata),
            "incidents": incidents,
            "page": page,
        },
    )
