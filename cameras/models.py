"""Cameras: where frames come from, who may see them, and how their source is doing."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import models

from . import validators


class Camera(models.Model):
    class Kind(models.TextChoices):
        WEBCAM = "webcam", "Webcam (device index)"
        FILE = "file", "Video file"
        STREAM = "stream", "Stream (RTSP/HTTP)"

    class Status(models.TextChoices):
        # Filled by the worker: online while frames arrive, reconnecting during backoff,
        # offline when nobody reads it, failed when it cannot be read at all.
        ONLINE = "online", "Online"
        RECONNECTING = "reconnecting", "Reconnecting"
        OFFLINE = "offline", "Offline"
        FAILED = "failed", "Failed"

    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.STREAM)
    source = models.CharField(
        max_length=2000,
        help_text="Webcam: a device index (0, 1, ...). Stream: an rtsp://, rtsps://, http:// "
        "or https:// URL. File: an absolute path inside DETECTION_VIDEO_DIRS or MEDIA_ROOT.",
    )
    enabled = models.BooleanField(default=True)
    description = models.TextField(blank=True)
    viewers = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="shared_cameras",
        help_text="Users who may see this camera, its analyses and incidents.",
    )
    viewer_groups = models.ManyToManyField(
        Group,
        blank=True,
        related_name="shared_cameras",
        help_text="Groups whose members may see this camera.",
    )
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.OFFLINE)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    last_frame_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    reconnect_count = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        indexes = [models.Index(fields=["enabled", "kind"])]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        check = {
            self.Kind.WEBCAM: validators.webcam_index,
            self.Kind.STREAM: validators.stream_url,
            self.Kind.FILE: validators.video_path,
        }.get(self.kind)
        if check is None or not self.source:
            return
        try:
            check(self.source)
        except ValidationError as exc:
            raise ValidationError({"source": exc.messages}) from None
        self.source = self.source.strip()

    @property
    def is_live(self) -> bool:
        return self.kind != self.Kind.FILE
