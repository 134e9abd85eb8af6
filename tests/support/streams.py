"""Test doubles for live cameras: an MJPEG-over-HTTP server and a stalled server.

    with MJPEGServer(fps=25) as server:       # serves on 127.0.0.1, a free port
        source = StreamSource(server.url)
        ...
        server.stop()                          # drops every client: the stream "dies"
        server.start()                         # same port again: the camera "comes back"

OpenCV's FFmpeg reads `multipart/x-mixed-replace; boundary=...` over HTTP (its mpjpeg
demuxer) without any URL tricks. Every server binds 127.0.0.1 only, every thread is a
daemon, and `stop()` joins them, so a failing test never leaves a server behind.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np

from tests.support.waiting import wait_until

FrameMaker = Callable[[int], np.ndarray]  # frame number on this server -> BGR image


def numbered_frame(n: int, size: tuple[int, int] = (160, 120)) -> np.ndarray:
    """A BGR frame showing its number, with a brightness that changes from frame to frame."""
    width, height = size
    image = np.full((height, width, 3), 40 + (n * 7) % 180, np.uint8)
    cv2.putText(image, str(n), (8, height - 12), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255,) * 3, 2)
    return image


def free_port() -> int:
    """A port nothing listens on (as long as nobody takes it in the meantime)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, timeout: float = 30) -> None:
    """Until something accepts connections on 127.0.0.1:`port` (a server we started)."""
    wait_until(lambda: listening(port), timeout, f"something to listen on {port}")


class _Server:
    """Accept loop on 127.0.0.1 that can stop and start again on the same port."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.connections = 0  # connections accepted since creation, across restarts
        self._listener: socket.socket | None = None
        self._clients: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> _Server:
        if self._listener is not None:
            return self
        listener = socket.socket()
        # Restarting on the same port right after stop(): old connections sit in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.05)  # the accept loop notices stop() quickly
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stopping.clear()
        self._spawn(self._accept_loop, listener)
        return self

    def stop(self) -> None:
        """Close the listener and every client connection; join every thread."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping.set()
        listener.close()
        with self._lock:
            clients, self._clients = list(self._clients), set()
        for client in clients:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            client.close()
        for thread in list(self._threads):
            thread.join(2.0)
        self._threads = [t for t in self._threads if t.is_alive()]

    def restart(self) -> _Server:
        self.stop()
        return self.start()

    def __enter__(self) -> _Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="test-server")
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop()
            client.settimeout(None)
            with self._lock:
                if self._stopping.is_set():
                    client.close()
                    return
                self.connections += 1
                self._clients.add(client)
            self._spawn(self._serve_client, client)

    def _serve_client(self, client: socket.socket) -> None:
        raise NotImplementedError

    def _drop(self, client: socket.socket) -> None:
        with self._lock:
            self._clients.discard(client)
        try:
            client.close()
        except OSError:
            pass


class MJPEGServer(_Server):
    """Serves numbered JPEG frames as multipart/x-mixed-replace at `fps` to each client.

    `frames_per_connection`: send that many frames, then close the connection (a flapping
    camera). `stall_after`: send that many frames, then keep the connection open and send
    nothing (a stalled camera). `frames_sent` counts frames across clients and restarts.
    """

    BOUNDARY = b"frame"

    def __init__(
        self,
        port: int = 0,
        *,
        fps: float = 25.0,
        make_frame: FrameMaker = numbered_frame,
        frames_per_connection: int | None = None,
        stall_after: int | None = None,
    ) -> None:
        super().__init__(port)
        self.fps = fps
        self.make_frame = make_frame
        self.frames_per_connection = frames_per_connection
        self.stall_after = stall_after
        self.frames_sent = 0

    def _serve_client(self, client: socket.socket) -> None:
        try:
            client.settimeout(2.0)
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 65536:
                chunk = client.recv(4096)
                if not chunk:
                    return
                request += chunk
            client.sendall(
                b"HTTP/1.0 200 OK\r\n"
                b"Content-Type: multipart/x-mixed-replace; boundary=" + self.BOUNDARY + b"\r\n"
                b"Cache-Control: no-cache\r\n"
                b"Connection: close\r\n\r\n"
            )
            sent = 0
            due = time.monotonic()
            while not self._stopping.is_set():
                if self.frames_per_connection is not None and sent >= self.frames_per_connection:
                    return
                if self.stall_after is not None and sent >= self.stall_after:
                    self._stopping.wait()  # hold the connection open, silent, until stop()
                    return
                ok, jpeg = cv2.imencode(".jpg", self.make_frame(self.frames_sent))
                assert ok
                data = jpeg.tobytes()
                client.sendall(
                    b"--" + self.BOUNDARY + b"\r\n"
                    b"Content-Type: image/jpeg\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(data) + data + b"\r\n"
                )
                sent += 1
                self.frames_sent += 1
                due += 1.0 / self.fps
                self._stopping.wait(max(0.0, due - time.monotonic()))
        except OSError:
            pass  # the client went away, or stop() closed the socket
        finally:
            self._drop(client)


class StalledServer(_Server):
    """Accepts connections and then sends nothing, ever (until stop())."""

    def _serve_client(self, client: socket.socket) -> None:
        # Read and ignore the request; return when the client gives up or stop() is called.
        client.settimeout(0.05)
        try:
            while not self._stopping.is_set():
                try:
                    if not client.recv(4096):
                        return
                except TimeoutError:
                    continue
        except OSError:
            pass
        finally:
            self._drop(client)
