"""A real RTSP camera: GStreamer's gst-rtsp-server in a subprocess, stopped and restarted at will.

    with RtspServer() as camera:              # 127.0.0.1, a free port; skips if not installed
        source = StreamSource(camera.url, policy=LOOPBACK)
        ...
        camera.stop()                          # the process dies: the camera is gone
        camera.start()                         # same port again: the camera comes back
        camera.pause(); camera.resume()        # SIGSTOP/SIGCONT: a camera that hangs

It serves, at rtsp://127.0.0.1:<port>/...,
- `/cam`: a live 25 fps H.264 test pattern (a ball moving on a blue-grey ground, never a
  black frame), 640x360, a keyframe a second;
- `/cam-sub`: the same at 320x180, as a camera's lower-resolution sub-stream;
- `files={"/clip": path}`: a video file, decoded and re-encoded the same way.

The server is tests/support/rtsp_server.py, run by Debian's /usr/bin/python3: it needs
python3-gi, gir1.2-gst-rtsp-server-1.0 and the GStreamer plugins (README, "Development").
Without them a test using `RtspServer` is skipped with the reason, except where `CI` or
`TEST_RTSP` is set (.ci/run sets `TEST_RTSP=1`): there a missing server fails the test.

Ready means more than a listening port: `start()` waits until a DESCRIBE of every mount is
answered 200 with an H.264 SDP, so the pipeline builds and the encoder runs. The subprocess
dies with the test process (PR_SET_PDEATHSIG), and `stop()` reaps it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from detection.engine.netpolicy import camera_policy
from tests.support.streams import free_port
from tests.support.waiting import wait_until

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-gi (the virtualenv has no gi)
SCRIPT = Path(__file__).with_name("rtsp_server.py")
PACKAGES = (
    "gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base "
    "gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-tools"
)
REQUIRED = any(os.environ.get(name, "") not in ("", "0", "false") for name in ("CI", "TEST_RTSP"))

# Streams to 127.0.0.1 are refused by default (the camera policy); the tests open loopback
# explicitly, as an operator does with DETECTION_CAMERA_ALLOWED_NETWORKS.
LOOPBACK = camera_policy(["127.0.0.0/8"])

MAIN = (640, 360)
SUB = (320, 180)


@functools.cache
def unavailable() -> str | None:
    """Why no RTSP server can run here (None: it can)."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is missing (apt-get install python3 {PACKAGES})"
    check = subprocess.run(
        [SYSTEM_PYTHON, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60
    )
    if check.returncode != 0:
        reason = (check.stderr.strip().splitlines() or [f"exit {check.returncode}"])[-1]
        return f"no RTSP server: {reason} (apt-get install {PACKAGES})"
    return None


def require() -> None:
    """Skip the test when gst-rtsp-server is missing; fail it where it is required (CI)."""
    reason = unavailable()
    if reason is None:
        return
    if REQUIRED:
        pytest.fail(f"{reason}; CI/TEST_RTSP is set, so the RTSP tests must run", pytrace=False)
    pytest.skip(f"{reason}; set TEST_RTSP=1 to make this an error")


def describe(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """Send one RTSP DESCRIBE to `url`: (status code, SDP body)."""
    parts = urlsplit(url)
    request = (
        f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n"
        "User-Agent: clipwatch-tests\r\n\r\n"
    ).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError(f"{url}: connection closed before an answer")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        while len(body) < length:
            chunk = s.recv(4096)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), body.decode("latin-1")


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the test process dies (even by kill -9)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class RtspServer:
    """gst-rtsp-server on 127.0.0.1 that can stop and start again on the same port."""

    def __init__(
        self,
        port: int = 0,
        *,
        fps: int = 25,
        main: tuple[int, int] = MAIN,
        sub: tuple[int, int] | None = SUB,
        files: dict[str, Path | str] | None = None,
        ready_timeout: float = 20.0,
    ) -> None:
        self.port = port
        self.fps = fps
        self.mounts = {"/cam": main, **({"/cam-sub": sub} if sub else {})}
        self.files = {path: Path(file) for path, file in (files or {}).items()}
        self.ready_timeout = ready_timeout
        self.starts = 0  # how many times a server process came up
        self._process: subprocess.Popen | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.log: Path | None = None  # the server's stderr, for failure messages

    def url_of(self, path: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}{path}"

    @property
    def url(self) -> str:
        """The main stream."""
        return self.url_of("/cam")

    @property
    def sub_url(self) -> str:
        return self.url_of("/cam-sub")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> RtspServer:
        if self.running:
            return self
        require()
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="rtsp-server-")
            self.log = Path(self._dir.name) / "server.log"
        # A port of our own choosing, so that restarts come back on the same one. Someone
        # may take a free port before the server binds it: then, first start only, another.
        tries = 1 if self.port else 3
        for attempt in range(tries):
            self.port = self.port if tries == 1 else free_port()
            self._spawn()
            try:
                self._wait_ready()
            except BaseException:
                self.stop()
                if attempt + 1 < tries and "cannot listen" in self.tail():
                    continue
                raise
            break
        self.starts += 1
        return self

    def _spawn(self) -> None:
        assert self.log is not None
        args = [SYSTEM_PYTHON, str(SCRIPT), "--port", str(self.port), "--fps", str(self.fps)]
        for path, (width, height) in self.mounts.items():
            args += ["--mount", f"{path}={width}x{height}"]
        for path, file in self.files.items():
            args += ["--file", f"{path}={file}"]
        env = {**os.environ, "GST_DEBUG": os.environ.get("GST_DEBUG", "1")}  # errors only
        with self.log.open("a") as log:
            self._process = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
                preexec_fn=_die_with_parent,
            )

    def _wait_ready(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        deadline = time.monotonic() + self.ready_timeout
        readable, _, _ = select.select([process.stdout], [], [], self.ready_timeout)
        line = process.stdout.readline() if readable else ""
        if not line.startswith("ready"):
            raise AssertionError(
                f"the RTSP server on port {self.port} did not start: {line.strip()!r}, "
                f"exit {process.poll()}. {self.tail()}"
            )

        def answered() -> bool:
            for path in [*self.mounts, *self.files]:
                try:
                    code, sdp = describe(self.url_of(path))
                except OSError:
                    return False
                if code != 200 or "H264" not in sdp:
                    return False
            return True

        wait_until(
            answered,
            max(0.5, deadline - time.monotonic()),
            f"DESCRIBE of every mount on port {self.port} to answer 200 with H.264",
            self.tail,
            every=0.1,
        )

    def stop(self) -> None:
        """The camera goes away at once (SIGKILL: no TEARDOWN, no goodbye); the process is
        reaped, so the port is free for `start()`."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # in case it was paused
            process.kill()
        process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()

    def restart(self) -> RtspServer:
        self.stop()
        return self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but carry nothing, like a
        camera that hangs."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log and self.log.exists() else ""
        return "server log: " + ("\n".join(text.splitlines()[-lines:]) or "(empty)")

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = self.log = None

    def __enter__(self) -> RtspServer:
        try:
            return self.start()
        except BaseException:  # a skip, too: nothing may stay behind
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
