"""A private file served with HTTP Range support, so that browsers can seek in a video.

One range per request (`bytes=a-b`, `bytes=a-`, `bytes=-n`), as browsers' media players ask:
206 with Content-Range; 416 with `Content-Range: bytes */size` when it starts past the end.
A Range header that is not one byte range is ignored (a 200 with the whole file), as RFC 9110
allows, and so is one whose If-Range no longer matches (the file changed). ETag and
Last-Modified let a browser revalidate with a 304 instead of downloading again: the response
is `private, no-cache`, so every use goes through the view's access check.

The file is opened once and measured through that handle: a replacement (an atomic rename)
between the two cannot mix two files in one response.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from django.http import FileResponse, Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils.http import http_date, parse_etags

CHUNK = 64 * 1024
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def byte_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """(first, last) byte of `header` in a file of `size` bytes; None to ignore the header
    (not one byte range); False when it cannot be satisfied."""
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last n bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else False
    start = int(first)
    if last and int(last) < start:
        return None  # syntactically invalid: ignored, as RFC 9110 says
    if start >= size:
        return False
    return start, min(int(last) if last else size - 1, size - 1)


def _chunks(handle: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    try:
        handle.seek(start)
        while length > 0:
            data = handle.read(min(CHUNK, length))
            if not data:
                break
            length -= len(data)
            yield data
    finally:
        handle.close()


def ranged_file(request: HttpRequest, path: Path, content_type: str, missing: str) -> HttpResponse:
    """`path` for a request that passed its access check; 404 saying `missing` without it."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise Http404(missing) from None
    stat = os.fstat(handle.fileno())
    size = stat.st_size
    etag = f'"{stat.st_mtime_ns:x}-{size:x}"'
    headers = {
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-cache",
        "ETag": etag,
        "Last-Modified": http_date(stat.st_mtime),
    }
    if etag in parse_etags(request.headers.get("If-None-Match", "")):
        handle.close()
        return HttpResponse(status=304, headers=headers)
    wanted = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if wanted and (if_range is None or if_range.strip() == etag):
        found = byte_range(wanted, size)
        if found is False:
            handle.close()
            return HttpResponse(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        if found is not None:
            start, end = found
            length = end - start + 1
            response = StreamingHttpResponse(
                _chunks(handle, start, length), status=206, content_type=content_type
            )
            response["Content-Length"] = str(length)
            response["Content-Range"] = f"bytes {start}-{end}/{size}"
            for name, value in headers.items():
                response[name] = value
            return response
    response = FileResponse(handle, content_type=content_type)
    for name, value in headers.items():
        response[name] = value
    return response
