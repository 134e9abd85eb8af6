from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from cameras import views as camera_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", camera_views.dashboard, name="dashboard"),
    path("", include("detection.urls")),
]
