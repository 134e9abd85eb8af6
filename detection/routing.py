from __future__ import annotations

from django.urls import path

from .consumers import AnalysisConsumer

websocket_urlpatterns = [
    path("ws/analyses/<int:pk>/", AnalysisConsumer.as_asgi()),
]
