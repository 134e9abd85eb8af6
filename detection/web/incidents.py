"""The incidents page: every incident of every camera the user may see, newest first.

Filters (camera, state, date range) come from the query string through a form, so a bad
value gets a message naming the field and is ignored, never a 500. The page runs a fixed
number of queries whatever the number of incidents (camera, analysis and users come with
each row); a row's clip is a file check, not a query.

The buttons post to the existing actions (detection:acknowledge, detection:false_alarm,
detection:confirm) with `next` = this page with its filters, and `back_to` sends the
operator there after the action, when `next` is a path on this site.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_safe

from cameras.access import visible_cameras
from cameras.models import Camera
from detection.access import visible_incidents
from detection.models import Incident

PER_PAGE = 25

STATES: dict[str, tuple[str, dict[str, Any]]] = {
    "open": ("Open", {"end_time_s__isnull": True}),
    "unacknowledged": ("Unacknowledged", {"acknowledged_at__isnull": True}),
    "acknowledged": ("Acknowledged", {"acknowledged_at__isnull": False}),
    "false_alarm": ("False alarm", {"feedback": Incident.Feedback.FALSE_ALARM}),
    "confirmed": ("Confirmed", {"feedback": Incident.Feedback.CONFIRMED}),
}


class IncidentFilter(forms.Form):
    camera = forms.ModelChoiceField(
        queryset=Camera.objects.none(), required=False, empty_label="All cameras"
    )
    state = forms.ChoiceField(
        choices=[("", "Any state"), *((key, label) for key, (label, _) in STATES.items())],
        required=False,
    )
    since = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"})
    )
    # One incident (the link in an incident e-mail); still only among those visible.
    incident = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def __init__(self, *args: Any, cameras: QuerySet[Camera], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only cameras the user may see are offered, or accepted.
        self.fields["camera"].queryset = cameras.order_by("name", "pk")
        self.fields["camera"].error_messages["invalid_choice"] = (
            "That camera does not exist or is not shared with you."
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            self.add_error("until", "The end date is before the start date.")
        return data

    def apply(self, incidents: QuerySet[Incident]) -> QuerySet[Incident]:
        """`incidents` narrowed by every valid field (the invalid ones are left out)."""
        data = self.cleaned_data if hasattr(self, "cleaned_data") else {}
        if data.get("camera"):
            incidents = incidents.filter(analysis__camera=data["camera"])
        if data.get("state"):
            incidents = incidents.filter(**STATES[data["state"]][1])
        if data.get("since"):
            incidents = incidents.filter(started_at__date__gte=data["since"])
        if data.get("until"):
            incidents = incidents.filter(started_at__date__lte=data["until"])
        if data.get("incident"):
            incidents = incidents.filter(pk=data["incident"])
        return incidents


def duration_text(seconds: float) -> str:
    """12.5 s, 3 min 05 s, 2 h 01 min."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def safe_next(request: HttpRequest) -> str | None:
    """The `next` a form posted, when it is a URL of this site; else None."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return None


def back_to(request: HttpRequest, fallback: Model) -> HttpResponseRedirect:
    """Where an incident action returns: its safe `next`, or `fallback`'s page."""
    target = safe_next(request)
    return redirect(target) if target else redirect(fallback)


@login_required
@require_safe
def incident_list(request: HttpRequest) -> HttpResponse:
    cameras = visible_cameras(request.user)
    form = IncidentFilter(request.GET or None, cameras=cameras)
    if form.is_bound:
        form.is_valid()  # fills cleaned_data with the valid fields, errors with the rest
    incidents = form.apply(visible_incidents(request.user))
    incidents = incidents.select_related(
        "analysis__camera", "acknowledged_by", "feedback_by"
    ).order_by("-started_at", "-id")
    page = Paginator(incidents, PER_PAGE).get_page(request.GET.get("page"))
    rows = list(page.object_list)
    for incident in rows:
        if incident.end_time_s is not None:
            incident.duration_text = duration_text(incident.end_time_s - incident.start_time_s)
    # The filters without the page, for the pager's links; the page itself for `next`.
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "incidents.html",
        {
            "form": form,
            "page": page,
            "incidents": rows,
            "filters": query.urlencode(),
            "here": request.get_full_path(),
            "filtered": any(form.cleaned_data.values()) if form.is_bound else False,
        },
    )
