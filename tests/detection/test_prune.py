"""Retention: old raw scores become per-minute rollups, old rollups and incidents go
(detection/retention.py, `manage.py prune`, the worker's periodic prune)."""

from __future__ import annotations

import io
import math
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models.query import QuerySet
from django.utils import timezone

from detection import retention
from detection.frames import incident_clip_path
from detection.models import Analysis, FrameScore, Incident, MaintenanceLease, ScoreRollup
from detection.worker.pruning import PeriodicPrune
from tests.support.factories import AnalysisFactory
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db

THRESHOLD = 0.6


@pytest.fixture(autouse=True)
def retention_settings(settings):
    settings.DETECTION_RETENTION_DAYS = 30
    settings.DETECTION_ROLLUP_RETENTION_DAYS = 365
    settings.DETECTION_INCIDENT_RETENTION_DAYS = 90
    cache.delete(retention.USAGE_CACHE_KEY)
    return settings


def _score(i: int) -> float:
    return ((i * 7) % 10) / 10


def live_scores(analysis, start, count, *, first_index=0, days_ago=40.0, learning=()):
    """`count` scores at 1 frame/s, the first captured `days_ago` days ago."""
    base = timezone.now() - timedelta(days=days_ago)
    FrameScore.objects.bulk_create(
        FrameScore(
            analysis=analysis,
            frame_index=first_index + i,
            time_s=float(start + i),
            captured_at=base + timedelta(seconds=i),
            score=_score(first_index + i),
            normal_similarity=0.2,
            anomaly_similarity=0.1,
            learning=(first_index + i) in learning,
        )
        for i in range(count)
    )


