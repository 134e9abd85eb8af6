"""Request bodies of any size cost daphne bounded memory; `install()` once, before serving.

Twisted receives a request body into a file (a temporary file above 100 kB) and daphne hands
it to the application, but two steps in between read all of it into memory:

- `twisted.web.http.Request.requestReceived` parses `multipart/form-data` and urlencoded
  POST bodies into `request.args`, in memory, with several copies (twisted/twisted#5511).
  daphne never reads `args`; it reads `request.content`.
- daphne's `WebRequest.process()` then reads the whole file into the application's queue in
  one synchronous loop, before the application has taken a single chunk.

Measured on daphne 4.2.3 / Twisted 26.10 with a 256 MiB multipart POST to a page that
answers 404: daphne's peak RSS grew by 3.0 GiB; with Twisted's parsing off (its
`parsePOSTFormSubmission=False`) still by 267 MiB, the size of the body, through daphne's
queue. `StreamingBodyRequest` fixes both: Twisted and daphne see an empty body, and the real
one goes to the application a chunk at a time, as it reads (at most `QUEUED_CHUNKS` chunks
wait in its queue); its file is closed, and its disk freed, once handed over. Django spools
what it reads to a temporary file and parses uploads from there (docs/deployment.md,
"Request bodies"); tests/portal/test_request_memory.py measures all of it.

A websocket handshake is a GET without a body. daphne replayed whatever body came with one
to the websocket protocol, in memory (+512 MiB for 256 MiB); now that body is dropped.

`install()` replaces `daphne.http_protocol.WebRequest`, which daphne's `HTTPFactory` looks
up each time it builds a connection, so it reaches both `daphne portal.asgi:application`
and `manage.py runserver` (daphne's, which imports the application before it starts
serving). It is idempotent and imports no Django.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import IO, Any

from daphne import http_protocol
from twisted.internet.defer import Deferred

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
QUEUED_CHUNKS = 2  # what one request may hold in memory: QUEUED_CHUNKS * CHUNK_BYTES
POLL_S = 0.001  # asyncio.Queue says nothing when a chunk is taken: look again this often

Message = dict[str, Any]


class _QueueView:
    """The application queue as daphne sees it: its one (empty) body message starts the feed.

    Every other message (`http.disconnect`) goes straight through.
    """

    def __init__(self, request: StreamingBodyRequest, queue: asyncio.Queue[Message]) -> None:
        self.request = request
        self.queue = queue

    def put_nowait(self, message: Message) -> None:
        if message.get("type") == "http.request":
            self.request.start_feeding(self.queue)
        else:
            self.queue.put_nowait(message)


class StreamingBodyRequest(http_protocol.WebRequest):
    """daphne's request, minus the two places that read a whole body into memory."""

    _body: IO[bytes] | None = None  # the real body, until the application has all of it
    _unsent = 0  # bytes of it not yet in the queue
    _feeder: asyncio.Task[None] | None = None
    _view: _QueueView | None = None

    # daphne assigns its queue here (in process()) and puts every message through it.
    @property
    def application_queue(self) -> _QueueView | None:
        return self._view

    @application_queue.setter
    def application_queue(self, queue: asyncio.Queue[Message] | None) -> None:
        self._view = None if queue is None else _QueueView(self, queue)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # Everything Twisted does here (method, URI, path, query-string args) still happens;
        # it finds an empty body, so there is no form to parse, and so does daphne.
        body, self.content = self.content, io.BytesIO()
        if body is not None and body.tell() > 0:
            self._unsent = body.tell()
            body.seek(0)
            self._body = body
        elif body is not None:
            body.close()
        super().requestReceived(command, path, version)

    def process(self) -> Deferred[None]:
        done: Deferred[None] = super().process()
        # daphne's process() ends after it queued the body message for an HTTP request, so a
        # body nobody started feeding by then never will be: a websocket handshake's, or a
        # request refused early. Its file would stay open as long as daphne keeps the request.
        done.addBoth(self._drop_unfed_body)
        return done

    def _drop_unfed_body(self, result: object) -> object:
        if self._feeder is None:
            self._close_body()
        return result

    def start_feeding(self, queue: asyncio.Queue[Message]) -> None:
        if self._body is None:
            queue.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        elif self._fill(queue) and self._feeder is None:
            # Kept on the request: the event loop holds only a weak reference to a task.
            self._feeder = asyncio.ensure_future(self._feed(queue))

    async def _feed(self, queue: asyncio.Queue[Message]) -> None:
        while self._fill(queue):
            await asyncio.sleep(POLL_S)

    def _fill(self, queue: asyncio.Queue[Message]) -> bool:
        """Top the queue up to QUEUED_CHUNKS chunks of the body; whether any is left to send.

        Nothing is left once it is all sent, or once the request finished or lost its
        connection (both close the body).
        """
        while self._body is not None and queue.qsize() < QUEUED_CHUNKS:
            try:
                chunk = self._body.read(CHUNK_BYTES)
            except OSError:
                log.exception("cannot read a request body back from its temporary file")
                self._close_body()
                queue.put_nowait({"type": "http.disconnect"})  # the application gives up
                break
            self._unsent -= len(chunk)
            more = bool(chunk) and self._unsent > 0
            queue.put_nowait({"type": "http.request", "body": chunk, "more_body": more})
            if not more:
                self._close_body()
        return self._body is not None

    def _close_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.close()

    def finish(self) -> None:
        # The application answered (perhaps without reading everything): stop feeding.
        self._close_body()
        super().finish()

    def connectionLost(self, reason: object) -> None:
        self._close_body()
        super().connectionLost(reason)


def install() -> None:
    """Make daphne build `StreamingBodyRequest`s for every connection from now on."""
    if http_protocol.WebRequest is not StreamingBodyRequest:
        http_protocol.WebRequest = StreamingBodyRequest
