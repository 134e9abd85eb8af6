"""A request body of any size costs the server bounded memory (portal/daphne_bodies.py).

Each test starts the server as an operator does (`daphne portal.asgi:application`, or
`manage.py runserver` for `make run`), streams a 1 GiB body read from a sparse file (the test
itself holds a megabyte at a time), and reads the server's peak resident memory from
/proc/<pid>/status. Before the fix, Twisted parsed multipart bodies in memory and daphne
queued every body whole: a 256 MiB POST to a missing page grew daphne by 3 GiB.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import websockets
from django.conf import global_settings

from detection.models import Analysis
from tests.support import ROOT
from tests.support.factories import AnalysisFactory, CameraFactory, UserFactory
from tests.support.processes import start_daphne, stop
from tests.support.sessions import session_cookie
from tests.support.streams import free_port, wait_for_port
from tests.support.waiting import WaitTimeout, wait_until

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("tiny_settings"),
    pytest.mark.slow,
]

MIB = 1024 * 1024
GIB = 1024 * MIB
BIG = GIB
GROWTH_LIMIT = 100 * MIB
CAP_MB = 64
BOUNDARY = "----clipwatch-memory-test"
FORM = {
    "name": "Huge upload",
    "normal_prompts": "an empty street",
    "anomaly_prompts": "a fire",
    "sampling_fps": "1",
    "threshold": "0.6",
}
URLENCODED = "application/x-www-form-urlencoded"
CSRF_TOKEN = "memorytestcsrftokenmemorytest012"  # 32 letters and digits: a valid secret


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    temp: Path  # the server's TMPDIR

    def temporary_files(self, wait: float = 10) -> list[str]:
        """Files under `temp` the server still has open (or left), after up to `wait` s.

        Twisted's and Django's temporary files have no name (O_TMPFILE) or are unlinked at
        once, so the open descriptors tell whether they were closed, i.e. their disk freed.
        """
        found: list[str] = []

        def none_left() -> bool:
            found[:] = [str(p) for p in self.temp.rglob("*")]
            for fd in Path(f"/proc/{self.process.pid}/fd").iterdir():
                with suppress(OSError):  # closed meanwhile
                    target = os.readlink(fd)
                    if target.startswith(str(self.temp)):
                        found.append(target)
            return not found

        with suppress(WaitTimeout):  # what is still there after `wait` is the answer
            wait_until(none_left, wait, "the server's temporary files to go", every=0.1)
        return found

    def status(self) -> dict[str, int]:
        """VmRSS and VmHWM (the peak since the last reset), in bytes."""
        found = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024
        return found

    def reset_peak(self) -> None:
        # Linux resets VmHWM to the current RSS on "5" (proc(5), /proc/pid/clear_refs).
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    text: str


def multipart(
    fields: dict[str, str], upload: Path, size: int, filename: str = "huge.mp4"
) -> tuple[Iterator[bytes], int, str]:
    """A multipart body streamed from `upload` (its first `size` bytes): file, then fields."""
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="video"; filename="{filename}"\r\n'
        f"Content-Type: video/mp4\r\n\r\n"
    ).encode()
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'
        for key, value in fields.items()
    ]
    tail = ("\r\n" + "".join(parts) + f"--{BOUNDARY}--\r\n").encode()
    body = itertools.chain([head], read(upload, size), [tail])
    return body, len(head) + size + len(tail), f"multipart/form-data; boundary={BOUNDARY}"


def read(path: Path, size: int) -> Iterator[bytes]:
    """The first `size` bytes of `path`, a MiB at a time."""
    with path.open("rb") as file:
        while size > 0:
            chunk = file.read(min(MIB, size))
            assert chunk, f"{path} is shorter than the body should be"
            size -= len(chunk)
            yield chunk


def post(
    server: Server,
    path: str,
    body: Iterator[bytes],
    length: int,
    content_type: str,
    headers: dict[str, str] | None = None,
) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=240)
    try:
        connection.request(
            "POST",
            path,
            body=body,
            headers={
                "Content-Type": content_type,
                "Content-Length": str(length),
                **(headers or {}),
            },
        )
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read().decode())
    finally:
        connection.close()


def sparse(path: Path, size: int) -> Path:
    """A file of `size` zero bytes that takes no disk space."""
    with path.open("wb") as file:
        file.truncate(size)
    return path


def logged_in_headers() -> dict[str, str]:
    """A real session cookie, and a CSRF cookie with its header, as a browser sends them."""
    session = session_cookie(UserFactory(username="uploader"))
    return {"Cookie": f"{session}; csrftoken={CSRF_TOKEN}", "X-CSRFToken": CSRF_TOKEN}


def noisy_clip(path: Path, frames: int = 24) -> Path:
    """A valid MJPEG AVI of incompressible frames: several MiB, so several body chunks."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (640, 480))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (480, 640, 3), np.uint8))
    writer.release()
    return path


