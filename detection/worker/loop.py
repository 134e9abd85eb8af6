"""The detection worker: claims analyses, reads frames, scores them in batches, stores.

One process serves many analyses. Frames from every claimed analysis are gathered into one
batch per model forward pass (each analysis then compares the shared image embeddings with
its own prompts), stored in one transaction per analysis, and published best effort.

The loop is made of small steps that report whether they did work (healthchecks'
`sendalerts` style), so tests drive them one by one: `claim_step`, `heartbeat_step`,
`gather_step`, `score_step`, `store_step`, `finish_step`. Signals only set a flag; the batch
in flight is finished and stored before the leases are released.

The database may go away under the worker (a PostgreSQL restart or failover, a SQLite lock
held past its timeout). Every step is safe to repeat, so the loop catches the error, closes
the broken connections, waits (capped exponential backoff) and carries on where it was:
frames already scored wait in `unstored` and are stored as they are (never re-scored), the
file readers keep their position, and a claim interrupted halfway is taken back.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    connections,
)
from django.utils import timezone

from cameras.models import Camera
from detection import conf, health, metrics
from detection.engine import EngineError, LoadedModel, Scorer, VideoReader, load_model, sources
from detection.engine.detector import AUTO, Detector, Inputs
from detection.engine.features import encode_fitted
from detection.engine.motion import MotionGate
from detection.engine.pipeline import prefetch, run_metadata, summarize
from detection.engine.preprocess import to_tensor
from detection.engine.schedule import Ticker
from detection.engine.scoring import encode_images
from detection.engine.video import is_black, samples_through
from detection.live import messages
from detection.live.publisher import ChannelPublisher, Publisher
from detection.models import Analysis, FrameScore
from detection.worker import clips, fullrate, leases, memory, preview, webhooks
from detection.worker.pruning import PeriodicPrune
from detection.worker.recording import LeaseLost, Recorder, ScoredItem

# (kind, source, **options) -> a live source, not yet started: `sources.open_source`'s shape.
SourceFactory = Callable[..., sources.LiveSource]

log = logging.getLogger(__name__)

Status = Analysis.Status
POLL_SECONDS = 2.0
MAX_JOBS = 16
# A live frame waits up to LIVE_WAIT_SHARE of its camera's interval (at most LIVE_WAIT_MAX_S)
# for other cameras' frames to share its forward pass (gather_step): on a CPU the encoder
# scores big batches much faster per frame (ViT-B-32 on the development machine: 90-110
# images/s at 16-64 frames, 27-80 at 1-4), and a camera sampled once a second has 2 s
# before its frame is stale.
LIVE_WAIT_SHARE = 0.25
LIVE_WAIT_MAX_S = 0.5
# Waits between attempts while the database is unreachable: 0.5, 1, 2, 4, 8, 10, 10, ... s.
DB_RETRY_FIRST_S = 0.5
DB_RETRY_MAX_S = 10.0
# The errors of a database that is away for now (connection lost, server restarting,
# SQLite busy); anything else (a bug, a constraint) still stops the worker.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)


@dataclass
class Pending:
    """A frame waiting for the next forward pass."""

    job: Job
    frame_index: int
    time_s: float
    captured_at: Any
    image: np.ndarray
    inputs: Inputs


@dataclass(eq=False)
class Job:
    analysis: Analysis
    detector: Detector
    recorder: Recorder
    done: bool = False
    # Whether what the learning period taught is saved (or there was nothing to learn).
    learned_saved: bool = True
    examples: memory.ExampleWatch = field(default_factory=memory.ExampleWatch)

    @property
    def scorer(self) -> Scorer:
        return self.detector.scorer

    @property
    def pk(self) -> int:
        return self.analysis.pk

    def close(self) -> None:
        pass


@dataclass(eq=False)
class FileJob(Job):
    reader: VideoReader | None = None
    frames: Iterator[Any] | None = None
    error: str = ""  # why the file cannot be read further (the analysis fails)
    expected: int = 0  # samples the header announces (0: no frame count to go by)

    def close(self) -> None:
        if self.frames is not None:
            self.frames.close()  # type: ignore[attr-defined]
        if self.reader is not None:
            self.reader.close()


@dataclass(eq=False)
class LiveJob(Job):
    source: Any = None  # detection.engine.sources.LiveSource
    gate: MotionGate | None = None
    ticker: Ticker = field(default_factory=lambda: Ticker(1.0, 0.0))
    next_index: int = 0
    camera_status: str = ""
    camera_reconnects: int = 0  # the reconnect count last stored on the camera
    last_frame_saved: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        if self.source is not None:
            self.source.stop()


class Worker:
    def __init__(
        self,
        *,
        once: bool = False,
        analysis_id: int | None = None,
        device: str | None = None,
        batch_size: int | None = None,
        publisher: Publisher | None = None,
        poll_seconds: float = POLL_SECONDS,
        max_jobs: int = MAX_JOBS,
        source_options: dict[str, Any] | None = None,
        open_source: SourceFactory | None = None,
    ) -> None:
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.once = once
        self.analysis_id = analysis_id
        self.spec = conf.model_spec(device=device)
        self.batch_size = batch_size or conf.batch_size()
        self.publisher = publisher or ChannelPublisher()
        self.poll_seconds = poll_seconds
        self.max_jobs = max_jobs
        # Timeouts and reconnect policy for live sources (detection.engine.sources.LiveSource).
        self.source_options = source_options or {}
        # How a live camera's frames are read: the engine's sources, or (benchmark, tests) a
        # stand-in such as a video file paced in real time.
        self.open_source = open_source or sources.open_source
        # Decoding less (issue 16): how live sources skip the frames nobody samples. Read
        # once, so a bad DETECTION_DECODE stops the worker at start, not at its first camera.
        self.decode = conf.decode_mode()
        # The live cameras sampled faster than scoring needs, for pictures and clips, and
        # those that want it and wait for a place (detection/worker/fullrate.py).
        self.full_rate_limit = conf.full_rate_cameras()
        self.full_rate: set[int] = set()
        self.full_rate_refused: set[int] = set()
        self.jobs: dict[int, Job] = {}
        # Live frames gathered for the next forward pass (gather_step), and when the first of
        # them must go (monotonic).
        self.waiting: list[Pending] = []
        self.waiting_until = math.inf
        # Scored but not stored yet (in order): kept across a database outage.
        self.unstored: list[tuple[Job, list[ScoredItem]]] = []
        # Frames through the model, and frames stored: a batch scored twice would show.
        self.frames_scored = 0
        self.frames_stored = 0
        self.stopping = False
        self._signals = 0
        self._next_poll = 0.0
        self._next_heartbeat = 0.0
        # This worker's row for /healthz and /metrics (detection/health.py).
        self.started_at = timezone.now()
        self._next_beat = 0.0
        self._model: LoadedModel | None = None
        self._db_down_since: float | None = None
        self._db_attempts = 0
        # One thread, off the loop that feeds the model, for the JPEGs only kept for looking
        # at a camera later: the ring of scored frames and the clips' pre-roll.
        self._pictures_thread = ThreadPoolExecutor(1, thread_name_prefix="pictures")
        # Live pictures of watched cameras and the ring of scored frames (issue 14, 7-8).
        self.pictures = preview.LivePictures(self._pictures_thread)
        # Incident clips: live pre-roll rings, file clips in a background thread (item 6).
        self.clips = clips.ClipMaker(self._pictures_thread)
        # Retention (issue 15): a prune in its own thread, one worker at a time; not in --once.
        self.pruning = PeriodicPrune(self.owner, interval_s=0 if once else None)

    # --- lifecycle -------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: exiting at once")
            os._exit(1)
        log.info("signal %s: finishing the batch in flight, then releasing leases", signum)
        self.stopping = True

    def run(self) -> None:
        log.info("worker %s started (%s)", self.owner, "once" if self.once else "service")
        metrics.count_incidents()
        self._metrics_server = metrics.serve_worker_metrics()
        while not self.stopping:
            try:
                did = self.tick()
            except TRANSIENT_DB_ERRORS as exc:
                self._database_unavailable(exc)
                continue
            self._database_available()
            if self.once and not self.jobs and not did:
                break
            if not did:
                self._sleep(self._idle_wait())
        self.shutdown()

    def tick(self) -> bool:
        now = time.monotonic()
        # What an outage left scored but unstored goes first, in order.
        did = self.store_step()
        if now >= self._next_poll or (self.once and not self.jobs):
            self._next_poll = now + self.poll_seconds
            did |= self.claim_step()
            self.examples_step()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + leases.lease_seconds() / 3
            self.heartbeat_step()
        if now >= self._next_beat:
            self._next_beat = now + health.HEARTBEAT_SECONDS
            health.beat(self.owner, self.started_at)
        pending = self.gather_step()
        if pending:
            self.score_step(pending)
            did = True
        did |= self.finish_step()
        self.camera_status_step()
        self.pictures.step(self.jobs)
        self.clips.step(self.jobs)
        self.sampling_step()
        self.pruning.step()
        webhooks.step()  # record finished attempts, start retries that are due (issue 15)
        return did

    def shutdown(self) -> None:
        """Release every lease as resumable (queued): another worker or a restart resumes."""
        try:
            self.store_step()
            for job in list(self.jobs.values()):
                self._drop(job, Status.QUEUED)
            health.forget(self.owner)
        except TRANSIENT_DB_ERRORS as exc:
            # Nothing more to wait for: the leases lapse and another worker resumes after
            # the last stored frame.
            log.warning(
                "database unavailable while stopping (%s); %d scored frames not stored, "
                "leases of analyses %s lapse within %d s",
                _describe(exc),
                sum(len(items) for _, items in self.unstored),
                sorted(self.jobs),
                leases.lease_seconds(),
            )
            for job in list(self.jobs.values()):
                self.jobs.pop(job.pk).close()
        self.clips.shutdown()  # live clips end here; file clips under way are finished
        self.pictures.close()  # the scored frames queued for the rings are written
        self._pictures_thread.shutdown(wait=True, cancel_futures=True)  # both users closed
        self.publisher.flush()  # the last messages (statuses) reach the pages
        try:
            webhooks.drain()  # attempts under way are recorded, not left claimed
        except TRANSIENT_DB_ERRORS as exc:
            log.warning("webhook outcomes not recorded (%s): retried later", _describe(exc))
        self.pruning.stop()  # a prune under way stops after its batch
        log.info(
            "worker %s stopped: %d frames scored, %d stored",
            self.owner,
            self.frames_scored,
            self.frames_stored,
        )

    def _database_unavailable(self, exc: Exception) -> None:
        """Close the broken connections and wait before the next attempt (backoff)."""
        now = time.monotonic()
        if self._db_down_since is None:
            self._db_down_since, self._db_attempts = now, 0
        delay = min(DB_RETRY_MAX_S, DB_RETRY_FIRST_S * 2**self._db_attempts)
        self._db_attempts += 1
        log.warning(
            "database unavailable (%s); %d scored frames kept for storing; "
            "reconnecting in %.1f s (attempt %d)",
            _describe(exc),
            sum(len(items) for _, items in self.unstored),
            delay,
            self._db_attempts,
        )
        _close_connections()
        # Renew the leases first thing once back: the outage ate into them.
        self._next_heartbeat = self._next_beat = 0.0
        self._sleep(delay)

    def _database_available(self) -> None:
        if self._db_down_since is not None:
            log.info(
                "database reachable again after %.1f s (%d failed attempts); "
                "work resumed where it stopped",
                time.monotonic() - self._db_down_since,
                self._db_attempts,
            )
            self._db_down_since = None

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    def _idle_wait(self) -> float:
        live = [j.ticker.next_due for j in self.jobs.values() if isinstance(j, LiveJob)]
        wait = min(live) - time.monotonic() if live else self.poll_seconds
        if self.waiting:
            wait = min(wait, self.waiting_until - time.monotonic())
        picture = self.pictures.next_due()  # a watched camera's next picture (4 a second)
        if picture is not None:
            wait = min(wait, picture - time.monotonic())
        return min(max(wait, 0.01), 0.25 if live else self.poll_seconds)

    # --- steps -----------------------------------------------------------------------

    def claim_step(self) -> bool:
        _refresh_connections()
        claimed = leases.claim(
            self.owner,
            limit=self.max_jobs - len(self.jobs),
            include_live=not self.once,
            only_id=self.analysis_id,
            serving=list(self.jobs),
        )
        self._start_all(claimed)
        return bool(claimed)

    def heartbeat_step(self) -> None:
        held = leases.renew(self.owner, list(self.jobs))
        for pk in set(self.jobs) - held:
            # Stopped by an operator or re-run: stop writing without touching its status.
            log.info("analysis %s: lease lost (stopped or taken over); dropping it", pk)
            self.jobs.pop(pk).close()

    def gather_step(self) -> list[Pending]:
        """Up to one batch of frames, shared fairly between the claimed analyses.

        Live frames wait for each other (LIVE_WAIT_SHARE): cameras ticking at their own
        phases would otherwise go through the encoder a few at a time. They go as soon as a
        batch is full, the first of them has waited its share, no other camera is due before
        then (a lone camera never waits), or file frames are scored anyway.
        """
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if isinstance(job, LiveJob) and not job.done and job.ticker.due(now):
                job.ticker.advance(now)
                # So the source converts a frame just before the next ask (decoding less).
                job.source.will_take(job.ticker.next_due)
                frame = job.source.latest(0)
                if frame is None:
                    job.ticker.missed(now)  # it may land just after the tick: ask again soon
                    continue
                item = self._live_frame(job, frame)
                if item is not None:
                    wait = min(LIVE_WAIT_MAX_S, LIVE_WAIT_SHARE * job.ticker.interval)
                    self.waiting_until = min(self.waiting_until, now + wait)
                    self.waiting.append(item)
        pending: list[Pending] = []
        files = [j for j in self.jobs.values() if isinstance(j, FileJob) and not j.done]
        if files:
            share = max(1, math.ceil((self.batch_size - len(self.waiting)) / len(files)))
            for job in files:
                pending += self._file_frames(job, share)
        # No camera due before the first waiting frame must go: nobody would join it.
        live = [j for j in self.jobs.values() if isinstance(j, LiveJob) and not j.done]
        upcoming = min((j.ticker.next_due for j in live), default=math.inf)
        if self.waiting and (
            pending
            or len(self.waiting) >= self.batch_size
            or now >= self.waiting_until
            or upcoming > self.waiting_until
            or self.stopping
        ):
            pending = self.waiting + pending
            self.waiting, self.waiting_until = [], math.inf
        return pending

    def examples_step(self) -> None:
        """Exemplars added or removed (feedback, the analysis page): reload them, so a
        running analysis uses them from its next frame, without a restart."""
        for job in list(self.jobs.values()):
            if not job.detector.uses_normality:
                continue
            if job.examples.changed(memory.exemplars_for(job.analysis)):
                count = memory.load_examples(job.detector, job.analysis)
                log.info("analysis %s: %d examples in use", job.pk, count)

    def score_step(self, pending: list[Pending]) -> None:
        model = self._model
        assert model is not None
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start : start + self.batch_size]
            # One forward pass per kind of input for the whole chunk, whichever analyses
            # its frames belong to; each analysis then decides on its own rows.
            prompt_rows = [r for r, p in enumerate(chunk) if p.inputs.prompt is not None]
            normality_rows = [r for r, p in enumerate(chunk) if p.inputs.normality is not None]
            features = views = None
            with metrics.INFERENCE_SECONDS.time():
                if prompt_rows:
                    batch = to_tensor([chunk[r].inputs.prompt for r in prompt_rows], model)
                    features = encode_images(model, batch)
                if normality_rows:
                    inputs = [chunk[r].inputs.normality for r in normality_rows]
                    views = encode_fitted(model, inputs)
            metrics.INFERENCE_FRAMES.inc(len(chunk))
            at_prompt = {row: k for k, row in enumerate(prompt_rows)}
            at_normality = {row: k for k, row in enumerate(normality_rows)}
            self.frames_scored += len(chunk)
            by_job: dict[int, list[int]] = {}
            for row, p in enumerate(chunk):
                by_job.setdefault(p.job.pk, []).append(row)
            for rows in by_job.values():
                job = chunk[rows[0]].job
                if job.pk not in self.jobs:
                    continue  # dropped while this batch was in flight
                job_features = (
                    features[[at_prompt[r] for r in rows]]
                    if features is not None and rows[0] in at_prompt
                    else None
                )
                job_views = (
                    views[[at_normality[r] for r in rows]]
                    if views is not None and rows[0] in at_normality
                    else None
                )
                try:
                    points = job.detector.decide(
                        [chunk[r].time_s for r in rows], job_features, job_views
                    )
                except EngineError as exc:  # normality mode with nothing learned
                    self.jobs.pop(job.pk, None)
                    job.close()
                    self._fail(job.pk, str(exc))
                    continue
                items = []
                for row, point in zip(rows, points, strict=True):
                    p = chunk[row]
                    box = None
                    if (
                        job.analysis.localize
                        and not point.learning
                        and point.score >= job.recorder.threshold
                    ):
                        box = job.scorer.localize(p.image)
                    items.append(
                        ScoredItem(
                            frame_index=p.frame_index,
                            time_s=p.time_s,
                            captured_at=p.captured_at,
                            score=point.score,
                            normal=point.normal,
                            anomaly=point.anomaly,
                            image=p.image,
                            box=box,
                            prompt_score=point.prompt_score,
                            novelty=point.novelty,
                            learning=point.learning,
                        )
                    )
                self.unstored.append((job, items))
                self._learning_ended(job)
        self.store_step()

    def _learning_ended(self, job: Job) -> None:
        """Once the learning period is over: save what it taught (a worker taking over
        resumes with it), and use and show the automatic threshold."""
        detector = job.detector
        if job.learned_saved or not detector.learning_done:
            return
        job.learned_saved = True
        memory.save_learned(job.analysis, detector)
        job.recorder.set_threshold(detector.threshold_in_use)
        job.analysis.metadata = {**job.analysis.metadata, **detector.describe()}
        Analysis.objects.filter(pk=job.pk, lease_owner=self.owner).update(
            metadata=job.analysis.metadata
        )
        log.info(
            "analysis %s: learned %d frames; threshold %.3f",
            job.pk,
            len(detector.learned_prompt_scores),
            detector.threshold_in_use,
        )

    def store_step(self) -> bool:
        """Store what was scored, in order; on a database error the rest waits for a retry."""
        stored = False
        while self.unstored:
            job, items = self.unstored[0]
            held = job.pk in self.jobs
            if held:
                try:
                    job.recorder.store(items)  # all or nothing (see recording.py)
                except LeaseLost:
                    log.info("analysis %s: stopped or taken over; dropping it", job.pk)
                    self.jobs.pop(job.pk, None)
                    job.close()
                    held = False
            self.unstored.pop(0)
            if held:
                self.frames_stored += len(items)
                _observe_stored(job, items)
                stored = True
                self._stored(job)
                self.pictures.stored(job.pk, items)
        return stored

    def finish_step(self) -> bool:
        finished = [j for j in self.jobs.values() if isinstance(j, FileJob) and j.done]
        for job in finished:
            if any(pending_job is job for pending_job, _ in self.unstored):
                continue  # its last frames are not stored yet
            if job.error:
                self._drop(job, Status.FAILED, error_message=job.error, finished_at=timezone.now())
            else:
                self._complete(job)
        return bool(finished)

    def sampling_step(self) -> None:
        """How often each live source converts a frame (decoding less, issue 16): at its
        analysis's sampling rate, or more often while a page shows its live picture or an
        incident clip records (both take the source's newest frames, 4 a second), for at
        most `full_rate_limit` cameras at once (detection/worker/fullrate.py)."""
        live = [job for job in self.jobs.values() if isinstance(job, LiveJob)]
        faster: dict[int, float] = {}
        wanted: dict[int, int] = {}
        for job in live:
            interval = 1.0 / job.analysis.sampling_fps
            if self.clips.recording(job.pk) and 1.0 / clips.LIVE_FPS < interval:
                wanted[job.pk] = fullrate.RECORDING
                interval = 1.0 / clips.LIVE_FPS
            if self.pictures.watched(job.pk) and preview.INTERVAL_S < interval:
                wanted.setdefault(job.pk, fullrate.WATCHED)
                interval = preview.INTERVAL_S
            faster[job.pk] = interval
        self.full_rate = fullrate.choose(wanted, self.full_rate, self.full_rate_limit)
        refused = set(wanted) - self.full_rate
        for pk in refused - self.full_rate_refused:
            log.info(
                "analysis %s: its %s takes the frames sampled for scoring: %d cameras "
                "already take 4 a second (DETECTION_FULL_RATE_CAMERAS=%d)",
                pk,
                "clip" if wanted[pk] == fullrate.RECORDING else "live picture",
                len(self.full_rate),
                self.full_rate_limit,
            )
        self.full_rate_refused = refused
        for job in live:
            if job.pk in self.full_rate:
                interval = faster[job.pk]
            else:
                interval = 1.0 / job.analysis.sampling_fps
            if job.source.sample_interval_s != interval:
                job.source.sample_interval_s = interval

    def camera_status_step(self) -> None:
        for job in self.jobs.values():
            if not isinstance(job, LiveJob):
                continue
            status = str(job.source.status)
            reconnects = job.source.reconnects
            # A flapping camera can drop and come back between two ticks, so its status
            # looks unchanged: the reconnect count is stored whenever it moves, too.
            if status != job.camera_status or reconnects != job.camera_reconnects:
                changed = status != job.camera_status
                camera = job.analysis.camera
                camera.reconnect_count = reconnects
                camera.status = status
                camera.last_error = job.source.last_error or ""
                fields = ["status", "last_error", "reconnect_count", "updated_at"]
                if changed:
                    camera.status_changed_at = timezone.now()
                    fields.append("status_changed_at")
                camera.save(update_fields=fields)
                job.camera_status = status  # once stored: a failed save is tried again
                job.camera_reconnects = reconnects
                if not changed:
                    continue
                self.publisher.publish(
                    job.pk,
                    "status",
                    messages.status_message(
                        job.analysis.status, camera_status=status, last_error=camera.last_error
                    ),
                )

    # --- jobs ------------------------------------------------------------------------

    def _start_all(self, claimed: list[Analysis]) -> None:
        """Start what was claimed; a first model load (seconds, ~48 s of hub retries without
        the weights) happens once, before, shown on their pages as "loading model"."""
        error = None
        if claimed and self._model is None:
            self._set_phase(claimed, "loading model")
            try:
                self._load_model_holding(claimed)
            except (EngineError, ValueError) as exc:  # what `_start` catches, as before
                error = str(exc)  # every claimed analysis fails with it: one load, not one each
            finally:
                self._set_phase(claimed, "")
        for analysis in claimed:
            if error is None:
                self._start(analysis)
            else:
                self._fail(analysis.pk, error)

    def _load_model_holding(self, claimed: list[Analysis]) -> LoadedModel:
        """Load the model in a thread while this one renews the claimed leases: a first
        download (~600 MB) can take minutes, far longer than a lease, and another worker
        must not take over analyses that are only waiting for the model."""
        outcome: dict[str, Any] = {}

        def load() -> None:
            try:
                outcome["model"] = self._load_model()
            except BaseException as exc:  # noqa: BLE001 (raised again in this thread)
                outcome["error"] = exc

        loader = threading.Thread(target=load, name="model-load", daemon=True)
        loader.start()
        renew_every = max(1.0, leases.lease_seconds() / 3)
        while True:
            loader.join(renew_every)
            if not loader.is_alive():
                break
            leases.renew(self.owner, [analysis.pk for analysis in claimed])
            health.beat(self.owner, self.started_at)  # alive, if busy downloading
        if "error" in outcome:
            raise outcome["error"]
        return outcome["model"]

    def _set_phase(self, analyses: list[Analysis], phase: str) -> None:
        """What the analyses are doing before their first score (`metadata["phase"]`, read
        by the pages' snapshots), stored while this worker holds them, and published."""
        for analysis in analyses:
            analysis.metadata = {**analysis.metadata, "phase": phase}
            Analysis.objects.filter(pk=analysis.pk, lease_owner=self.owner).update(
                metadata=analysis.metadata
            )
            self.publisher.publish(
                analysis.pk, "status", messages.status_message(Status.RUNNING, phase=phase)
            )

    def _start(self, analysis: Analysis) -> None:
        try:
            model = self._load_model()
            scorer = Scorer(
                model, analysis.normal_prompts, analysis.anomaly_prompts, conf.logit_scale()
            )
            detector, watch, saved = self._detector(analysis, scorer)
            recorder = Recorder(
                analysis, self.publisher, owner=self.owner, threshold=detector.threshold_in_use
            )
            if analysis.camera.kind == Camera.Kind.FILE:
                job: Job = self._start_file(analysis, detector, recorder)
            else:
                job = self._start_live(analysis, detector, recorder)
        except (EngineError, ValueError) as exc:
            self._fail(analysis.pk, str(exc))
            return
        job.examples, job.learned_saved = watch, saved
        self.jobs[analysis.pk] = job
        self.clips.attach(job)
        if isinstance(job, LiveJob):
            self.pictures.start(job.pk, job.source, analysis.sampling_fps, job.next_index)
        log.info("analysis %s (%s): started by %s", analysis.pk, analysis.camera.kind, self.owner)
        self.publisher.publish(analysis.pk, "status", messages.status_message(Status.RUNNING))

    def _detector(
        self, analysis: Analysis, scorer: Scorer
    ) -> tuple[Detector, memory.ExampleWatch, bool]:
        """The analysis's detector, with what it learned before and its examples."""
        detector = Detector(
            scorer,
            analysis.mode,
            analysis.learning_seconds,
            AUTO if analysis.auto_threshold else analysis.threshold,
            crops=conf.normality_crops(),
        )
        watch = memory.ExampleWatch()
        saved = detector.learn_seconds == 0
        if detector.learn_seconds > 0 and memory.restore_learned(analysis, detector):
            saved = True
        elif detector.learn_seconds > 0 and FrameScore.objects.filter(analysis=analysis).exists():
            detector.relearn_from_next_frame()  # resumed, but its learning was never saved
        if detector.uses_normality:
            watch.changed(memory.exemplars_for(analysis))
            memory.load_examples(detector, analysis)
            if detector.learn_seconds == 0 and not detector.has_normal:
                raise EngineError(
                    f"mode {detector.mode.value} needs a normal to compare with: set "
                    "learning seconds or add normal examples"
                )
        return detector, watch, saved

    def _load_model(self) -> LoadedModel:
        if self._model is None:
            started = time.monotonic()
            self._model = load_model(self.spec)
            metrics.MODEL_LOAD_SECONDS.set(time.monotonic() - started)
        return self._model

    def _start_file(self, analysis: Analysis, detector: Detector, recorder: Recorder) -> FileJob:
        from django.core.exceptions import ValidationError

        from cameras import validators

        try:
            path = validators.video_path(analysis.camera.source)
        except ValidationError as exc:
            raise EngineError(f"{analysis.camera.source}: {' '.join(exc.messages)}") from None
        # The database first: should it fail, no reader thread is left behind.
        last = FrameScore.objects.filter(analysis=analysis).order_by("-frame_index").first()
        start = last.frame_index + 1 if last else 0
        reader = VideoReader(path)

        def frames() -> Iterator[tuple[Any, Inputs]]:
            for f in reader.frames(
                analysis.sampling_fps, start_index=start, skip_black=analysis.skip_black_frames
            ):
                yield f, detector.prepare(f.image)  # in the decoder thread

        stats = reader.stats
        expected = samples_through(stats.header_frames - 1, stats.fps, analysis.sampling_fps)
        if expected:
            # Kept with the analysis, so pages rendered mid-run say "16 of 80 frames" too.
            analysis.metadata = {**analysis.metadata, "expected_frames": expected}
            Analysis.objects.filter(pk=analysis.pk, lease_owner=self.owner).update(
                metadata=analysis.metadata
            )
        job = FileJob(
            analysis,
            detector,
            recorder,
            reader=reader,
            frames=prefetch(frames(), depth=2 * self.batch_size),
            expected=expected,
        )
        return job

    def _start_live(self, analysis: Analysis, detector: Detector, recorder: Recorder) -> LiveJob:
        camera = analysis.camera
        last = FrameScore.objects.filter(analysis=analysis).order_by("-frame_index").first()
        # Scores come from the camera's detect stream when it has one (a low-resolution
        # sub-stream, as NVRs use for detection); `source` stays the one operators watch.
        url = camera.detect_source if camera.kind == Camera.Kind.STREAM else ""
        options = {
            # Converted (or decoded) only as often as scored: sampling_step adjusts it.
            "sample_interval_s": 1.0 / analysis.sampling_fps,
            "decode": self.decode,
            **self.source_options,
        }
        source = self.open_source(camera.kind, url or camera.source, **options)
        source.start()
        gate = (
            MotionGate(rescore_interval_s=analysis.rescore_interval_s)
            if analysis.motion_gating
            else None
        )
        return LiveJob(
            analysis,
            detector,
            recorder,
            source=source,
            gate=gate,
            ticker=Ticker(1.0 / analysis.sampling_fps, time.monotonic()),
            next_index=last.frame_index + 1 if last else 0,
        )

    def _file_frames(self, job: FileJob, count: int) -> list[Pending]:
        out = []
        assert job.frames is not None
        try:
            for _ in range(count):
                frame, inputs = next(job.frames)
                out.append(Pending(job, frame.index, frame.time_s, None, frame.image, inputs))
        except StopIteration:
            job.done = True
        except EngineError as exc:
            # Undecodable from the start or mid-file: this analysis fails alone, in
            # finish_step (which a database outage may make repeat).
            job.done, job.error = True, str(exc)
            return []
        return out

    def _live_frame(self, job: LiveJob, frame: Any) -> Pending | None:
        if job.analysis.skip_black_frames and is_black(frame.image):
            return None
        started = job.analysis.started_at or timezone.now()
        time_s = max(0.0, (frame.captured_at - started).total_seconds())
        if job.gate is not None and not job.gate.should_score(frame.image, time_s):
            return None
        index, job.next_index = job.next_index, job.next_index + 1
        return Pending(
            job,
            index,
            time_s,
            frame.captured_at,
            frame.image,
            job.detector.prepare(frame.image),
        )

    def _stored(self, job: Job) -> None:
        """Progress and camera bookkeeping after a store (a failure here loses nothing)."""
        if isinstance(job, FileJob) and job.reader is not None:
            if job.expected:
                # Samples up to the last stored frame: the frames scored, and the black
                # frames skipped before it. Decoding runs ahead of scoring; this does not.
                a, stats = job.analysis, job.reader.stats
                last = a.last_frame_index if a.last_frame_index is not None else -1
                done = samples_through(last, stats.fps, a.sampling_fps)
                expected = max(job.expected, done)  # a header counting short
                progress = min(0.999, done / expected)
                Analysis.objects.filter(pk=job.pk).update(progress=progress)
                self.publisher.publish(
                    job.pk,
                    "progress",
                    messages.progress_message(progress, scored=a.frames_scored, expected=expected),
                )
        elif isinstance(job, LiveJob) and time.monotonic() - job.last_frame_saved > 5:
            job.last_frame_saved = time.monotonic()
            Camera.objects.filter(pk=job.analysis.camera_id).update(last_frame_at=timezone.now())

    def _complete(self, job: FileJob) -> None:
        assert job.reader is not None
        stats = job.reader.stats
        job.recorder.close_open_incident(stats.total_seconds)
        try:
            job.detector.finish_learning()  # a file shorter than its learning period
        except EngineError as exc:
            self._drop(job, Status.FAILED, error_message=str(exc), finished_at=timezone.now())
            return
        self._learning_ended(job)
        scores = list(FrameScore.objects.filter(analysis_id=job.pk).order_by("frame_index"))
        scored = [_as_scored(s) for s in scores]
        threshold = job.detector.threshold_in_use
        summary = summarize(scored, threshold)
        metadata = {
            **job.analysis.metadata,  # what the upload recorded (original name, size)
            **run_metadata(stats, scored, threshold, job.scorer),
            **job.detector.describe(),
            "sampling_rate_fps": job.analysis.sampling_fps,
            "skip_black_frames": job.analysis.skip_black_frames,
            # What was expected, now counted: every sample, black frames skipped included.
            "expected_frames": samples_through(
                stats.frames_decoded - 1, stats.fps, job.analysis.sampling_fps
            ),
        }
        done = messages.progress_message(
            1.0, scored=len(scores), expected=metadata["expected_frames"]
        )
        self._drop(
            job,
            Status.COMPLETED,
            progress=1.0,
            finished_at=timezone.now(),
            metadata=metadata,
            frames_scored=len(scores),
            average_score=summary["average_score"],
            peak_score=summary["max_anomaly_score"],
            peak_time_s=summary["max_anomaly_time"],
            final_progress=done,
        )
        log.info("analysis %s: completed, %d frames scored", job.pk, len(scores))

    def _drop(
        self, job: Job, status: str, *, final_progress: dict[str, Any] | None = None, **fields: Any
    ) -> None:
        # Released first: if the database fails here the job stays, and is dropped again.
        released = leases.release(self.owner, job.pk, status, **fields)
        self.jobs.pop(job.pk, None)
        job.close()
        if released:
            if final_progress is not None:  # the final progress, before the status it leads to
                self.publisher.publish(job.pk, "progress", final_progress)
            shown = {k: v for k, v in fields.items() if k in ("error_message", "progress")}
            self.publisher.publish(job.pk, "status", messages.status_message(status, **shown))

    def _fail(self, pk: int, message: str) -> None:
        log.warning("analysis %s failed: %s", pk, message)
        leases.release(
            self.owner, pk, Status.FAILED, error_message=message, finished_at=timezone.now()
        )
        failed = messages.status_message(Status.FAILED, error_message=message)
        self.publisher.publish(pk, "status", failed)


def _observe_stored(job: Job, items: list[ScoredItem]) -> None:
    """Metrics of a stored batch: frames per camera, and capture-to-stored lag (live)."""
    camera = job.analysis.camera
    now = timezone.now()
    lags = [(now - i.captured_at).total_seconds() for i in items if i.captured_at is not None]
    metrics.observe_stored(metrics.camera_labels(camera.pk, camera.name), len(items), lags)


def _close_connections() -> None:
    """Forget broken connections; Django opens new ones on the next query.

    Not inside a transaction (tests run steps inside one; closing it would lose it).
    """
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            try:
                conn.close()
            except TRANSIENT_DB_ERRORS:
                pass  # already unusable; close() has dropped it anyway


def _describe(exc: BaseException) -> str:
    """`OperationalError: first line` for one-line logs, with the error that started it.

    A lost connection often surfaces as a later error: Django's transaction cleanup
    reconnects, and a refused connection replaces "terminating connection ..."."""

    def message(e: BaseException) -> str:
        lines = str(e).strip().splitlines()
        return lines[0] if lines else ""

    first = exc
    for _ in range(10):  # chains are short; a bound keeps a cycle harmless
        if first.__context__ is None:
            break
        first = first.__context__
    described = f"{type(exc).__name__}: {message(exc)}"
    if message(first) != message(exc):
        described += f" (after {type(first).__name__}: {message(first)})"
    return described


def _refresh_connections() -> None:
    """Drop broken or expired connections between steps, as Django does between requests.

    Not inside a transaction (tests run steps inside one; closing it would lose it).
    """
    if not connection.in_atomic_block:
        close_old_connections()


def _as_scored(row: FrameScore) -> Any:
    from detection.engine.pipeline import ScoredFrame

    return ScoredFrame(
        row.frame_index,
        row.time_s,
        row.score,
        row.normal_similarity,
        row.anomaly_similarity,
        row.prompt_score,
        row.novelty,
        row.learning,
    )
