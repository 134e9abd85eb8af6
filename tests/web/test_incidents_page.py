"""The incidents page across cameras, and incident clips served with Range support.

The clips here are real H.264 files (detection.engine.clip) written at the path the worker
uses; tests/worker/test_clips.py has the worker write them.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import cv2
import pytest
from django.core.files.base import ContentFile
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from detection.engine.clip import ClipWriter
from detection.frames import incident_clip_path
from detection.models import Incident
from tests.support.factories import AnalysisFactory, CameraFactory, IncidentFactory, UserFactory
from tests.support.html import parse
from tests.support.media import scene
from tests.support.sessions import client_for, session_key

pytestmark = pytest.mark.django_db

PAGE = "/incidents/"


def write_clip(incident: Incident, seconds: float = 4.0) -> Path:
    path = incident_clip_path(incident.pk)
    writer = ClipWriter(path, fps=5)
    for i in range(round(seconds * 5)):
        writer.add(scene(180, 320, seed=3, t=i / 5), i / 5)
    writer.finish()
    return path


@pytest.fixture
def gate(analysis, media) -> Incident:
    """An incident of the `analysis` fixture (camera "Gate", shared with `viewer`), with a clip."""
    incident = IncidentFactory(analysis=analysis)
    write_clip(incident)
    return incident


# --- the clip view ---------------------------------------------------------------------------


def clip_get(client: Client, incident: Incident, **headers: str):
    return client.get(reverse("detection:incident_clip", args=[incident.pk]), headers=headers)


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def test_it_serves_the_whole_clip_with_accept_ranges_and_private_caching(gate, logged_in):
    response = clip_get(logged_in, gate)
    data = incident_clip_path(gate.pk).read_bytes()
    assert response.status_code == 200 and body(response) == data
    assert response["Content-Type"] == "video/mp4"
    assert response["Accept-Ranges"] == "bytes"
    assert response["Cache-Control"] == "private, no-cache"
    assert response["ETag"] and response["Last-Modified"]


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [("bytes=0-99", 0, 99), ("bytes=100-", 100, None), ("bytes=-50", None, None)],
)
def test_it_answers_a_byte_range_with_206(gate, logged_in, header, first, last):
    data = incident_clip_path(gate.pk).read_bytes()
    size = len(data)
    first = size - 50 if first is None else first
    last = size - 1 if last is None else last
    response = clip_get(logged_in, gate, range=header)
    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes {first}-{last}/{size}"
    assert response["Content-Length"] == str(last - first + 1)
    assert body(response) == data[first : last + 1]


def test_it_clamps_a_range_past_the_end_and_refuses_one_that_starts_there(gate, logged_in):
    size = incident_clip_path(gate.pk).stat().st_size
    clamped = clip_get(logged_in, gate, range=f"bytes={size - 10}-{size + 1000}")
    assert clamped.status_code == 206 and len(body(clamped)) == 10
    refused = clip_get(logged_in, gate, range=f"bytes={size}-")
    assert refused.status_code == 416 and refused["Content-Range"] == f"bytes */{size}"


@pytest.mark.parametrize("header", ["bytes=5-2", "items=0-10", "bytes=0-1,5-9", "bytes=x-"])
def test_it_ignores_a_range_it_does_not_understand(gate, logged_in, header):
    response = clip_get(logged_in, gate, range=header)
    assert response.status_code == 200
    assert body(response) == incident_clip_path(gate.pk).read_bytes()


def test_it_revalidates_with_the_etag_and_drops_a_stale_if_range(gate, logged_in):
    etag = clip_get(logged_in, gate)["ETag"]
    assert clip_get(logged_in, gate, if_none_match=etag).status_code == 304
    assert clip_get(logged_in, gate, range="bytes=0-9", if_range=etag).status_code == 206
    stale = clip_get(logged_in, gate, range="bytes=0-9", if_range='"old"')
    assert stale.status_code == 200


def test_it_answers_404_to_other_users_and_asks_anonymous_ones_to_log_in(gate, stranger):
    assert clip_get(client_for(stranger), gate).status_code == 404
    anonymous = clip_get(Client(), gate)
    assert anonymous.status_code == 302 and reverse("login") in anonymous["Location"]


def test_it_answers_404_without_a_clip(analysis, media, logged_in):
    incident = IncidentFactory(analysis=analysis)
    assert incident.clip_url is None
    assert clip_get(logged_in, incident).status_code == 404


# --- the page --------------------------------------------------------------------------------


def rows(response) -> list[int]:
    assert response.status_code == 200, response.status_code
    html = parse(response.content.decode())
    return [int(tr["data-incident-id"]) for tr in html.find_all("tr", data_incident_id=True)]


@pytest.fixture
def spread(analysis, viewer, media):
    """Incidents on two cameras `viewer` may see, and one on a camera hidden from them."""
    now = timezone.now()
    yard = AnalysisFactory(camera__viewers=[viewer], camera__name="Yard")
    hidden = AnalysisFactory(camera__name="Vault")
    made = {
        "gate_open": IncidentFactory(
            analysis=analysis, end_time_s=None, started_at=now - dt.timedelta(hours=1)
        ),
        "gate_ack": IncidentFactory(
            analysis=analysis,
            acknowledged_by=viewer,
            acknowledged_at=now,
            started_at=now - dt.timedelta(days=3),
        ),
        "yard_false": IncidentFactory(
            analysis=yard, feedback="false_alarm", started_at=now - dt.timedelta(days=1)
        ),
        "yard_confirmed": IncidentFactory(
            analysis=yard, feedback="confirmed", started_at=now - dt.timedelta(days=10)
        ),
        "vault": IncidentFactory(analysis=hidden, started_at=now),
    }
    return {name: incident.pk for name, incident in made.items()}


def test_it_lists_the_visible_incidents_newest_first_with_their_details(spread, logged_in):
    assert rows(logged_in.get(PAGE)) == [
        spread["gate_open"],
        spread["yard_false"],
        spread["gate_ack"],
        spread["yard_confirmed"],
    ]
    html = parse(logged_in.get(PAGE).content.decode())
    offered = [o.text for o in html.one("select", name="camera").find_all("option")]
    assert offered == ["All cameras", "Gate", "Yard"]  # never the hidden "Vault"
    nav = [a["href"] for a in html.one("header").find_all("a")]
    assert PAGE in nav


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state=open", ["gate_open"]),
        ("state=unacknowledged", ["gate_open", "yard_false", "yard_confirmed"]),
        ("state=acknowledged", ["gate_ack"]),
        ("state=false_alarm", ["yard_false"]),
        ("state=confirmed", ["yard_confirmed"]),
    ],
)
def test_it_filters_by_state(spread, logged_in, query, expected):
    assert rows(logged_in.get(f"{PAGE}?{query}")) == [spread[n] for n in expected]


def test_it_filters_by_camera_and_date(spread, logged_in):
    from cameras.models import Camera

    yard = Camera.objects.get(name="Yard").pk
    assert rows(logged_in.get(f"{PAGE}?camera={yard}")) == [
        spread["yard_false"],
        spread["yard_confirmed"],
    ]
    today = timezone.localdate()
    since = (today - dt.timedelta(days=4)).isoformat()
    until = (today - dt.timedelta(days=2)).isoformat()
    assert rows(logged_in.get(f"{PAGE}?since={since}&until={until}")) == [spread["gate_ack"]]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("camera=999999", "not shared with you"),
        ("camera=abc", "not shared with you"),
        ("state=sleeping", "Select a valid choice"),
        ("since=yesterday", "Enter a valid date"),
        ("since=2024-05-02&until=2024-05-01", "end date is before the start date"),
        ("page=banana", None),
    ],
)
def test_it_explains_bad_filters_instead_of_failing(spread, logged_in, query, message):
    response = logged_in.get(f"{PAGE}?{query}")
    assert response.status_code == 200
    if message:
        alert = parse(response.content.decode()).one(role="alert")
        assert message in alert.text


def test_it_does_not_filter_by_a_camera_the_user_may_not_see(spread, logged_in):
    from cameras.models import Camera

    vault = Camera.objects.get(name="Vault").pk
    response = logged_in.get(f"{PAGE}?camera={vault}")
    assert spread["vault"] not in rows(response)
    assert "not shared with you" in response.content.decode()


def test_it_paginates_and_keeps_the_filters_in_the_pager(analysis, logged_in, media):
    for i in range(30):
        IncidentFactory(analysis=analysis, started_at=timezone.now() - dt.timedelta(minutes=i))
    first = logged_in.get(f"{PAGE}?state=unacknowledged")
    assert len(rows(first)) == 25
    pager = [
        a["href"] for a in parse(first.content.decode()).one("nav", class_="pager").find_all("a")
    ]
    assert "?state=unacknowledged&page=2" in pager
    assert len(rows(logged_in.get(f"{PAGE}?state=unacknowledged&page=2"))) == 5


def test_it_runs_the_same_number_of_queries_for_3_or_25_incidents(
    analysis, viewer, logged_in, media
):
    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert logged_in.get(PAGE).status_code == 200
        return len(queries)

    other = UserFactory(username="acker")
    for _ in range(3):
        IncidentFactory(analysis=analysis, acknowledged_by=other, acknowledged_at=timezone.now())
    few = count()
    for _ in range(22):
        yard = AnalysisFactory(camera__viewers=[viewer])
        IncidentFactory(
            analysis=yard, feedback="confirmed", feedback_by=other, acknowledged_by=other
        )
    assert count() == few


def test_it_shows_the_clip_with_the_thumbnail_as_poster_when_there_is_one(gate, logged_in):
    html = parse(logged_in.get(PAGE).content.decode())
    video = html.one("tr", data_incident_id=str(gate.pk)).one("video")
    assert video["src"] == gate.clip_url and video["preload"] == "none"
    assert "controls" in video.attrs


@pytest.mark.parametrize("action", ["acknowledge", "false_alarm", "confirm"])
def test_it_acts_and_comes_back_to_the_filtered_page(spread, logged_in, action):
    from cameras.models import Camera

    yard = Camera.objects.get(name="Yard").pk
    here = f"{PAGE}?camera={yard}&state=unacknowledged"
    page = parse(logged_in.get(here).content.decode())
    pk = spread["yard_false"] if action != "false_alarm" else spread["yard_confirmed"]
    url = reverse(f"detection:{action}", args=[pk])
    form = page.one("form", action=url)
    assert form.one("input", name="next")["value"] == here
    response = logged_in.post(url, {"next": here})
    assert response.status_code == 302 and response["Location"] == here
    incident = Incident.objects.get(pk=pk)
    if action == "acknowledge":
        assert incident.is_acknowledged
    else:
        assert incident.feedback == ("false_alarm" if action == "false_alarm" else "confirmed")


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "javascript:x"])
def test_it_never_redirects_off_site(spread, logged_in, target):
    incident = Incident.objects.get(pk=spread["gate_open"])
    response = logged_in.post(
        reverse("detection:acknowledge", args=[incident.pk]), {"next": target}
    )
    assert response["Location"] == incident.analysis.get_absolute_url()


def test_it_asks_anonymous_users_to_log_in():
    response = Client().get(PAGE)
    assert response.status_code == 302 and reverse("login") in response["Location"]


# --- in a real browser -------------------------------------------------------------------------

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")

PLAYBACK = """
const done = arguments[arguments.length - 1];
const video = document.querySelector('video.incident-clip');
video.muted = true;
video.play().then(() => {
  const started = video.currentTime;
  const check = () => {
    if (video.currentTime > started + 0.5) {
      done({ready: video.readyState, time: video.currentTime, duration: video.duration,
            width: video.videoWidth, error: null});
    } else { setTimeout(check, 100); }
  };
  check();
}).catch((e) => done({error: String(e), ready: video.readyState}));
"""


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_plays_the_clip_in_chromium(live_server, tmp_path, settings, media):
    from tests.web.test_browser import log_in, new_browser

    if not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
        pytest.skip(f"no headless browser: {CHROMEDRIVER} or {CHROMIUM} is missing")
    pytest.importorskip("selenium")
    viewer = UserFactory(username="operator")
    camera = CameraFactory(name="Loading bay", viewers=[viewer])
    analysis = AnalysisFactory(camera=camera, name="Loading bay watch")
    incident = IncidentFactory(analysis=analysis, start_time_s=42.0, end_time_s=49.5)
    write_clip(incident, seconds=17.5)
    _, jpeg = cv2.imencode(".jpg", scene(360, 640, seed=3))
    incident.thumbnail.save(f"incident-{incident.pk}.jpg", ContentFile(jpeg.tobytes()))
    base = live_server.url.replace("localhost", "127.0.0.1")
    driver = new_browser(tmp_path / "profile")
    try:
        log_in(driver, base, session_key(viewer))
        driver.get(f"{base}{PAGE}")
        result = driver.execute_async_script(PLAYBACK)
        assert result["error"] is None, result
        assert result["ready"] >= 2 and result["width"] == 320
        assert result["duration"] == pytest.approx(17.5, abs=1.0)
        # Seek: needs the Range support (Chromium asks for the bytes it lacks).
        driver.execute_script(
            "const v = document.querySelector('video.incident-clip'); "
            "v.pause(); v.currentTime = 12;"
        )
        seeked = driver.execute_async_script(
            "const done = arguments[0]; const v = document.querySelector('video.incident-clip');"
            "const wait = () => (v.seeking || v.readyState < 2) ? setTimeout(wait, 100)"
            " : done(v.currentTime); wait();"
        )
        assert seeked == pytest.approx(12, abs=0.5)
        driver.execute_script("document.querySelector('video.incident-clip').currentTime = 0.4;")
        shot = tmp_path / "incidents.png"
        driver.save_screenshot(str(shot))
        folder = os.environ.get("BROWSER_ARTIFACTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "incidents.png").write_bytes(shot.read_bytes())
    finally:
        driver.quit()


def test_it_shows_one_incident_from_an_e_mail_link_only_to_those_who_may_see_it(client):
    viewer, stranger = UserFactory(username="viewer"), UserFactory(username="stranger")
    analysis = AnalysisFactory(camera=CameraFactory(viewers=[viewer]))
    wanted, other = IncidentFactory(analysis=analysis), IncidentFactory(analysis=analysis)
    client.force_login(viewer)
    page = client.get(f"{PAGE}?incident={wanted.pk}")
    assert page.status_code == 200
    assert [i.pk for i in page.context["page"].object_list] == [wanted.pk]
    assert other.pk != wanted.pk
    client.force_login(stranger)
    hidden = client.get(f"{PAGE}?incident={wanted.pk}")
    assert list(hidden.context["page"].object_list) == []