@pytest.fixture
def server_env(subprocess_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The server's temporary files (Twisted's body, Django's spool) go under tmp_path."""
    temp = tmp_path / "server-tmp"
    temp.mkdir()
    if shutil.disk_usage(temp).free < 3 * BIG:
        pytest.skip("needs 3 GiB free for the server's temporary copies of a 1 GiB body")
    return {**subprocess_env, "TMPDIR": str(temp), "DETECTION_MAX_UPLOAD_MB": str(CAP_MB)}


@contextmanager
def serving(command: str, env: dict[str, str], log: Path) -> Iterator[Server]:
    port = free_port()
    if command == "daphne":
        process = start_daphne(env, port, log)
    else:
        with log.open("a") as out:
            process = subprocess.Popen(
                # --noreload: the server is this process, not an autoreloader's child.
                [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
    try:
        wait_for_port(port, timeout=60)
        yield Server(process, port, Path(env["TMPDIR"]))
    finally:
        stop(process)


@dataclass
class Measured:
    reply: Reply
    growth: int  # the server's peak RSS during the big request, above its RSS before
    temporary_files: list[str]  # still open or left behind afterwards


def measure(server: Server, send: Callable[[int], Reply]) -> Measured:
    """send(size) once small (everything imported and warm), then BIG: the peak growth."""
    send(MIB)
    before = server.status()["VmRSS"]
    server.reset_peak()
    reply = send(BIG)
    peak = server.status()["VmHWM"]
    print(f"\nserver RSS {before / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB for {BIG / MIB:.0f} MiB")
    return Measured(reply, peak - before, server.temporary_files())


@pytest.fixture
def zeros(tmp_path: Path) -> Path:
    return sparse(tmp_path / "zeros.bin", BIG)


def assert_bounded(measured: Measured) -> None:
    """The server's peak memory grew less than GROWTH_LIMIT and it keeps no body file open."""
    assert measured.growth < GROWTH_LIMIT
    assert measured.temporary_files == []


# --- daphne portal.asgi:application -----------------------------------------------------


def test_it_bounds_memory_for_a_huge_multipart_body_to_a_missing_page(server_env, tmp_path, zeros):
    with serving("daphne", server_env, tmp_path / "daphne.log") as server:

        def send(size: int) -> Reply:
            return post(server, "/no-such-page/", *multipart(FORM, zeros, size))

        measured = measure(server, send)

    assert measured.reply.status == 404
    assert_bounded(measured)


def test_it_bounds_memory_for_a_huge_urlencoded_body(server_env, tmp_path, zeros):
    # Twisted parsed urlencoded POST bodies into memory as well.
    with serving("daphne", server_env, tmp_path / "daphne.log") as server:

        def send(size: int) -> Reply:
            body = itertools.chain([b"field="], read(zeros, size))
            return post(server, "/no-such-page/", body, 6 + size, URLENCODED)

        measured = measure(server, send)

    assert measured.reply.status == 404
    assert_bounded(measured)


def test_it_bounds_memory_for_a_body_sent_with_a_websocket_handshake(server_env, tmp_path, zeros):
    # Stock daphne replayed such a body to the websocket protocol, in memory (+512 MiB for
    # 256 MiB); a handshake is a GET without a body, so it is dropped.
    with serving("daphne", server_env, tmp_path / "daphne.log") as server:

        def send(size: int) -> Reply:
            head = (
                "GET /ws/analyses/1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\nContent-Length: {size}\r\n\r\n"
            ).encode()
            with socket.create_connection(("127.0.0.1", server.port), timeout=60) as client:
                client.sendall(head)
                for chunk in read(zeros, size):
                    client.sendall(chunk)
                answer = client.recv(4096).decode("latin-1")
            return Reply(int(answer.split()[1]), http.client.HTTPMessage(), answer)

        measured = measure(server, send)

    assert measured.reply.status in (101, 403)  # answered: upgraded, or refused (no origin)
    assert_bounded(measured)


def test_it_bounds_memory_for_a_huge_upload_from_a_logged_out_client(server_env, tmp_path, zeros):
    with serving("daphne", server_env, tmp_path / "daphne.log") as server:

        def send(size: int) -> Reply:
            return post(server, "/upload/", *multipart(FORM, zeros, size))

        measured = measure(server, send)

    assert measured.reply.status == 302
    assert measured.reply.headers["Location"] == "/accounts/login/?next=/upload/"
    assert_bounded(measured)


def test_it_refuses_a_huge_upload_over_the_cap_with_bounded_memory(server_env, tmp_path, zeros):
    headers = logged_in_headers()
    with serving("daphne", server_env, tmp_path / "daphne.log") as server:

        def send(size: int) -> Reply:
            return post(server, "/upload/", *multipart(FORM, zeros, size), headers=headers)

        measured = measure(server, send)

    assert measured.reply.status == 200
    assert (
        f"the file is larger than the upload limit of {CAP_MB} MB (DETECTION_MAX_UPLOAD_MB)"
        in measured.reply.text
    )
    assert_bounded(measured)
    assert Analysis.objects.count() == 0
    assert [p for p in Path(server_env["MEDIA_ROOT"]).rglob("*") if p.is_file()] == []


def test_it_stores_an_upload_under_the_cap_byte_for_byte(server_env, tmp_path):
    clip = noisy_clip(tmp_path / "noisy.avi")
    assert clip.stat().st_size > 4 * MIB  # several chunks reach Django one after the other
    headers = logged_in_headers()
    with serving("daphne", server_env, tmp_path / "daphne.log") as server:
        body, length, content_type = multipart(FORM, clip, clip.stat().st_size, clip.name)
        reply = post(server, "/upload/", body, length, content_type, headers=headers)
        temporary_files = server.temporary_files()

    analysis = Analysis.objects.get()
    assert reply.status == 302, reply.text
    assert reply.headers["Location"] == analysis.get_absolute_url()
    assert Path(analysis.camera.source).read_bytes() == clip.read_bytes()
    assert temporary_files == []


def test_it_lets_go_of_a_body_whose_client_went_away(server_env, tmp_path, zeros):
    size = 256 * MIB
    head = (
        "POST /no-such-page/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    with serving("daphne", server_env, tmp_path / "daphne.log") as server:
        before = server.status()["VmRSS"]
        server.reset_peak()
        # Gone before, while or after the server hands the body to Django.
        for pause in (0, 0.05, 0.5):
            with socket.create_connection(("127.0.0.1", server.port)) as client:
                client.sendall(head)
                for chunk in read(zeros, size):
                    client.sendall(chunk)
                time.sleep(pause)
        growth = server.status()["VmHWM"] - before
        temporary_files = server.temporary_files()
        after = post(server, "/no-such-page/", iter([b"x"]), 1, URLENCODED)

    assert growth < GROWTH_LIMIT
    assert temporary_files == []
    assert after.status == 404  # and the server still serves


def test_it_still_reads_a_small_form(server_env, tmp_path, settings):
    # A body under one chunk reaches Django in one message: the login form logs in.
    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS  # what the server checks
    UserFactory(username="operator")
    form = f"username=operator&password=pw-for-tests-123&csrfmiddlewaretoken={CSRF_TOKEN}"
    headers = {"Cookie": f"csrftoken={CSRF_TOKEN}"}
    with serving("daphne", server_env, tmp_path / "daphne.log") as server:
        body = [form.encode()]
        reply = post(server, "/accounts/login/", iter(body), len(form), URLENCODED, headers)

    assert reply.status == 302, reply.text
    assert reply.headers["Location"] == "/"
    cookies = reply.headers.get_all("Set-Cookie") or []
    assert any(cookie.startswith("sessionid=") for cookie in cookies)


def test_it_still_upgrades_websockets(server_env, tmp_path):
    user = UserFactory(username="watcher")
    camera = CameraFactory(viewers=[user])
    analysis = AnalysisFactory(camera=camera)
    cookie = session_cookie(user)
    with serving("daphne", server_env, tmp_path / "daphne.log") as server:
        origin = f"http://127.0.0.1:{server.port}"

        async def first_message() -> dict:
            async with websockets.connect(
                f"ws://127.0.0.1:{server.port}/ws/analyses/{analysis.pk}/",
                additional_headers={"Cookie": cookie},
                origin=origin,
                open_timeout=10,
            ) as socket:
                return json.loads(await asyncio.wait_for(socket.recv(), timeout=10))

        message = asyncio.run(first_message())

    assert message["type"] == "snapshot"


# --- manage.py runserver (make run) -------------------------------------------------------


def test_it_bounds_memory_under_runserver_too(server_env, tmp_path, zeros):
    with serving("runserver", server_env, tmp_path / "runserver.log") as server:

        def send(size: int) -> Reply:
            return post(server, "/no-such-page/", *multipart(FORM, zeros, size))

        measured = measure(server, send)

    assert measured.reply.status == 404
    assert_bounded(measured)
