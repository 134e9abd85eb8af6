from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponseRedirect
from django.templatetags.static import static
from django.urls import include, path

from detection import health, metrics
from detection.web import dashboard


def favicon(request: HttpRequest) -> HttpResponseRedirect:
    # Browsers ask for /favicon.ico whatever a page links (the admin's pages link none).
    return HttpResponseRedirect(static("favicon.svg"))


urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", dashboard.dashboard, name="dashboard"),
    path("favicon.ico", favicon),
    # Operations: no login (a probe and a scraper have no session); /metrics checks its
    # own bearer token or address (detection/metrics.py).
    path("healthz", health.healthz, name="healthz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("", include("detection.urls")),
]
