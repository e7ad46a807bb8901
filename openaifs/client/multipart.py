"""Request bodies streamed from disk: ``multipart/form-data`` with a known length, and file slices.

Owns turning (form fields, a slice of a local file) into an async byte iterator plus the exact
``Content-Length``, so that a 1 GiB upload never sits in memory and never blocks trio: file bytes are
read with ``os.pread`` in a worker thread, 1 MiB at a time. httpx's own ``files=`` would read a sync
file object on the event loop, which stalls every FUSE request while the disk works.

Filenames in ``Content-Disposition``: the plain ``filename="…"`` parameter carries the name as raw
UTF-8 (what httpx, the official SDK and browsers send, and what servers decode), with ``"`` and ``\\``
escaped as RFC 7230 quoted-pairs (which python-multipart/Starlette decode) and control characters
(which cannot appear raw in a header line) percent-encoded as httpx and the HTML form spec do. A
``filename*=UTF-8''…`` parameter (RFC 5987 percent-encoding) goes first and carries the exact name for
servers that read it; RFC 7578 says form-data receivers should ignore it, and python-multipart does.
``filename`` goes last because python-multipart mis-splits a quoted value ending in ``\\"`` when
another parameter follows it.

It never holds the file open itself: the caller owns the descriptor and closes it.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import re
import threading
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import httpx
import trio

from openaifs.errors import IntegrityError, LocalFileError

MiB = 1024 * 1024
# 1 MiB reads: large enough that the thread hop per read (~50 µs) costs under 1 % at disk speed,
# small enough that a few uploads in flight hold only a few MiB.
CHUNK = MiB

_CONTROL = re.compile(r"[\x00-\x1f\x7f\"\\]")
# RFC 5987 attr-char: ALPHA / DIGIT / "!" / "#" / "$" / "&" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
_ATTR_SAFE = "!#$&+-.^_`|~"

# Types the Uploads API wants for files mimetypes does not know. `text/jsonl` is what the API
# reference's own createUpload example sends for a .jsonl fine-tune file (openai-files-openapi.yaml).
_MIME_OVERRIDES = {".jsonl": "text/jsonl", ".md": "text/markdown"}


def guess_mime_type(filename: str) -> str:
    """The ``mime_type`` sent to ``POST /uploads``: by extension, else application/octet-stream."""
    ext = os.path.splitext(filename)[1].lower()
    if ext in _MIME_OVERRIDES:
        return _MIME_OVERRIDES[ext]
    return mimetypes.guess_type(filename, strict=False)[0] or "application/octet-stream"


def part_content_type(filename: str) -> str:
    """The ``Content-Type`` of the file part, as httpx (and so the official SDK) would send it."""
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _quoted(value: str) -> str:
    def repl(m: re.Match[str]) -> str:
        c = m.group(0)
        return "\\" + c if c in '"\\' else f"%{ord(c):02X}"

    return '"' + _CONTROL.sub(repl, value) + '"'


def content_disposition(name: str, filename: str | None = None) -> str:
    """``form-data; name="…"[; filename*=UTF-8''…; filename="…"]`` for one form part."""
    value = f"form-data; name={_quoted(name)}"
    if filename is not None:
        encoded = urllib.parse.quote(filename, safe=_ATTR_SAFE, encoding="utf-8", errors="surrogateescape")
        value += f"; filename*=UTF-8''{encoded}; filename={_quoted(filename)}"
    return value


@dataclass(frozen=True, slots=True)
class FileSlice:
    """``length`` bytes at ``offset`` of an already open file descriptor (owned by the caller)."""

    fd: int
    offset: int
    length: int

    def chunks(self, on_read: Callable[[int], None] | None = None) -> _SliceReader:
        return _SliceReader(self, on_read)


# The iterators below are classes, not async generators, on purpose: httpcore stops iterating a
# request body when the connection breaks, and an abandoned async generator makes trio warn when it
# is garbage collected (the same httpx problem as encode/httpx#3686). A plain object just goes away.
class _SliceReader:
    def __init__(self, piece: FileSlice, on_read: Callable[[int], None] | None) -> None:
        self._fd = piece.fd
        self._pos = piece.offset
        self._end = piece.offset + piece.length
        self._on_read = on_read

    def __aiter__(self) -> _SliceReader:
        return self

    async def __anext__(self) -> bytes:
        if self._pos >= self._end:
            raise StopAsyncIteration
        try:
            data = await trio.to_thread.run_sync(
                os.pread, self._fd, min(CHUNK, self._end - self._pos), self._pos
            )
        except OSError as exc:
            raise LocalFileError(f"cannot read the file being uploaded: {exc.strerror or exc}") from None
        if not data:
            raise IntegrityError(
                f"the local file ended at byte {self._pos}, before the {self._end} bytes being uploaded; "
                "it changed while uploading"
            )
        self._pos += len(data)
        if self._on_read is not None:
            self._on_read(len(data))
        return data


class BytesBody(httpx.AsyncByteStream):
    """A small in-memory request body (JSON), counted as it is sent."""

    def __init__(self, data: bytes, on_wire: Callable[[int], None] | None = None) -> None:
        self._data = data
        self._on_wire = on_wire

    def __aiter__(self) -> _Once:
        return _Once(self._data, self._on_wire)


class _Once:
    def __init__(self, data: bytes, on_wire: Callable[[int], None] | None) -> None:
        self._data: bytes | None = data
        self._on_wire = on_wire

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        data, self._data = self._data, None
        if not data:
            raise StopAsyncIteration
        if self._on_wire is not None:
            self._on_wire(len(data))
        return data


class _Multipart(httpx.AsyncByteStream):
    """The framing of a ``multipart/form-data`` body: text fields, then one file part."""

    def __init__(self, fields: Sequence[tuple[str, str]], file_field: str, filename: str, content_type: str) -> None:
        # 32 hex digits of randomness, as httpx does: it cannot plausibly occur inside the file.
        self.boundary = os.urandom(16).hex()
        dash = f"--{self.boundary}\r\n".encode()
        head = bytearray()
        for name, value in fields:
            head += dash
            head += f"Content-Disposition: {content_disposition(name)}\r\n\r\n".encode()
            head += value.encode("utf-8", "surrogateescape") + b"\r\n"
        head += dash
        # surrogateescape: a name decoded from undecodable bytes goes out as those bytes again.
        disposition = content_disposition(file_field, filename)
        head += f"Content-Disposition: {disposition}\r\n".encode("utf-8", "surrogateescape")
        head += f"Content-Type: {content_type}\r\n\r\n".encode()
        self._head = bytes(head)
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.on_wire: Callable[[int], None] | None = None

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type}


class MultipartBody(_Multipart):
    """A ``multipart/form-data`` body whose file part streams from a FileSlice, with its length.

    Iterable more than once (each iteration re-reads the slice); the client still builds a fresh one
    per attempt so progress counts start from zero. ``on_file_bytes`` hears of file bytes read,
    ``on_wire`` of every byte handed to the connection.
    """

    def __init__(
        self,
        fields: Sequence[tuple[str, str]],
        file_field: str,
        filename: str,
        content_type: str,
        source: FileSlice,
        on_file_bytes: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(fields, file_field, filename, content_type)
        self._source = source
        self._on_file_bytes = on_file_bytes

    @property
    def content_length(self) -> int:
        return len(self._head) + self._source.length + len(self._tail)

    def headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type, "Content-Length": str(self.content_length)}

    def __aiter__(self) -> _MultipartIterator:
        return _MultipartIterator(
            self._head, self._source.chunks(self._on_file_bytes), self._tail, self.on_wire
        )


class GrowingMultipartBody(_Multipart):
    """A ``multipart/form-data`` body whose file part is ``file``'s bytes, of a length not known when
    it starts: sent with ``Transfer-Encoding: chunked`` (no ``Content-Length`` header). Iterable once.
    ``file`` must be a class-based async iterator (see below)."""

    def __init__(self, fields: Sequence[tuple[str, str]], file_field: str, filename: str, content_type: str,
                 file: AsyncIterator[bytes]) -> None:
        super().__init__(fields, file_field, filename, content_type)
        self._file = file

    def __aiter__(self) -> _MultipartIterator:
        return _MultipartIterator(self._head, self._file, self._tail, self.on_wire)


class _MultipartIterator:
    def __init__(
        self, head: bytes, file: AsyncIterator[bytes], tail: bytes, on_wire: Callable[[int], None] | None
    ) -> None:
        self._head: bytes | None = head
        self._file: AsyncIterator[bytes] | None = file
        self._tail: bytes | None = tail
        self._on_wire = on_wire

    def __aiter__(self) -> _MultipartIterator:
        return self

    async def __anext__(self) -> bytes:
        data = await self._next()
        if self._on_wire is not None:
            self._on_wire(len(data))
        return data

    async def _next(self) -> bytes:
        if self._head is not None:
            data, self._head = self._head, None
            return data
        if self._file is not None:
            try:
                return await self._file.__anext__()
            except StopAsyncIteration:
                self._file = None
        if self._tail is not None:
            data, self._tail = self._tail, None
            return data
        raise StopAsyncIteration


def md5_of_fd(fd: int, stop: threading.Event) -> str | None:
    """Hex md5 of a whole open file, read in CHUNK pieces; None if ``stop`` was set. For a thread."""
    digest = hashlib.md5(usedforsecurity=False)
    pos = 0
    while not stop.is_set():
        data = os.pread(fd, CHUNK, pos)
        if not data:
            return digest.hexdigest()
        digest.update(data)
        pos += len(data)
    return None
