"""Database faults under the worker: a busy SQLite file and a PostgreSQL restart.

- SQLite: the portal (a real daphne process) takes logged-in writes (acknowledgements, admin
  change forms) while a real `run_detector` stores at full rate into the same file; nobody
  sees "database is locked" and nothing is lost.
- SQLite, in process: a lock held past the busy timeout makes a store fail; the worker
  keeps the scored frames, reconnects and stores them: nothing lost, nothing re-scored.
- PostgreSQL: a private cluster (initdb in a temporary directory, its own port) first drops
  the running worker's connection, then goes down for two seconds and comes back; the
  worker reconnects by itself each time and completes the analysis with every frame stored
  once.

"Re-scored" is measured, not guessed: the worker's stop line says how many frames went
through the model and how many it stored; with each sampled frame stored exactly once,
frames scored minus frames in the database is the number scored twice.
"""

from __future__ import annotations

import glob
import http.cookiejar
import json
import logging
import os
import pwd
import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import User
from django.db import OperationalError, connection
from django.utils import timezone

from detection.models import Analysis, Incident
from detection.worker.loop import Worker
from tests.support.model import TinyModel
from tests.support.processes import python, start_daphne, start_worker, stop
from tests.support.streams import free_port, wait_for_port
from tests.support.waiting import wait_until
from tests.support.worker import RecordingPublisher, expected_indices, file_analysis

pytestmark = pytest.mark.usefixtures("tiny_settings")

STOP_LINE = re.compile(r"stopped: (\d+) frames scored, (\d+) stored")
KEPT_LINE = re.compile(
    r"database unavailable \((.*?)\); (\d+) scored frames kept .*\(attempt (\d+)\)"
)
BACK_LINE = re.compile(r"database reachable again after ([\d.]+) s \((\d+) failed attempts\)")


# --- A browser's worth of HTTP: cookies, CSRF, forms -----------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a 302 is an answer to check, not to follow


class Browser:
    """Cookies (session, CSRF) and plain requests against one server, no redirects."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies), _NoRedirect()
        )

    def request(
        self, path: str, data: list[tuple[str, str]] | None = None, **headers: str
    ) -> tuple[int, str, dict[str, str]]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        if body is not None:
            headers = {"X-CSRFToken": self.csrf_token(), "Referer": self.base + path, **headers}
        req = urllib.request.Request(self.base + path, data=body, headers=headers)
        try:
            with self.opener.open(req, timeout=30) as response:
                return response.status, response.read().decode(), dict(response.headers)
        except urllib.error.HTTPError as error:  # 3xx/4xx/5xx: the status is the answer
            return error.code, error.read().decode(errors="replace"), dict(error.headers)

    def csrf_token(self) -> str:
        return next((c.value for c in self.cookies if c.name == "csrftoken"), "")

    def login(self, username: str, password: str) -> None:
        status, _, _ = self.request("/accounts/login/")
        assert status == 200, f"login page answered {status}"
        status, body, _ = self.request(
            "/accounts/login/",
            [
                ("username", username),
                ("password", password),
                ("csrfmiddlewaretoken", self.csrf_token()),
            ],
        )
        assert status == 302, f"login failed ({status}): {body[:500]}"

    def save_admin_form(self, path: str, form_id: str, **changes: str) -> None:
        """GET an admin change form, change some fields, POST it as a browser would."""
        status, body, _ = self.request(path)
        assert status == 200, f"GET {path} answered {status}"
        fields = FormFields.parse(body, form_id)
        names = {name for name, _ in fields}
        assert set(changes) <= names, f"{sorted(set(changes) - names)} not in {form_id}"
        data = [(n, changes.get(n, v)) for n, v in fields] + [("_save", "Save")]
        status, body, headers = self.request(path, data)
        # Saved: a redirect to the changelist. A form error comes back as 200 with the form.
        assert status == 302, f"POST {path} answered {status}: {_errors(body)}"
        changelist = path.rsplit("/", 3)[0] + "/"  # .../camera/5/change/ -> .../camera/
        assert headers.get("Location", "").split("?")[0] == changelist, headers


def _errors(html: str) -> str:
    found = re.findall(r'class="errorlist[^"]*"[^>]*>(.*?)</ul>', html, re.S)
    return " | ".join(re.sub(r"<[^>]+>", " ", e).strip() for e in found) or html[:300]


class FormFields(HTMLParser):
    """The (name, value) pairs a browser submits for the form with a given id."""

    def __init__(self, form_id: str) -> None:
        super().__init__(convert_charrefs=True)
        self.form_id = form_id
        self.inside = False
        self.fields: list[tuple[str, str]] = []
        self._select: tuple[str, bool] | None = None  # (name, multiple)
        self._select_first: str | None = None
        self._select_chosen = False
        self._textarea: str | None = None
        self._text: list[str] = []

    @classmethod
    def parse(cls, html: str, form_id: str) -> list[tuple[str, str]]:
        parser = cls(form_id)
        parser.feed(html)
        parser.close()
        assert parser.fields, f"no form {form_id!r} in the page"
        return parser.fields

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.inside = a.get("id") == self.form_id
            return
        name = a.get("name")
        if not self.inside or "disabled" in a:
            return
        if tag == "input" and name:
            kind = (a.get("type") or "text").lower()
            if kind in ("submit", "button", "image", "file", "reset"):
                return
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            self.fields.append((name, a.get("value") or ("on" if kind == "checkbox" else "")))
        elif tag == "select" and name:
            self._select = (name, "multiple" in a)
            self._select_first, self._select_chosen = None, False
        elif tag == "option" and self._select:
            value = a.get("value") or ""
            if self._select_first is None:
                self._select_first = value
            if "selected" in a:
                self.fields.append((self._select[0], value))
                self._select_chosen = True
        elif tag == "textarea" and name:
            self._textarea, self._text = name, []

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select" and self._select:
            name, multiple = self._select
            # A single select with nothing marked submits its first option.
            if not multiple and not self._select_chosen and self._select_first is not None:
                self.fields.append((name, self._select_first))
            self._select = None
        elif tag == "textarea" and self._textarea:
            text = "".join(self._text)
            # Browsers drop the newline right after <textarea>; Django's widget writes one.
            self.fields.append((self._textarea, text[1:] if text.startswith("\n") else text))
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self._text.append(data)


# --- Processes ---------------------------------------------------------------------------


def stop_line(log: str) -> tuple[int, int]:
    """(frames scored, frames stored) from the worker's last words."""
    found = STOP_LINE.search(log)
    assert found, f"no stop line in the worker's log:\n{log[-3000:]}"
    return int(found[1]), int(found[2])


