from __future__ import annotations

from django.urls import path

from detection.live.consumers import AnalysisConsumer

websocket_urlpatterns = [
    path("ws/analyses/<int:pk>/", AnalysisConsumer.as_asgi()),
]