def expected_minutes(indexes, learning=()):
    """{minute: (count, min, mean, max, above, learning)} of scores at time_s = index."""
    minutes: dict[int, list[int]] = {}
    for i in indexes:
        minutes.setdefault(i // 60, []).append(i)
    out = {}
    for minute, rows in minutes.items():
        scores = [_score(i) for i in rows]
        above = sum(1 for i in rows if i not in learning and _score(i) >= THRESHOLD)
        out[minute] = (
            len(rows),
            min(scores),
            pytest.approx(sum(scores) / len(scores)),
            max(scores),
            above,
            sum(1 for i in rows if i in learning),
        )
    return out


def rollups_of(analysis):
    return {
        r.minute: (r.count, r.min_score, r.mean_score, r.max_score, r.above, r.learning)
        for r in ScoreRollup.objects.filter(analysis=analysis)
    }


@pytest.fixture
def live():
    return AnalysisFactory(threshold=THRESHOLD, status=Analysis.Status.RUNNING)


# --- rolling up -------------------------------------------------------------------------


def test_it_rolls_old_scores_up_per_minute_and_keeps_recent_ones(live):
    learning = {0, 1, 2, 3, 4}
    live_scores(live, 0, 150, learning=learning)  # 40 days old: minutes 0, 1 and half of 2
    live_scores(live, 3_000_000, 10, first_index=150, days_ago=1)  # recent
    report = retention.prune(batch_rows=7, pause_s=0)
    assert rollups_of(live) == expected_minutes(range(150), learning)
    remaining = FrameScore.objects.filter(analysis=live)
    assert list(remaining.values_list("frame_index", flat=True)) == list(range(150, 160))
    assert (report.scores, report.analyses, report.batches) == (150, 1, math.ceil(150 / 7))
    # The minute's bounds, for charts and exports.
    first = ScoreRollup.objects.get(analysis=live, minute=0)
    assert (first.first_frame_index, first.last_frame_index) == (0, 59)
    assert (first.start_time_s, first.end_time_s, first.threshold) == (0.0, 59.0, THRESHOLD)
    assert first.recorded_at == first.last_captured_at


def test_it_deletes_in_batches_of_the_given_size(live):
    live_scores(live, 0, 23)
    report = retention.prune(batch_rows=5, pause_s=0)
    assert report.batches == math.ceil(23 / 5)
    assert not FrameScore.objects.exists()
    assert rollups_of(live) == expected_minutes(range(23))


def test_it_follows_each_analysis_own_retention(live, settings):
    forever = AnalysisFactory(threshold=THRESHOLD, retention_days=0)
    short = AnalysisFactory(threshold=THRESHOLD, retention_days=2)
    for analysis in (live, forever, short):
        live_scores(analysis, 0, 10, days_ago=5)  # younger than the global 30 days
    retention.prune(pause_s=0)
    assert FrameScore.objects.filter(analysis=live).count() == 10
    assert FrameScore.objects.filter(analysis=forever).count() == 10
    assert FrameScore.objects.filter(analysis=short).count() == 0
    settings.DETECTION_RETENTION_DAYS = 0  # the global "forever" leaves everyone's alone
    live_scores(live, 100, 5, first_index=100, days_ago=400)
    retention.prune(pause_s=0)
    assert FrameScore.objects.filter(analysis=live).count() == 15


def test_it_ages_a_video_file_scores_with_its_analysis():
    def file_analysis(status, finished_days_ago):
        analysis = AnalysisFactory(
            threshold=THRESHOLD,
            status=status,
            finished_at=timezone.now() - timedelta(days=finished_days_ago),
        )
        FrameScore.objects.bulk_create(
            FrameScore(
                analysis=analysis,
                frame_index=i,
                time_s=i / 2,
                score=_score(i),
                normal_similarity=0.2,
                anomaly_similarity=0.1,
            )
            for i in range(240)  # 2 minutes at 2 frames/s, no wall time
        )
        return analysis

    old = file_analysis(Analysis.Status.COMPLETED, 45)
    recent = file_analysis(Analysis.Status.COMPLETED, 3)
    rerunning = file_analysis(Analysis.Status.RUNNING, 45)
    retention.prune(pause_s=0)
    assert not FrameScore.objects.filter(analysis=old).exists()
    assert [(r.minute, r.count) for r in ScoreRollup.objects.filter(analysis=old)] == [
        (0, 120),
        (1, 120),
    ]
    assert ScoreRollup.objects.get(analysis=old, minute=0).recorded_at == old.finished_at
    assert FrameScore.objects.filter(analysis=recent).count() == 240
    assert FrameScore.objects.filter(analysis=rerunning).count() == 240


def test_it_deletes_rollups_past_their_own_retention(live):
    live_scores(live, 0, 120, days_ago=400)
    live_scores(live, 600, 60, first_index=600, days_ago=100)
    report = retention.prune(pause_s=0)
    assert report.rollups_deleted == 2
    assert sorted(rollups_of(live)) == [10]


# --- incidents and their files ------------------------------------------------------------


def _incident(analysis, ended_days_ago):
    ended = None if ended_days_ago is None else timezone.now() - timedelta(days=ended_days_ago)
    incident = Incident.objects.create(
        analysis=analysis,
        start_time_s=1.0,
        end_time_s=None if ended is None else 5.0,
        started_at=timezone.now() - timedelta(days=200),
        ended_at=ended,
        peak_score=0.9,
        peak_time_s=2.0,
    )
    incident.thumbnail.save("peak.jpg", ContentFile(b"jpeg"), save=False)
    frame = incident.thumbnail.storage.save(
        f"incidents/frames/{incident.pk}/f1.jpg", ContentFile(b"jpeg")
    )
    incident.frames = [frame]
    incident.save()
    clip = incident_clip_path(incident.pk)
    clip.parent.mkdir(parents=True, exist_ok=True)
    clip.write_bytes(b"mp4")
    return incident


def _files(incident) -> list[Path]:
    storage = incident.thumbnail.storage
    return [
        Path(incident.thumbnail.path),
        *(Path(storage.path(n)) for n in incident.frames),
        incident_clip_path(incident.pk),
    ]


def test_it_deletes_old_closed_incidents_with_their_files(
    live, media, django_capture_on_commit_callbacks
):
    old = _incident(live, ended_days_ago=120)
    recent = _incident(live, ended_days_ago=10)
    still_open = _incident(live, ended_days_ago=None)
    old_files = _files(old)
    assert all(p.exists() for p in old_files)
    with django_capture_on_commit_callbacks(execute=True):
        report = retention.prune(pause_s=0)
    assert report.incidents == 1
    assert set(Incident.objects.values_list("pk", flat=True)) == {recent.pk, still_open.pk}
    assert not any(p.exists() for p in old_files)
    assert all(p.exists() for p in _files(recent) + _files(still_open))


# --- crashes and the one-at-a-time rule ----------------------------------------------------


def test_it_loses_and_double_counts_nothing_after_an_interrupted_run(live, monkeypatch):
    live_scores(live, 0, 200)
    # A crash inside the third batch's transaction: its rollup and delete roll back together.
    real_delete = QuerySet._raw_delete
    calls = []

    def crash_on_third(self, using):
        calls.append(1)
        if len(calls) == 3 and self.model is FrameScore:
            raise RuntimeError("killed")
        return real_delete(self, using)

    monkeypatch.setattr(QuerySet, "_raw_delete", crash_on_third)
    with pytest.raises(RuntimeError):
        retention.prune(batch_rows=30, pause_s=0)
    assert FrameScore.objects.count() == 200 - 60
    monkeypatch.setattr(QuerySet, "_raw_delete", real_delete)
    # Stopped between batches (SIGTERM, a worker shutting down): the next run carries on.
    report = retention.prune(batch_rows=30, pause_s=0, should_stop=lambda: True)
    assert report.stopped and report.batches == 1
    assert retention.holder() is None  # the lease was given back both times
    retention.prune(batch_rows=30, pause_s=0)
    assert not FrameScore.objects.exists()
    assert rollups_of(live) == expected_minutes(range(200))
    retention.prune(batch_rows=30, pause_s=0)  # and again: nothing changes
    assert rollups_of(live) == expected_minutes(range(200))


def test_it_runs_one_prune_at_a_time(live):
    live_scores(live, 0, 10)
    assert retention.acquire("other-worker")
    with pytest.raises(retention.PruneBusy, match="other-worker"):
        retention.prune(pause_s=0)
    assert FrameScore.objects.count() == 10
    with pytest.raises(CommandError, match="another prune is running") as raised:
        call_command("prune", stdout=io.StringIO())
    assert raised.value.returncode == 1
    # Its holder died: the lease lapses and the next prune takes it over.
    MaintenanceLease.objects.filter(name=retention.LEASE_NAME).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    retention.prune(pause_s=0)
    assert not FrameScore.objects.exists()
    lease = MaintenanceLease.objects.get(name=retention.LEASE_NAME)
    assert lease.owner == "" and lease.last_result["scores"] == 10


def test_it_skips_a_periodic_prune_when_another_worker_pruned_lately(live):
    retention.prune(pause_s=0)  # someone just pruned
    live_scores(live, 0, 10)
    with pytest.raises(retention.PruneBusy, match="less than the prune interval"):
        retention.prune(pause_s=0, min_interval=timedelta(minutes=54))
    assert FrameScore.objects.count() == 10


# --- the command ----------------------------------------------------------------------------


def test_it_shows_what_would_go_with_dry_run_and_changes_nothing(live):
    live_scores(live, 0, 90)
    _incident(live, ended_days_ago=120)
    out = io.StringIO()
    call_command("prune", "--dry-run", stdout=out)
    text = out.getvalue()
    assert "raw scores 30 days (or the analysis's own)" in text
    assert "Raw scores: 90 of 1 analyses would be rolled up into 2 per-minute rows" in text
    assert f"  analysis {live.pk}: 90" in text
    assert "Closed incidents: 1 would be deleted" in text
    assert "Dry run: nothing was changed." in text
    assert FrameScore.objects.count() == 90 and Incident.objects.count() == 1
    assert not ScoreRollup.objects.exists()


def test_it_reports_what_it_pruned(live):
    live_scores(live, 0, 90)
    out = io.StringIO()
    call_command("prune", "--batch-size", "40", "--pause", "0", stdout=out)
    text = out.getvalue()
    assert "Raw scores: 90 of 1 analyses were rolled up into" in text
    assert "Per-minute rollups: 0 were deleted." in text
    assert "3 batches" in text
    with pytest.raises(CommandError, match="--batch-size must be at least 1"):
        call_command("prune", "--batch-size", "0")


# --- the worker -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_prunes_periodically_in_the_worker_one_worker_at_a_time(settings):
    analysis = AnalysisFactory(threshold=THRESHOLD, status=Analysis.Status.RUNNING)
    live_scores(analysis, 0, 50)
    first = PeriodicPrune("worker-a", interval_s=3600, first_delay_s=0)
    second = PeriodicPrune("worker-b", interval_s=3600, first_delay_s=0)
    assert first.step()
    assert not first.step()  # under way, or not due again for an hour
    wait_until(lambda: not first.running, 30, "the first worker's prune to finish")
    assert first.runs == 1 and not FrameScore.objects.exists()
    live_scores(analysis, 50, 10, first_index=50)
    assert second.step()  # due for it too, but another worker pruned a moment ago
    wait_until(lambda: not second.running, 30, "the second worker's offer to end")
    assert (second.runs, second.skipped) == (0, 1)
    assert FrameScore.objects.count() == 10
    # Configured from the settings; never in --once runs.
    from detection.worker.loop import Worker

    settings.DETECTION_PRUNE_INTERVAL_MINUTES = 15
    assert Worker().pruning.interval_s == 900
    assert Worker(once=True).pruning.interval_s == 0
    assert not PeriodicPrune("x", interval_s=0, first_delay_s=0).step()


# --- what operators see ----------------------------------------------------------------------


def test_it_shows_storage_use_to_operators_only(client, live, media, monkeypatch):
    from django.core.cache import cache

    from tests.support.factories import UserFactory

    live_scores(live, 0, 5)
    (Path(media) / "media" / "blob.bin").write_bytes(b"x" * 2048)
    admin = UserFactory(username="boss")
    admin.is_superuser = True
    admin.is_staff = True
    admin.save()
    client.force_login(admin)
    page = client.get("/").content.decode()
    assert 'data-role="storage"' in page
    assert "5 raw scores" in page and "media not counted yet" in page
    # The prune counts the media; pages show its count and never walk MEDIA_ROOT themselves.
    retention.prune(pause_s=0)
    cache.clear()

    def no_walk(root: str) -> tuple[int, int]:
        raise AssertionError(f"a web request walked {root}")

    monkeypatch.setattr(retention, "_tree_bytes", no_walk)
    page = client.get("/").content.decode()
    assert "2.0\xa0KB in 1 files at the last prune" in page
    usage = retention.storage_usage()
    assert usage["media_bytes"] == 2048 and usage["media_files"] == 1
    assert usage["scores"] == 0 and usage["rollups"] == 1  # the 5 old scores, rolled up
    viewer = UserFactory(username="plain")
    client.force_login(viewer)
    assert 'data-role="storage"' not in client.get("/").content.decode()


# --- charts and exports over the pruned range ------------------------------------------------


def test_it_charts_and_exports_the_rolled_up_range(client, viewer):
    import csv
    import json

    from django.urls import reverse

    from detection.web.series import display_series

    analysis = AnalysisFactory(
        camera__viewers=[viewer], threshold=THRESHOLD, status=Analysis.Status.STOPPED
    )
    live_scores(analysis, 0, 120, days_ago=40)  # two minutes, rolled up
    live_scores(analysis, 120, 5, first_index=120, days_ago=1)  # still raw
    retention.prune(pause_s=0)
    series = display_series(analysis)
    assert (series["total"], series["rolled_up"], series["decimated"]) == (125, 120, False)
    rolled = [p for p in series["points"] if p.get("r")]
    assert [(p["i"], p["s"]) for p in rolled] == [(0, 0.0), (0, 0.9), (60, 0.0), (60, 0.9)]
    assert [p["i"] for p in series["points"] if not p.get("r")] == list(range(120, 125))
    assert series["peak"]["s"] == 0.9
    client.force_login(viewer)

    def body(response):
        return b"".join(response.streaming_content).decode()

    document = json.loads(body(client.get(reverse("detection:scores_json", args=[analysis.pk]))))
    assert [r["minute"] for r in document["rollups"]] == [0, 1]
    first = document["rollups"][0]
    assert (first["count"], first["min_score"], first["max_score"]) == (60, 0.0, 0.9)
    assert first["mean_score"] == pytest.approx(sum(_score(i) for i in range(60)) / 60)
    assert first["above"] == sum(1 for i in range(60) if _score(i) >= THRESHOLD)
    assert [s["frame_index"] for s in document["scores"]] == list(range(120, 125))
    url = reverse("detection:scores_csv", args=[analysis.pk]) + "?rollups=1"
    response = client.get(url)
    assert f'filename="analysis-{analysis.pk}-rollups.csv"' in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(body(response))))
    assert [(r["minute"], r["count"], r["first_frame_index"]) for r in rows] == [
        ("0", "60", "0"),
        ("1", "60", "60"),
    ]