# --- 20: SQLite under concurrent portal writes -----------------------------------------

PASSWORD = "a-long-test-password-42"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_takes_portal_writes_while_the_worker_stores_at_full_rate_on_sqlite(
    media, make_video, subprocess_env, tmp_path
):
    assert connection.vendor == "sqlite"
    # Every frame scored, two per transaction: the worker commits as often as it can.
    frames, fps = 120, 25.0
    analysis = file_analysis(make_video("busy.avi", frames=frames, fps=fps), sampling_fps=fps)
    # The portal checks passwords with its own hashers (PBKDF2), not the tests' fast MD5.
    admin = User.objects.create(
        username="admin",
        is_staff=True,
        is_superuser=True,
        password=PBKDF2PasswordHasher().encode(PASSWORD, "fixedsalt"),
    )
    archive = file_analysis(make_video("archive.avi", frames=10), status="completed")
    now = timezone.now()
    Incident.objects.bulk_create(
        Incident(analysis=archive, start_time_s=i, started_at=now, peak_score=0.9, peak_time_s=i)
        for i in range(1000)
    )
    to_acknowledge = iter(Incident.objects.filter(analysis=archive).order_by("pk"))

    port = free_port()
    portal_log = tmp_path / "portal.log"
    portal = start_daphne(subprocess_env, port, portal_log)
    worker = None
    writes = overlapped = 0
    iterations: list[float] = []  # seconds per round of 3 writes (+ 2 form GETs, 3 checks)
    try:
        wait_for_port(port)
        browser = Browser(f"http://127.0.0.1:{port}")
        browser.login("admin", PASSWORD)
        worker = start_worker(subprocess_env, "--once", "--batch-size", "2")
        wait_until(lambda: analysis.scores.exists(), 120, "a first stored score", every=0.1)
        camera_form = f"/admin/cameras/camera/{analysis.camera_id}/change/"
        analysis_form = f"/admin/detection/analysis/{analysis.pk}/change/"
        run_started = time.monotonic()
        while worker.poll() is None:
            iteration_started = time.monotonic()
            incident = next(to_acknowledge)
            status, body, _ = browser.request(
                f"/incidents/{incident.pk}/acknowledge/", [], Accept="application/json"
            )
            assert status == 200 and json.loads(body)["changed"] is True, (status, body)
            name = f"Busy camera {writes}"
            browser.save_admin_form(camera_form, "camera_form", name=name)
            threshold = 0.6 if writes % 2 else 0.65
            browser.save_admin_form(analysis_form, "analysis_form", threshold=str(threshold))
            # Each write is in the database, not just answered.
            incident.refresh_from_db()
            analysis.camera.refresh_from_db()
            assert incident.acknowledged_by_id == admin.pk and incident.acknowledged_at
            assert analysis.camera.name == name
            assert Analysis.objects.get(pk=analysis.pk).threshold == threshold
            writes += 3
            iterations.append(time.monotonic() - iteration_started)
            if worker.poll() is None:
                overlapped += 3
        out, _ = worker.communicate(timeout=60)
        run_s = time.monotonic() - run_started
    finally:
        if worker is not None:
            stop(worker)
        stop(portal)
    portal_out = portal_log.read_text()

    assert worker.returncode == 0, out
    # Writes landed while the worker was storing, not after it.
    assert overlapped >= 15, f"only {overlapped} writes overlapped the worker's run"
    for name, log in (("worker", out), ("portal", portal_out)):
        assert "database is locked" not in log, f"{name} log:\n{log[-3000:]}"
        assert "Traceback" not in log, f"{name} log:\n{log[-3000:]}"
    assert "database unavailable" not in out, out  # no store even needed a retry
    analysis.refresh_from_db()
    stored = list(analysis.scores.values_list("frame_index", flat=True))
    assert analysis.status == "completed" and analysis.lease_owner == ""
    assert stored == expected_indices(frames, fps, fps)
    # The admin saves whole rows: none wrote a stale status or summary over the worker's.
    assert analysis.frames_scored == len(stored) and analysis.last_frame_index == stored[-1]
    scored, _ = stop_line(out)
    assert scored == len(stored)
    assert Incident.objects.filter(analysis=archive, acknowledged_at__isnull=False).count() == (
        writes // 3
    )
    iterations.sort()
    median, slowest = iterations[len(iterations) // 2], iterations[-1]
    print(
        f"\n{writes} portal writes ({overlapped} during the run) in {run_s:.1f} s, "
        f"{len(stored)} frames stored; a round of 3 writes took {median:.3f} s (median), "
        f"{slowest:.3f} s (max)"
    )


@pytest.mark.django_db
def test_it_keeps_an_acknowledgement_made_while_the_incident_is_open(media, make_video):
    import numpy as np

    from detection import actions
    from detection.live.publisher import NullPublisher
    from detection.worker.recording import Recorder, ScoredItem

    analysis = file_analysis(make_video("ack.avi"), incident_open_frames=1, smoothing_window=1)
    operator = User.objects.create(username="operator")
    recorder = Recorder(analysis, NullPublisher())
    image = np.zeros((48, 64, 3), np.uint8)

    def store(index: int, score: float) -> None:
        recorder.store([ScoredItem(index, index / 10, None, score, 0.1, 0.2, image)])

    store(0, 0.9)  # opens the incident
    incident = Incident.objects.get(analysis=analysis)
    actions.acknowledge(Incident.objects.filter(pk=incident.pk), operator)
    store(1, 0.95)  # a new peak: the worker saves the incident (and its thumbnail) again
    incident.refresh_from_db()
    assert incident.peak_score == pytest.approx(0.95) and incident.thumbnail
    assert incident.acknowledged_by == operator and incident.acknowledged_at is not None


# --- SQLite: a lock held past the busy timeout ----------------------------------------


class _Locker:
    """Another process's long write transaction, as a raw SQLite connection holds it."""

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self.db: sqlite3.Connection | None = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False
        )
        self.db.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        """Roll back and close; safe to call again (a timer and the test's cleanup)."""
        with self._lock:
            if self.db is not None:
                self.db.execute("ROLLBACK")
                self.db.close()
                self.db = None


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_keeps_scored_frames_through_a_locked_sqlite_database(media, make_video, caplog):
    caplog.set_level(logging.INFO, logger="detection.worker.loop")
    # Every frame anomalous: the incident opens on the third frame, in the batch that
    # fails first. Fed twice, the tracker would never report it opening.
    analysis = file_analysis(
        make_video("locked.avi", frames=60, fps=10.0), threshold=0.0001, incident_open_frames=3
    )
    w = Worker(publisher=RecordingPublisher(), poll_seconds=0.05, once=True, batch_size=2)
    w.claim_step()
    w.score_step(w.gather_step())
    assert analysis.scores.count() == 2
    # Fail fast on the lock for this one attempt (the setting waits 20 s).
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA busy_timeout = 100")
    locker = _Locker(connection.settings_dict["NAME"])
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            w.score_step(w.gather_step())
        assert [len(items) for _, items in w.unstored] == [2]
        assert (w.frames_scored, analysis.scores.count()) == (4, 2)
        # The lock outlives the next attempt too, then goes; run() must ride it out.
        threading.Timer(1.5, locker.release).start()
        started = time.monotonic()
        w.run()
        recovered_in = time.monotonic() - started
    finally:
        locker.release()
    analysis.refresh_from_db()
    stored = list(analysis.scores.values_list("frame_index", flat=True))
    assert stored == expected_indices(60, 10.0, 1.0)
    assert analysis.status == "completed" and analysis.frames_scored == len(stored)
    assert w.frames_scored == len(stored)  # nothing went through the model twice
    incident = Incident.objects.get(analysis=analysis)
    assert (incident.start_time_s, incident.end_time_s) == (0.0, 6.0)
    messages = [r.getMessage() for r in caplog.records]
    assert any("database is locked" in m and "2 scored frames kept" in m for m in messages)
    assert any(BACK_LINE.search(m) for m in messages), messages
    assert recovered_in < 10


