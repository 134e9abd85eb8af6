from __future__ import annotations

from django.urls import path

from .web import (
    assistant,
    dashboard,
    exemplars,
    exports,
    frames,
    incidents,
    notifications,
    uploads,
    views,
)

app_name = "detection"

urlpatterns = [
    path("analyses/<int:pk>/", views.analysis_detail, name="analysis"),
    path("analyses/<int:pk>/scores.csv", exports.scores_csv, name="scores_csv"),
    path("analyses/<int:pk>/scores.json", exports.scores_json, name="scores_json"),
    path("analyses/<int:pk>/frame.jpg", views.latest_frame, name="frame"),
    path(
        "analyses/<int:pk>/frames/<int:frame_index>.jpg",
        frames.scored_frame,
        name="scored_frame",
    ),
    path("analyses/<int:pk>/picture.jpg", frames.live_picture, name="live_picture"),
    path("analyses/<int:pk>/queue/", views.queue_analysis, name="queue"),
    path("analyses/<int:pk>/stop/", views.stop_analysis, name="stop"),
    path("analyses/<int:pk>/rerun/", views.rerun_analysis, name="rerun"),
    path("analyses/<int:pk>/exemplars/", exemplars.add_exemplars, name="exemplar_add"),
    path("incidents/", incidents.incident_list, name="incidents"),
    path("incidents/<int:pk>/acknowledge/", views.acknowledge, name="acknowledge"),
    path("incidents/<int:pk>/thumbnail.jpg", views.incident_thumbnail, name="incident_thumbnail"),
    path("incidents/<int:pk>/clip.mp4", views.incident_clip, name="incident_clip"),
    path("incidents/<int:pk>/false-alarm/", views.false_alarm, name="false_alarm"),
    path("incidents/<int:pk>/confirm/", views.confirm, name="confirm"),
    path("exemplars/<int:pk>/image.jpg", exemplars.exemplar_image, name="exemplar_image"),
    path("exemplars/<int:pk>/delete/", exemplars.exemplar_delete, name="exemplar_delete"),
    path(
        "cameras/<int:pk>/email/",
        notifications.email_subscription,
        name="email_subscription",
    ),
    path("upload/", uploads.upload_video, name="upload"),
    path("image/", uploads.analyze_image_page, name="image"),
    path("prompts/suggest/", assistant.suggest, name="suggest_prompts"),
    # The dashboard wall (the page itself is portal.urls' "dashboard"): its status poll and
    # one camera's card.
    path("dashboard/state.json", dashboard.wall_state, name="wall_state"),
    path("dashboard/cameras/<int:pk>/card/", dashboard.wall_card, name="wall_card"),
]
