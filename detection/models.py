"""Analyses, their scores and incidents.

FrameScore rows are the record: every stored score, unique per (analysis, frame index) so
the worker's writes are idempotent. Pages and the channel layer read from them.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.urls import reverse

from cameras.models import Camera

from . import validators
from .engine.limits import MAX_LEARN_SECONDS, split_prompts


class Analysis(models.Model):
    # Metadata recorded at upload, about the file itself: it survives a re-run (the rest of
    # `metadata` describes one run and is rebuilt by the worker).
    UPLOAD_METADATA = ("uploaded_filename", "uploaded_bytes")

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        STOPPED = "stopped", "Stopped"

    camera = models.ForeignKey(Camera, on_delete=models.CASCADE, related_name="analyses")
    name = models.CharField(max_length=120)
    normal_prompts = models.TextField(
        validators=[validators.prompt_lines],
        help_text="What a normal frame shows; one prompt per line (an ensemble).",
    )
    anomaly_prompts = models.TextField(
        validators=[validators.prompt_lines],
        help_text="What an anomaly looks like; one prompt per line (an ensemble).",
    )

    class Mode(models.TextChoices):
        PROMPTS = "prompts", "Prompts (the prototype's score)"
        NORMALITY = "normality", "Normality (distance to the learned normal)"
        COMBINED = "combined", "Combined (the larger of both)"

    threshold = models.FloatField(
        default=0.6,
        validators=[validators.open_unit_interval],
        help_text="A frame is anomalous when its score is at or above this (0-1).",
    )
    mode = models.CharField(
        max_length=10,
        choices=Mode.choices,
        default=Mode.PROMPTS,
        help_text="How a frame is scored: by the prompts, by its distance to what this "
        "camera learned as normal, or both.",
    )
    learning_seconds = models.FloatField(
        default=0.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(MAX_LEARN_SECONDS)],
        help_text="Learn the first seconds as this camera's normal; they never raise "
        "incidents. 0 = no learning.",
    )
    auto_threshold = models.BooleanField(
        default=False,
        help_text="Derive the threshold from what was learned (the number above is then "
        "ignored; the one in use is shown on the analysis page).",
    )
    sampling_fps = models.FloatField(
        default=1.0, validators=[validators.sampling_fps], help_text="Frames scored per second."
    )
    window_size = models.PositiveSmallIntegerField(
        default=60,
        validators=[MinValueValidator(5), MaxValueValidator(1000)],
        help_text="Scores kept on the live chart.",
    )
    smoothing_window = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(60)],
        help_text="Moving average over this many scores before the threshold; 1 = off.",
    )
    incident_open_frames = models.PositiveSmallIntegerField(
        default=3,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="Consecutive frames at or above the threshold that open an incident.",
    )
    incident_close_frames = models.PositiveSmallIntegerField(
        default=5,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="Consecutive frames below threshold - hysteresis that close it.",
    )
    hysteresis = models.FloatField(
        default=0.05,
        validators=[MinValueValidator(0.0), MaxValueValidator(0.5)],
        help_text="How far below the threshold a score must fall to count towards closing.",
    )
    localize = models.BooleanField(
        default=False, help_text="On anomalous frames, find the most anomalous 4x4 grid cell."
    )
    skip_black_frames = models.BooleanField(default=True)
    motion_gating = models.BooleanField(
        default=True, help_text="Live cameras: skip scoring frames that did not change."
    )
    webhook_url = models.URLField(
        blank=True,
        max_length=1000,
        validators=[validators.webhook_url],
        help_text="Optional: POST a JSON event here when an incident opens or closes.",
    )
    # Notifications (issue 15): the key webhooks are signed with (generated when a URL is
    # set, shown once in the admin; detection.worker.webhooks), and the per-analysis e-mail
    # rate limit: when the last mail went out, and how many openings were held back since
    # (detection.worker.notifications). Not on forms: only the admin and the worker set them.
    webhook_secret = models.CharField(max_length=100, blank=True, editable=False)
    email_sent_at = models.DateTimeField(null=True, blank=True, editable=False)
    email_held = models.PositiveIntegerField(default=0, editable=False)
    rescore_interval_s = models.FloatField(
        default=3.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(3600)],
        help_text="With motion gating, score at least this often (seconds) anyway.",
    )
    # Retention (detection/retention.py): raw scores older than this many days are rolled up
    # into per-minute ScoreRollup rows; None follows DETECTION_RETENTION_DAYS, 0 keeps them.
    retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(36_500)],
        help_text="Keep every raw score this many days, then keep per-minute summaries "
        "only. Empty: the site's default (DETECTION_RETENTION_DAYS); 0: keep forever.",
    )

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    progress = models.FloatField(
        default=0.0, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)]
    )
    error_message = models.TextField(blank=True)

    # The worker's lease: who holds the analysis, when it last said so, when it lapses.
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_heartbeat_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="analyses",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # Summaries kept current by the worker, so lists never aggregate FrameScore.
    frames_scored = models.PositiveIntegerField(default=0)
    last_frame_index = models.BigIntegerField(null=True, blank=True)
    last_score = models.FloatField(null=True, blank=True)
    peak_score = models.FloatField(null=True, blank=True)
    peak_time_s = models.FloatField(null=True, blank=True)
    average_score = models.FloatField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "analyses"
        indexes = [models.Index(fields=["status", "lease_expires_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.camera})"

    def get_absolute_url(self) -> str:
        return reverse("detection:analysis", args=[self.pk])

    def prompt_list(self, which: str) -> list[str]:
        return split_prompts(self.normal_prompts if which == "normal" else self.anomaly_prompts)

    @property
    def threshold_in_use(self) -> float:
        """The fixed threshold, or the automatic one once the worker derived it."""
        if self.auto_threshold:
            used = (self.metadata or {}).get("anomaly_threshold")
            if isinstance(used, (int, float)):
                return float(used)
        return self.threshold

    @property
    def is_anomalous(self) -> bool | None:
        return None if self.last_score is None else self.last_score >= self.threshold_in_use


class FrameScore(models.Model):
    # What a score is, as live messages and exports read it, and its localisation box.
    SCORE_FIELDS = (
        "frame_index",
        "time_s",
        "captured_at",
        "score",
        "normal_similarity",
        "anomaly_similarity",
        "prompt_score",
        "novelty",
        "learning",
    )
    BOX_FIELDS = ("box_x0", "box_y0", "box_x1", "box_y1")

    analysis = models.ForeignKey(Analysis, on_delete=models.CASCADE, related_name="scores")
    frame_index = models.BigIntegerField()
    time_s = models.FloatField(help_text="Seconds from the start of the video or stream.")
    captured_at = models.DateTimeField(null=True, blank=True, help_text="Wall time (live).")
    score = models.FloatField()
    normal_similarity = models.FloatField()
    anomaly_similarity = models.FloatField()
    # What went into `score`: the prompts' probability of anomaly and the calibrated novelty
    # (None where the mode does not compute it, or while learning).
    prompt_score = models.FloatField(null=True, blank=True)
    novelty = models.FloatField(null=True, blank=True)
    learning = models.BooleanField(default=False, help_text="Learned as normal; never judged.")
    # The most anomalous grid cell, in pixels of the frame (localisation only).
    box_x0 = models.PositiveIntegerField(null=True, blank=True)
    box_y0 = models.PositiveIntegerField(null=True, blank=True)
    box_x1 = models.PositiveIntegerField(null=True, blank=True)
    box_y1 = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["analysis", "frame_index"]
        constraints = [
            # Also the index for "the last N scores of an analysis" (scanned backwards).
            models.UniqueConstraint(
                fields=["analysis", "frame_index"], name="framescore_unique_frame"
            ),
        ]
        indexes = [
            models.Index(fields=["analysis", "time_s"], name="framescore_time"),
            models.Index(fields=["analysis", "captured_at"], name="framescore_captured"),
        ]

    def __str__(self) -> str:
        return f"{self.analysis_id}#{self.frame_index}: {self.score:.3f}"

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        if self.box_x0 is None:
            return None
        return (self.box_x0, self.box_y0, self.box_x1, self.box_y1)


class ScoreRollup(models.Model):
    """One minute of raw scores that retention folded away (detection/retention.py).

    `minute` is floor(time_s / 60) of the analysis, so a chart or an export places it on the
    same axis as the raw scores. Sums and counts (not means) are stored so a minute pruned in
    two runs merges exactly; the raw rows go in the same transaction as the rollup is
    written, so a run that dies half way loses nothing and counts nothing twice.
    """

    analysis = models.ForeignKey(Analysis, on_delete=models.CASCADE, related_name="rollups")
    minute = models.BigIntegerField()
    first_frame_index = models.BigIntegerField()
    last_frame_index = models.BigIntegerField()
    start_time_s = models.FloatField()
    end_time_s = models.FloatField()
    first_captured_at = models.DateTimeField(null=True, blank=True)
    last_captured_at = models.DateTimeField(null=True, blank=True)
    count = models.PositiveIntegerField()
    min_score = models.FloatField()
    max_score = models.FloatField()
    sum_score = models.FloatField()
    # Judged frames at or above `threshold` (the threshold in use when rolled up); frames
    # learned as normal are never judged and never count as above.
    above = models.PositiveIntegerField()
    learning = models.PositiveIntegerField(default=0)
    threshold = models.FloatField()
    # What rollup retention (DETECTION_ROLLUP_RETENTION_DAYS) ages: the last frame's wall
    # time, or for a video file the time its analysis finished.
    recorded_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["analysis", "minute"]
        constraints = [
            models.UniqueConstraint(fields=["analysis", "minute"], name="scorerollup_unique_minute")
        ]

    def __str__(self) -> str:
        return f"{self.analysis_id} minute {self.minute}: {self.count} scores"

    @property
    def mean_score(self) -> float:
        return self.sum_score / self.count if self.count else 0.0


class MaintenanceLease(models.Model):
    """Who runs a maintenance task now (one row per task, e.g. "prune"), so that only one
    process of the whole deployment runs it at a time: taken by a conditional UPDATE, kept
    by renewing `expires_at`, lapsing when its holder dies."""

    name = models.CharField(max_length=40, primary_key=True)
    owner = models.CharField(max_length=200, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_started_at = models.DateTimeField(null=True, blank=True)
    last_finished_at = models.DateTimeField(null=True, blank=True)
    last_result = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.owner or 'free'})"


class Incident(models.Model):
    analysis = models.ForeignKey(Analysis, on_delete=models.CASCADE, related_name="incidents")
    start_time_s = models.FloatField()
    end_time_s = models.FloatField(null=True, blank=True)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    peak_score = models.FloatField()
    peak_time_s = models.FloatField()
    peak_frame_index = models.BigIntegerField(null=True, blank=True)
    thumbnail = models.ImageField(upload_to="incidents/%Y/%m/%d/", blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="acknowledged_incidents",
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True)

    class Feedback(models.TextChoices):
        NONE = "", "None"
        FALSE_ALARM = "false_alarm", "False alarm"
        CONFIRMED = "confirmed", "Confirmed anomaly"

    feedback = models.CharField(max_length=12, choices=Feedback.choices, blank=True, default="")
    feedback_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="incident_feedback",
    )
    feedback_at = models.DateTimeField(null=True, blank=True)
    # Clean JPEGs of the frames around the peak (storage names), for feedback exemplars.
    frames = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["analysis", "-started_at"], name="incident_recent")]

    def __str__(self) -> str:
        return f"Incident {self.pk} on {self.analysis}"

    @property
    def is_open(self) -> bool:
        return self.end_time_s is None

    @property
    def is_acknowledged(self) -> bool:
        return self.acknowledged_at is not None

    @property
    def thumbnail_url(self) -> str | None:
        """The access-checked thumbnail view (MEDIA_URL is never served); None without one.

        `v` changes whenever the worker replaces the thumbnail (a higher peak of an open
        incident), so a page that holds the old image fetches the new one.
        """
        if not self.thumbnail:
            return None
        url = reverse("detection:incident_thumbnail", args=[self.pk])
        return f"{url}?v={self.peak_frame_index if self.peak_frame_index is not None else 0}"

    @property
    def clip_url(self) -> str | None:
        """The access-checked clip view once the worker has written the clip; else None."""
        from detection.frames import incident_clip_path

        if self.pk is None or not incident_clip_path(self.pk).exists():
            return None
        return reverse("detection:incident_clip", args=[self.pk])


class Exemplar(models.Model):
    """An example frame an operator gave: normal (joins the memory) or an anomaly.

    It belongs to a camera (every analysis of it uses it) or to one analysis. The image is
    kept so the embedding can be recomputed when the configured model changes; the worker
    embeds it (the web process never loads the model) and records which model did.
    """

    class Kind(models.TextChoices):
        NORMAL = "normal", "Normal"
        ANOMALY = "anomaly", "Anomaly"

    class Source(models.TextChoices):
        UPLOAD = "upload", "Uploaded image"
        CLIP = "clip", "Frame of an uploaded clip"
        FEEDBACK = "feedback", "Incident feedback"

    camera = models.ForeignKey(
        Camera, null=True, blank=True, on_delete=models.CASCADE, related_name="exemplars"
    )
    analysis = models.ForeignKey(
        Analysis, null=True, blank=True, on_delete=models.CASCADE, related_name="exemplars"
    )
    kind = models.CharField(max_length=8, choices=Kind.choices)
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.UPLOAD)
    image = models.ImageField(upload_to="exemplars/%Y/%m/%d/")
    embedding = models.BinaryField(null=True, blank=True, editable=False)
    model_spec = models.CharField(max_length=500, blank=True, editable=False)
    incident = models.ForeignKey(
        Incident, null=True, blank=True, on_delete=models.SET_NULL, related_name="exemplars"
    )
    frame_index = models.BigIntegerField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="exemplars",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(camera__isnull=False, analysis__isnull=True)
                | models.Q(camera__isnull=True, analysis__isnull=False),
                name="exemplar_camera_or_analysis",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} example {self.pk}"

    @property
    def owner_camera_id(self) -> int:
        return self.camera_id if self.camera_id else self.analysis.camera_id


class LearnedMemory(models.Model):
    """What an analysis learned in its learning period, so a resumed run does not relearn.

    `data` is detection.engine.detector's npz (bounded: at most the memory's capacity per
    view); `model_spec` says which model's embeddings they are.
    """

    analysis = models.OneToOneField(Analysis, on_delete=models.CASCADE, related_name="memory")
    model_spec = models.CharField(max_length=500)
    frames = models.PositiveIntegerField(default=0)
    data = models.BinaryField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Memory of analysis {self.analysis_id} ({self.frames} frames)"


class WorkerHeartbeat(models.Model):
    """One row per running worker, written every few seconds (detection/health.py).

    /healthz and /metrics read it: a worker whose row is older than
    HEALTH_WORKER_STALE_SECONDS is dead or stuck. A worker that stops cleanly deletes its
    row; a crashed one's row stays, ages, and is swept a day later by any worker.
    """

    owner = models.CharField(max_length=200, unique=True)  # the lease owner: host:pid:random
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-seen_at"]

    def __str__(self) -> str:
        return f"worker {self.owner}"


class IncidentSubscription(models.Model):
    """A user's opt-in to e-mail when an incident opens on a camera.

    Opting in is not access: a mail goes only to subscribers who may see the camera at the
    time the incident opens (cameras.access), so losing access stops the mail too.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="incident_subscriptions"
    )
    camera = models.ForeignKey(Camera, on_delete=models.CASCADE, related_name="subscriptions")
    email = models.BooleanField(default=True, help_text="E-mail when an incident opens.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "camera"], name="subscription_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user} on {self.camera}"


class WebhookDelivery(models.Model):
    """One webhook event and its delivery attempts: the log the worker retries from.

    A row is written when the event happens and updated after each attempt, so a worker
    that restarts picks up what was still due (detection.worker.webhooks). `last_error`
    names the URL only redacted (netpolicy.redact) and never holds the secret.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    analysis = models.ForeignKey(
        Analysis, on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    incident = models.ForeignKey(
        Incident,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="webhook_deliveries",
    )
    event = models.CharField(max_length=40)
    payload = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # When the next attempt is due (pushed ahead while an attempt is under way); None once
    # delivered or given up.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="webhook_due")]

    def __str__(self) -> str:
        return f"{self.event} of analysis {self.analysis_id} ({self.get_status_display()})"