@pytest.mark.django_db(transaction=True)
def test_it_stops_without_a_traceback_while_the_database_is_locked(media, make_video, caplog):
    caplog.set_level(logging.INFO, logger="detection.worker.loop")
    analysis = file_analysis(make_video("stopping.avi", frames=60, fps=10.0))
    w = Worker(publisher=RecordingPublisher(), poll_seconds=0.05, once=True, batch_size=2)
    w.claim_step()
    w.score_step(w.gather_step())
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA busy_timeout = 100")
    locker = _Locker(connection.settings_dict["NAME"])
    try:
        w.shutdown()  # what SIGTERM leads to: it must not raise, and must let go of the files
    finally:
        locker.release()
    assert w.jobs == {}
    assert any("database unavailable while stopping" in r.getMessage() for r in caplog.records)
    analysis.refresh_from_db()
    # The lease could not be released: it lapses, and another worker resumes after frame 10.
    assert (analysis.status, analysis.lease_owner) == ("running", w.owner)
    assert list(analysis.scores.values_list("frame_index", flat=True)) == [0, 10]


@pytest.mark.django_db
def test_it_takes_back_a_claim_it_could_not_start(media, make_video):
    analysis = file_analysis(make_video("orphan.avi"))
    w = Worker(publisher=RecordingPublisher(), poll_seconds=0.05, once=True)
    other = Worker(publisher=RecordingPublisher(), poll_seconds=0.05, once=True)
    assert w.claim_step()
    # As if the database went away between the claim's commit and starting the job.
    w.jobs.pop(analysis.pk).close()
    assert other.claim_step() is False  # still our lease: nobody else may take it
    assert w.claim_step() is True and list(w.jobs) == [analysis.pk]
    w.shutdown()


