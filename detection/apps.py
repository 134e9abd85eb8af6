from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class DetectionConfig(AppConfig):
    name = "detection"
    verbose_name = "Detection"

    def ready(self) -> None:
        from detection import checks as detection_checks

        # Registered here, not by decorator at import, so the checks exist exactly when
        # the app is installed and importing the module has no side effects.
        for check in detection_checks.ALL_CHECKS:
            checks.register(check, detection_checks.TAG)
