from __future__ import annotations

from django.apps import AppConfig


class CamerasConfig(AppConfig):
    name = "cameras"
    verbose_name = "Cameras"

    def ready(self) -> None:
        # The worker checks a stream's address again before every open, in the Django-free
        # frame sources: they get the settings-backed policy, in every Django process.
        from detection.engine import sources

        from .validators import camera_policy

        sources.use_camera_policy(camera_policy)
