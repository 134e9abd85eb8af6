"""Cameras: where frames come from, who may see them, and how their source is doing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from detection.engine.netpolicy import redact

from . import validators

# A live camera counts as streaming while the worker says it is online and has stored a
# frame this recently (it stamps last_frame_at at most every 5 s). A stale stamp means
# the worker that said "online" is gone.
STREAMING_WITHIN = timedelta(seconds=60)

# A URL inside a message (an error naming the stream it could not open).
# (Trailing punctuation is the sentence's, not the URL's.)
_URL_IN_TEXT = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>:.,;)]", re.IGNORECASE)


@dataclass(frozen=True)
class DisplayState:
    """What the dashboard shows for a camera: `key` names a CSS class (status-<key>)."""

    key: str
    label: str


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
    # Decoding less (issue 16): NVRs and cameras offer a low-resolution sub-stream for
    # detection; scoring it costs a fraction of decoding the main stream.
    detect_source = models.CharField(
        "detect stream",
        max_length=2000,
        blank=True,
        help_text="Stream cameras, optional: the URL the detector scores instead of the "
        "source, such as the camera's low-resolution sub-stream (rtsp://.../stream2). The "
        "source stays the stream people watch; the same URL rules apply.",
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
        errors: dict[str, list[str]] = {}
        check = {
            self.Kind.WEBCAM: validators.webcam_index,
            self.Kind.STREAM: validators.stream_url,
            self.Kind.FILE: validators.video_path,
        }.get(self.kind)
        if check is not None and self.source:
            try:
                check(self.source)
                self.source = self.source.strip()
            except ValidationError as exc:
                errors["source"] = exc.messages
        if self.detect_source.strip():
            if self.kind != self.Kind.STREAM:
                errors["detect_source"] = [
                    "Only stream cameras have a detect stream: leave it empty."
                ]
            else:
                try:
                    validators.stream_url(self.detect_source)
                    self.detect_source = self.detect_source.strip()
                except ValidationError as exc:
                    errors["detect_source"] = exc.messages
        else:
            self.detect_source = ""
        if errors:
            raise ValidationError(errors)

    @property
    def is_live(self) -> bool:
        return self.kind != self.Kind.FILE

    # --- for display only (the dashboard); nothing here is stored ----------------------

    @property
    def display_state(self) -> DisplayState:
        """A live camera's own status; a file camera's from its analyses.

        A file is never "online": the worker reads it only while analysing it, so its
        stored status says nothing. Reads `self.analyses.all()` (prefetch it for lists).
        """
        if self.is_live:
            return DisplayState(self.status, self.get_status_display())
        analyses = list(self.analyses.all())
        statuses = {a.status for a in analyses}
        if "running" in statuses:
            return DisplayState("analysing", "Analysing")
        if "queued" in statuses:
            return DisplayState("queued", "Queued")
        finished = [a for a in analyses if a.status in ("completed", "failed", "stopped")]
        if not finished:
            return DisplayState("idle", "Not analysed yet")
        last = max(finished, key=lambda a: (a.finished_at or a.updated_at, a.pk))
        return {
            "completed": DisplayState("analysed", "Analysed"),
            "failed": DisplayState("failed", "Failed"),
            "stopped": DisplayState("stopped", "Stopped"),
        }[last.status]

    @property
    def is_streaming(self) -> bool | None:
        """Frames arriving now (online, and a frame stored lately); None for files."""
        if not self.is_live:
            return None
        if self.status != self.Status.ONLINE or self.last_frame_at is None:
            return False
        return timezone.now() - self.last_frame_at <= STREAMING_WITHIN

    @property
    def shown_error(self) -> str:
        """The last error while the camera is not online, credentials hidden; else ""."""
        if self.status == self.Status.ONLINE or not self.last_error:
            return ""
        return redact_text(self.last_error, *self.urls)

    @property
    def urls(self) -> tuple[str, ...]:
        """The camera's addresses that may hold credentials: its source, its detect stream."""
        return tuple(url for url in (self.source, self.detect_source) if url)


def redact_text(text: str, *sources: str) -> str:
    """`text` with every URL in it redacted, and the sources' passwords (where they have
    one) hidden wherever else they appear: the worker redacts what it stores, and this
    makes sure of it on every page."""
    text = _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), text)
    for source in sources:
        try:
            password = urlsplit(source).password if "://" in source else None
        except ValueError:
            password = None
        if password:
            text = text.replace(password, "***")
    return text
