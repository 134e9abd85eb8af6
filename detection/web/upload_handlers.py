"""Upload handlers that enforce size caps while the body streams in.

A size check in the form runs only after Django has written the whole file to a temporary
file; a 50 GB upload would fill the disk first. `CappedUploadHandler` sits first in the
handler chain and counts the bytes of every file in the request: once the total passes
the cap it raises `SkipFile`, so the file is never handed further down the chain, the
partial temporary file is closed (and so deleted) by the parser, and the remaining fields
still parse so the form can say what went wrong.
"""

from __future__ import annotations

from django.core.files.uploadhandler import (
    FileUploadHandler,
    MemoryFileUploadHandler,
    SkipFile,
)
from django.http import HttpRequest

MIB = 1024 * 1024


class CappedUploadHandler(FileUploadHandler):
    """Pass file data on unchanged until the request's files exceed `max_bytes`."""

    def __init__(self, request: HttpRequest, max_bytes: int) -> None:
        super().__init__(request)
        self.max_bytes = max_bytes
        self.received = 0
        self.oversized: set[str] = set()  # field names whose file was skipped

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > self.max_bytes:
            self.oversized.add(self.field_name)
            raise SkipFile
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler builds the UploadedFile


class InMemoryUploadHandler(MemoryFileUploadHandler):
    """Keep every file in memory, whatever its size; only behind a `CappedUploadHandler`.

    Django's memory handler gives up above FILE_UPLOAD_MAX_MEMORY_SIZE and the temporary
    file handler takes over; pages that must not write uploads to disk use this instead.
    """

    def handle_raw_input(self, *args: object, **kwargs: object) -> None:
        self.activated = True


def install(
    request: HttpRequest, max_bytes: int, *, in_memory: bool = False
) -> CappedUploadHandler:
    """Put a cap in front of the request's upload handlers; call before touching POST/FILES."""
    cap = CappedUploadHandler(request, max_bytes)
    if in_memory:
        request.upload_handlers = [cap, InMemoryUploadHandler(request)]
    else:
        request.upload_handlers.insert(0, cap)
    return cap