# --- 21: PostgreSQL restarted under the worker ----------------------------------------


def _postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", path))


def _skip_reason() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (the postgres extra)"
    if _postgres_bindir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root needs runuser to start PostgreSQL as its own user"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root needs a 'postgres' OS user to own the cluster"
    return None


class PrivatePostgres:
    """A throwaway cluster: its own directory, port and socket; fsync off (tests only)."""

    def __init__(self, bindir: Path, port: int) -> None:
        self.bindir, self.port = bindir, port
        # Under /tmp itself: pytest's own tmp dirs are private to root, and initdb refuses
        # to run as root, so the cluster's user must be able to reach its directory.
        self.root = Path(tempfile.mkdtemp(prefix="clipwatch-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.url = f"postgres://postgres@127.0.0.1:{port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 90) -> None:
        command = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{tool} {args[:1]} failed: {done.stderr}\n{self.server_log()}"

    def server_log(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def start(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        """Fast shutdown: every client is disconnected (a restart, a failover)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def start_again(self) -> None:
        """Start with the options of the first start (pg_ctl keeps them in postmaster.opts)."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "restart")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except AssertionError:
                pass  # already down; the directory goes anyway
        shutil.rmtree(self.root, ignore_errors=True)

    def query(self, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as db:
            return db.execute(sql).fetchall()


MIGRATE_AND_SEED = """
import json, sys
from django.core.management import call_command
call_command("migrate", interactive=False, verbosity=0)
from cameras.models import Camera
from detection.models import Analysis
cam = Camera.objects.create(name="restart", kind="file", source=sys.argv[1])
a = Analysis.objects.create(camera=cam, name="restart", normal_prompts="a street",
                            anomaly_prompts="a fire", sampling_fps=float(sys.argv[2]),
                            status="queued")
print(json.dumps(a.pk))
"""


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_it_reconnects_after_a_postgres_restart_and_loses_nothing(
    make_video, tiny_model: TinyModel, tmp_path
):
    bindir = _postgres_bindir()
    assert bindir is not None
    server = PrivatePostgres(bindir, free_port())
    frames, fps, batch = 400, 25.0, 4
    down_s = 2.0  # the server stays down this long: the worker's retries meet a refusal
    phases: dict[str, float] = {}
    worker = None
    try:
        started = time.monotonic()
        server.start()
        env = {
            **tiny_model.env,
            "DATABASE_URL": server.url,
            "DETECTION_VIDEO_DIRS": str(tmp_path),
            "MEDIA_ROOT": str(tmp_path / "media"),
            "DJANGO_LOG_LEVEL": "INFO",
        }
        phases["initdb+start"] = time.monotonic() - started
        clip = make_video("restart.avi", frames=frames, fps=fps)
        pk = json.loads(python(env, MIGRATE_AND_SEED, str(clip), str(fps)))
        phases["migrate+seed"] = time.monotonic() - started - phases["initdb+start"]

        def stored() -> int:
            count = f"SELECT count(*) FROM detection_framescore WHERE analysis_id = {pk}"
            return server.query(count)[0][0]

        # A long poll keeps one connection for the whole run (each claim step would close
        # and reopen it), so both faults below break a connection the worker holds.
        worker = start_worker(env, "--once", "--batch-size", str(batch), "--poll", "60")
        run_started = time.monotonic()
        wait_until(lambda: stored() >= 40, 120, "40 stored scores", every=0.1)
        # First fault: the server stays up but drops the worker's connection (an
        # administrator, a proxy, an idle timeout).
        terminated = server.query(
            "SELECT count(*) FROM pg_stat_activity, pg_terminate_backend(pid) "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )[0][0]
        assert terminated >= 1
        resumed_from = stored()
        wait_until(lambda: stored() >= resumed_from + 40, 120, "40 more stored scores", every=0.1)
        # Second fault: the server goes down for a while and comes back.
        at_stop = stored()
        stopped_at = time.monotonic()
        server.stop()
        time.sleep(down_s)  # downtime, not a wait for a condition
        server.start_again()
        phases["down"] = time.monotonic() - stopped_at
        out, _ = worker.communicate(timeout=120)
        phases["worker run"] = time.monotonic() - run_started
        rows = server.query(
            f"SELECT frame_index FROM detection_framescore WHERE analysis_id = {pk} "
            "ORDER BY frame_index"
        )
        status, owner, expires, counted = server.query(
            "SELECT status, lease_owner, lease_expires_at, frames_scored "
            f"FROM detection_analysis WHERE id = {pk}"
        )[0]
    finally:
        if worker is not None:
            stop(worker)
        server.destroy()

    assert worker.returncode == 0, out
    assert "Traceback" not in out, out
    expected = expected_indices(frames, fps, fps)
    assert at_stop < len(expected), "the worker finished before the restart: nothing tested"
    # Both faults hit the worker, which retried while the server was down and came back
    # by itself each time: the lost connection at once, the server once it was up.
    outages = KEPT_LINE.findall(out)
    backs = BACK_LINE.findall(out)
    assert len(backs) == 2, f"expected two outages and recoveries in the worker's log:\n{out}"
    errors = [error for error, _, _ in outages]
    # Each outage began on the connection the worker held (the server closed it)...
    firsts = [error for error, _, attempt in outages if attempt == "1"]
    assert len(firsts) == 2, errors
    assert all(re.search("administrator command|closed the connection", e) for e in firsts)
    assert any("Connection refused" in e for e in errors), errors  # ...then retries while down
    recovered_s = float(backs[1][0])
    assert recovered_s < phases["down"] + 2 * down_s + 1, f"slow to notice the server: {out}"
    # Every frame index stored exactly once (the unique key would hide duplicates in the
    # table, so the worker's own counters are checked against it below).
    assert [r[0] for r in rows] == expected
    assert (status, owner, expires) == ("completed", "", None)
    assert counted == len(expected)
    scored, stored_by_worker = stop_line(out)
    rescored = scored - len(expected)
    kept = max(int(n) for _, n, _ in outages)
    assert 0 <= rescored <= batch, f"{rescored} frames scored twice"
    assert kept <= batch and stored_by_worker == len(expected)
    print(
        f"\nconnection terminated: back after {backs[0][0]} s ({backs[0][1]} failed attempt); "
        f"server down {phases['down']:.1f} s (stop, {down_s:.0f} s, start): back "
        f"{recovered_s:.1f} s after the first failure ({backs[1][1]} failed attempts); "
        f"errors: {' | '.join(errors)}; at most {kept} scored frames kept across an outage; "
        f"{rescored} re-scored; {len(expected)} frames stored once each; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
    )
