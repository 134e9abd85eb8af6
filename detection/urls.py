from __future__ import annotations

from django.urls import path

from . import exports, uploads, views

app_name = "detection"

urlpatterns = [
    path("analyses/<int:pk>/", views.analysis_detail, name="analysis"),
    path("analyses/<int:pk>/scores.csv", exports.scores_csv, name="scores_csv"),
    path("analyses/<int:pk>/scores.json", exports.scores_json, name="scores_json"),
    path("upload/", uploads.upload_video, name="upload"),
    path("image/", uploads.analyze_image_page, name="image"),
]
