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

        from django.db.models.signals import post_delete

        from detection import signals
        from detection.models import Analysis, Incident

        # Files go with their rows, also when a cascade deletes them (detection.signals),
        # whichever process deletes (the admin, a shell, a script).
        post_delete.connect(
            signals.incident_deleted, sender=Incident, dispatch_uid="detection.incident_files"
        )
        post_delete.connect(
            signals.analysis_deleted, sender=Analysis, dispatch_uid="detection.analysis_files"
        )
