from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from detection.web import dashboard

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", dashboard.dashboard, name="dashboard"),
    path("", include("detection.urls")),
]
