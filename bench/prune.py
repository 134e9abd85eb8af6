"""Prune benchmark: a simulated day of 12 cameras at 1 frame/s (1,036,800 scores) pruned
while a live path keeps storing, on whatever DATABASE_URL names (docs/performance.md).

    DATABASE_URL=sqlite:////tmp/prune.sqlite3 python manage.py migrate
    DATABASE_URL=sqlite:////tmp/prune.sqlite3 python -m bench.prune [--cameras 12] [--hours 24]

It EMPTIES the detection and camera tables of that database first: never point it at a
real one. The live path is a thread storing one score every 0.1 s the way
Recorder.store does (one transaction: the rows, then the analysis's summary); each store's
wall time is recorded, before and during the prune. Prints one JSON document.

`--worker` replaces that thread with the real thing: `manage.py run_detector` in its own
process (random ViT-B-32 weights, the same compute) scoring a live MJPEG camera served
from this process (tests/support/streams.py) at `--sampling-fps`, its own pruning off. A
watcher polls the newest stored score every 20 ms and records its lag (now minus its
capture time) before, during and after the prune, and counts the frames stored.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import timedelta


def _setup() -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    os.environ.setdefault("DETECTION_PRETRAINED", "none")
    import django

    django.setup()


def _sizes() -> dict[str, int]:
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_total_relation_size('detection_framescore'), "
                "pg_total_relation_size('detection_scorerollup'), "
                "pg_database_size(current_database())"
            )
            scores, rollups, database = cursor.fetchone()
        return {"framescore_bytes": scores, "rollup_bytes": rollups, "database_bytes": database}
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    name = str(connection.settings_dict["NAME"])
    return {"database_bytes": os.path.getsize(name)}


def _dead_tuples() -> dict[str, object] | None:
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT n_live_tup, n_dead_tup, last_autovacuum, autovacuum_count "
            "FROM pg_stat_user_tables WHERE relname = 'detection_framescore'"
        )
        live, dead, last, count = cursor.fetchone()
    return {"live": live, "dead": dead, "last_autovacuum": str(last), "autovacuums": count}


class LivePath(threading.Thread):
    """Stores one score every `every` s as the worker does; times each store."""

    def __init__(self, analysis_id: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.analysis_id = analysis_id
        self.every = every
        self.stop = threading.Event()
        self.samples: list[tuple[float, float]] = []  # (monotonic start, seconds)

    def run(self) -> None:
        from django.db import connection, transaction
        from django.utils import timezone

        from detection.models import Analysis, FrameScore

        index = 0
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                with transaction.atomic():
                    FrameScore.objects.bulk_create(
                        [
                            FrameScore(
                                analysis_id=self.analysis_id,
                                frame_index=index,
                                time_s=float(index),
                                captured_at=timezone.now(),
                                score=0.4,
                                normal_similarity=0.2,
                                anomaly_similarity=0.1,
                            )
                        ],
                        ignore_conflicts=True,
                    )
                    Analysis.objects.filter(pk=self.analysis_id).update(
                        last_frame_index=index, frames_scored=index + 1
                    )
                self.samples.append((started, time.monotonic() - started))
                index += 1
                time.sleep(self.every)
        finally:
            connection.close()

    def during(self, start: float, end: float) -> dict[str, float]:
        waits = sorted(s for t, s in self.samples if start <= t <= end)
        if not waits:
            return {"stores": 0}
        return {
            "stores": len(waits),
            "median_ms": round(statistics.median(waits) * 1000, 1),
            "p99_ms": round(waits[min(len(waits) - 1, int(len(waits) * 0.99))] * 1000, 1),
            "max_ms": round(waits[-1] * 1000, 1),
        }


class LagWatcher(threading.Thread):
    """Polls the newest score of one analysis; records (monotonic, lag s) per new score."""

    def __init__(self, analysis_id: int, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.analysis_id = analysis_id
        self.every = every
        self.stop = threading.Event()
        self.samples: list[tuple[float, float]] = []

    def run(self) -> None:
        from django.db import connection
        from django.utils import timezone

        from detection.models import FrameScore

        seen = None
        try:
            while not self.stop.is_set():
                row = (
                    FrameScore.objects.filter(analysis_id=self.analysis_id)
                    .order_by("-id")
                    .values_list("id", "captured_at")
                    .first()
                )
                if row is not None and row[0] != seen and row[1] is not None:
                    seen = row[0]
                    lag = (timezone.now() - row[1]).total_seconds()
                    self.samples.append((time.monotonic(), lag))
                time.sleep(self.every)
        finally:
            connection.close()

    def during(self, start: float, end: float) -> dict[str, float]:
        lags = sorted(s for t, s in self.samples if start <= t <= end)
        if not lags:
            return {"frames": 0}
        return {
            "frames": len(lags),
            "median_ms": round(statistics.median(lags) * 1000, 1),
            "p99_ms": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1000, 1),
            "max_ms": round(lags[-1] * 1000, 1),
        }


def _start_worker(camera_url: str) -> subprocess.Popen[bytes]:
    """`manage.py run_detector` on this database, pruning off, loopback cameras allowed."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "DETECTION_PRETRAINED": "none",
        "DETECTION_MODEL": os.environ.get("BENCH_PRUNE_MODEL", "ViT-B-32"),
        "DETECTION_CAMERA_ALLOWED_NETWORKS": "127.0.0.0/8",
        "DETECTION_PRUNE_INTERVAL_MINUTES": "0",
        "DETECTION_METRICS_PORT": "0",
    }
    return subprocess.Popen(
        [sys.executable, os.path.join(root, "manage.py"), "run_detector"],
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", type=int, default=12)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--pause", type=float, default=None)
    parser.add_argument(
        "--autovacuum",
        type=float,
        default=0,
        metavar="SECONDS",
        help="PostgreSQL: wait up to this long for autovacuum instead of running VACUUM",
    )
    parser.add_argument(
        "--worker", action="store_true", help="a real worker on a live camera, not a thread"
    )
    parser.add_argument("--sampling-fps", type=float, default=2.0)
    args = parser.parse_args()
    _setup()
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from cameras.models import Camera
    from detection import retention
    from detection.models import Analysis, FrameScore, MaintenanceLease, ScoreRollup

    for model in (ScoreRollup, FrameScore, Analysis, Camera, MaintenanceLease):
        model.objects.all()._raw_delete(connection.alias)
    settings.DETECTION_RETENTION_DAYS = 1
    settings.DETECTION_ROLLUP_RETENTION_DAYS = 0
    settings.DETECTION_INCIDENT_RETENTION_DAYS = 0
    seconds = int(args.hours * 3600)
    day_ago = timezone.now() - timedelta(days=2)
    analyses = []
    for n in range(args.cameras + 1):
        camera = Camera.objects.create(
            name=f"bench {n}", kind=Camera.Kind.STREAM, source=f"rtsp://10.9.0.{n}/s"
        )
        analyses.append(
            Analysis.objects.create(
                camera=camera,
                name=f"bench {n}",
                normal_prompts="a street",
                anomaly_prompts="a fire",
                status=Analysis.Status.RUNNING,
            )
        )
    live, old = analyses[0], analyses[1:]
    server = worker = None
    if args.worker:
        from tests.support.streams import MJPEGServer

        server = MJPEGServer(fps=10).start()
        Camera.objects.filter(pk=live.camera_id).update(source=server.url)
        Analysis.objects.filter(pk=live.pk).update(
            status=Analysis.Status.QUEUED, sampling_fps=args.sampling_fps
        )
    started = time.monotonic()
    chunk = 20_000
    for analysis in old:
        for first in range(0, seconds, chunk):
            FrameScore.objects.bulk_create(
                FrameScore(
                    analysis=analysis,
                    frame_index=i,
                    time_s=float(i),
                    captured_at=day_ago + timedelta(seconds=i),
                    score=(i % 97) / 97,
                    normal_similarity=0.2,
                    anomaly_similarity=0.1,
                )
                for i in range(first, min(seconds, first + chunk))
            )
    insert_s = time.monotonic() - started
    rows = FrameScore.objects.count()
    before = _sizes()
    path: LivePath | LagWatcher
    if server is not None:
        path = LagWatcher(live.pk)
        worker = _start_worker(server.url)
        path.start()
        deadline = time.monotonic() + 300
        while len(path.samples) < 3:  # the model loads and the camera opens first
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit("bench.prune: the worker stored no score (is the port free?)")
            time.sleep(0.5)
    else:
        path = LivePath(live.pk)
        path.start()
    time.sleep(5 if server is None else 10)  # the live path on its own, for comparison
    t0 = time.monotonic()
    report = retention.prune(
        batch_rows=args.batch_size,
        pause_s=retention.PAUSE_S if args.pause is None else args.pause,
    )
    t1 = time.monotonic()
    time.sleep(2 if server is None else 10)
    t2 = time.monotonic()
    path.stop.set()
    path.join()
    if worker is not None:
        worker.terminate()
        worker.wait(30)
    if server is not None:
        server.stop()
    after = _sizes()
    dead = _dead_tuples()
    started = time.monotonic()
    if args.autovacuum and connection.vendor == "postgresql":
        while time.monotonic() - started < args.autovacuum:
            if (_dead_tuples() or {}).get("autovacuums"):
                break
            time.sleep(2)
        dead_later = _dead_tuples()
    else:
        dead_later = None
        with connection.cursor() as cursor:
            cursor.execute("VACUUM")
    vacuum_s = time.monotonic() - started
    vacuumed = _sizes()
    result = {
        "vendor": connection.vendor,
        "rows": rows,
        "insert_s": round(insert_s, 1),
        "prune_s": round(report.seconds, 1),
        "batches": report.batches,
        "rollups": ScoreRollup.objects.count(),
        "scores_left": FrameScore.objects.count(),
        "live": "worker: capture-to-stored lag" if args.worker else "thread: store time",
        "store_before_prune": path.during(t0 - (5 if server is None else 10), t0),
        "store_during_prune": path.during(t0, t1),
        "store_after_prune": path.during(t1, t2),
        "load_average": os.getloadavg(),
        "size_before": before,
        "size_after_prune": after,
        "dead_tuples_after_prune": dead,
        "dead_tuples_later": dead_later,
        "vacuum_s": round(vacuum_s, 1),
        "size_after_vacuum": vacuumed,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
