"""Streaming a blob as the body of ``GET /v1/files/{id}/content``, with optional Range support.

The hosted API's Range behaviour is unknown (FILES_API.md §3.5); this server honours a single
``bytes=a-b`` / ``a-`` / ``-n`` range (206 + ``Content-Range``; 416 + ``Content-Range: bytes */SIZE``
when unsatisfiable) unless Range is switched off (``--no-range`` or the ``range`` fault), when it
ignores the header and answers 200 without ``Accept-Ranges``. Malformed or multi-range headers
are ignored (a full 200), as RFC 9110 allows.

The body is read in 1 MiB chunks from an fd opened before the headers go out (so a file deleted
meanwhile still streams whole), without any database access per chunk. A chunk the page cache
holds is read on the event loop with ``preadv(RWF_NOWAIT)``, which never blocks (it fails with
EAGAIN instead); only a chunk that needs the disk goes to a worker thread. Measured on a 256 MiB
cached blob with curl: ~2 GB/s this way, ~1.5 GB/s with a thread hop for every chunk. A watcher
task stops a large stream when the client goes away (uvicorn's ``send`` is a silent no-op after a
disconnect, so the loop would otherwise read the whole file for nobody).
"""

from __future__ import annotations

import os
import re
from typing import Any

import anyio
import anyio.lowlevel

from openaifs.server.apierror import ApiError
from openaifs.server.blobs import CHUNK
from openaifs.server.faults import Message, Send

_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
# Bodies at least this large get a task that stops the stream when the client goes away. Starting
# it costs ~0.25 ms (measured: 128 KiB ranged GETs went from ~1900 to ~3300 per second without it),
# which matters for the small ranged reads of a FUSE client; a smaller body is just sent whole.
WATCH_DISCONNECT_ABOVE = 8 * CHUNK
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.I)


class Unsatisfiable(Exception):
    """The range lies wholly outside the file."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end_exclusive)`` for a single satisfiable byte range, None to serve the whole file;
    raises ``Unsatisfiable``."""
    if not header:
        return None
    m = _RANGE.match(header)
    if not m or (not m.group(1) and not m.group(2)):
        return None  # malformed, another unit, or several ranges: ignore the header
    first, last = m.group(1), m.group(2)
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - n), size
    start = int(first)
    end = size if not last else int(last) + 1
    if last and end <= start:
        return None  # "a-b" with b < a is syntactically invalid: ignore
    if start >= size:
        raise Unsatisfiable
    return start, min(end, size)


class FileStream:
    """An ASGI response streaming ``[start, end)`` of an open fd, which it closes when done."""

    def __init__(self, fd: int, start: int, end: int, status: int,
                 headers: list[tuple[bytes, bytes]]) -> None:
        self.fd = fd
        self.start = start
        self.end = end
        self.status = status
        self.headers = headers

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        try:
            if self.end - self.start < WATCH_DISCONNECT_ABOVE:
                await self._stream(send)
                return
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
                await self._stream(send)
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # anyio wraps even a single error of the streaming (host) task; callers expect it bare
            # (e.g. faults.DropConnection).
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            os.close(self.fd)

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        pos, end = self.start, self.end
        if pos >= end:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        while pos < end:
            n = min(CHUNK, end - pos)
            data = _read_cached(self.fd, n, pos)
            if data is None:
                data = await anyio.to_thread.run_sync(os.pread, self.fd, n, pos)
            if not data:
                raise RuntimeError("blob is shorter than its recorded size")
            pos += len(data)
            await send({"type": "http.response.body", "body": data, "more_body": pos < end})
            # After a disconnect uvicorn's send returns without suspending, and a page-cached read
            # does not suspend either: without this checkpoint the disconnect watcher would never
            # run and the loop would "send" the whole file to nobody. One per MiB costs nothing.
            await anyio.lowlevel.checkpoint()


def _read_cached(fd: int, n: int, pos: int) -> bytearray | None:
    """Up to ``n`` bytes at ``pos`` if the page cache has them (``RWF_NOWAIT``), else None."""
    if not _NOWAIT:
        return None
    buf = bytearray(n)
    try:
        got = os.preadv(fd, [buf], pos, _NOWAIT)
    except BlockingIOError:
        return None  # not cached: the caller reads in a thread
    except OSError:
        return None  # e.g. a filesystem without RWF_NOWAIT support
    if got < n:
        del buf[got:]
    return buf


async def _cancel_on_disconnect(receive: Any, scope: anyio.CancelScope) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


def content_response(fd: int, size: int, range_header: str | None, ranges_on: bool) -> FileStream:
    """The response for a download: 200 (whole) or 206 (one range); raises the 416 ``ApiError``
    (closing ``fd``) for an unsatisfiable range."""
    base = [(b"content-type", b"application/octet-stream")]
    if ranges_on:
        base.append((b"accept-ranges", b"bytes"))
        try:
            span = parse_range(range_header, size)
        except Unsatisfiable:
            os.close(fd)
            raise ApiError(416, f"Requested range not satisfiable (file size {size}).", param="range",
                           headers={"content-range": f"bytes */{size}"}) from None
        if span is not None:
            start, end = span
            headers = [*base, (b"content-length", str(end - start).encode()),
                       (b"content-range", f"bytes {start}-{end - 1}/{size}".encode())]
            return FileStream(fd, start, end, 206, headers)
    return FileStream(fd, 0, size, 200, [*base, (b"content-length", str(size).encode())])
