"""Incremental multipart/form-data parsing, writing file fields straight into blob files.

``read_form`` feeds the request body, chunk by chunk as it arrives, to python-multipart's
streaming ``MultipartParser``. Text fields are kept (small, capped); a file field's bytes are
batched to ``blobs.CHUNK`` and handed to a worker thread that writes them to a ``BlobWriter``
(and a ``JsonlChecker`` when asked). Memory per upload stays around one chunk whatever the size,
and nothing is spooled twice (Starlette's own form parser is never used).

A problem found mid-body (unexpected field, size limit, oversized text field) is raised at once.
The answer can go out before the body is read: uvicorn keeps reading and discarding the rest of
the request after the response completed, so a client that is still sending gets to read it.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio.to_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from openaifs.server import apierror
from openaifs.server.apierror import ApiError
from openaifs.server.blobs import CHUNK, BlobStore, BlobWriter
from openaifs.server.validation import JsonlChecker

MAX_TEXT_FIELD = 64 * 1024  # purpose, expires_after[...]: a few bytes each; 64 KiB is generous


@dataclass
class FileField:
    """A file field being received: pending bytes on the loop, written in a thread."""

    name: str
    filename: str
    limit: int
    limit_error: Callable[[int], ApiError]
    check_jsonl: bool
    writer: BlobWriter | None = None
    checker: JsonlChecker | None = None
    size: int = 0
    pending: list[bytes] = field(default_factory=list)
    pending_bytes: int = 0

    def take(self) -> list[bytes]:
        pieces, self.pending, self.pending_bytes = self.pending, [], 0
        return pieces

    def write_many(self, store: BlobStore, pieces: list[bytes]) -> None:
        """Blocking: runs in a worker thread."""
        if self.writer is None:
            self.writer = store.writer()
            self.checker = JsonlChecker() if self.check_jsonl else None
        self.writer.write_many(pieces)
        if self.checker is not None:
            for piece in pieces:
                self.checker.feed(piece)

    def finish_checks(self) -> int | None:
        """Line number of the first non-JSON-object line, if JSONL was checked."""
        return self.checker.finish() if self.checker is not None else None

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.discard()


# Decides, when a file field starts, its size limit and whether to check JSONL (given the text
# fields seen so far); returns None for a field name that is not allowed.
FileSpec = Callable[[str, dict[str, str]], "tuple[int, Callable[[int], ApiError], bool] | None"]


class StreamingForm:
    """The state of one multipart body being parsed."""

    def __init__(self, boundary: bytes, allowed_text: frozenset[str], file_spec: FileSpec) -> None:
        self.fields: dict[str, str] = {}
        self.files: dict[str, FileField] = {}
        self.error: ApiError | None = None
        self._allowed_text = allowed_text
        self._file_spec = file_spec
        self._parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_end": self._on_end,
        })
        self._headers: dict[str, bytes] = {}
        self._hname = bytearray()
        self._hvalue = bytearray()
        self._text_name: str | None = None
        self._text = bytearray()
        self._file: FileField | None = None
        self._ended = False

    def feed(self, chunk: bytes) -> None:
        if self._ended:
            return  # an epilogue after the closing boundary is ignored
        try:
            self._parser.write(chunk)
        except MultipartParseError:
            self._fail(apierror.bad_request("Malformed multipart/form-data body."))

    def finish(self) -> None:
        if not self._ended:
            self._fail(apierror.bad_request("Incomplete multipart/form-data body."))

    def _fail(self, error: ApiError) -> None:
        if self.error is None:
            self.error = error

    # -- parser callbacks (synchronous, on the event loop) ---------------------------------------

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._flush_text()
        self._file = None

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._hname.decode("latin-1").strip().lower()] = bytes(self._hvalue).strip()
        self._hname, self._hvalue = bytearray(), bytearray()

    def _on_headers_finished(self) -> None:
        name, filename = content_disposition(self._headers.get("content-disposition", b""))
        if self.error is not None:
            return
        if name in self.files or name in self.fields:
            self._fail(apierror.bad_request(f"Field '{name}' was given more than once.", param=name))
            return
        spec = self._file_spec(name, self.fields)
        if spec is not None:
            limit, limit_error, jsonl = spec
            self._file = FileField(name, filename or "", limit, limit_error, jsonl)
            self.files[name] = self._file
        elif name in self._allowed_text:
            self._text_name = name
        else:
            self._fail(apierror.unexpected_field(name))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        if self._file is not None:
            self._file_data(self._file, data[start:end])
        elif self._text_name is not None:
            self._text += data[start:end]
            if len(self._text) > MAX_TEXT_FIELD:
                name = self._text_name
                self._fail(apierror.bad_request(f"Field '{name}' is too long.", param=name))

    def _file_data(self, target: FileField, piece: bytes) -> None:
        target.size += len(piece)
        if target.size > target.limit:
            self._fail(target.limit_error(target.size))
            return
        target.pending.append(piece)
        target.pending_bytes += len(piece)

    def _flush_text(self) -> None:
        if self._text_name is not None:
            self.fields[self._text_name] = self._text.decode("utf-8", errors="replace")
        self._text_name, self._text = None, bytearray()

    def _on_end(self) -> None:
        self._flush_text()
        self._ended = True


async def read_form(chunks: AsyncIterator[bytes], form: StreamingForm, store: BlobStore) -> None:
    """Drive ``form`` over the whole body; file bytes go to disk in threads. Raises the first
    ``ApiError`` found; the caller discards ``form.files`` on any exception."""
    async for chunk in chunks:
        form.feed(chunk)
        if form.error is not None:
            raise form.error
        await _flush(form, store, CHUNK, final=False)
    form.finish()
    if form.error is not None:
        raise form.error
    await _flush(form, store, 1, final=True)


async def _flush(form: StreamingForm, store: BlobStore, threshold: int, *, final: bool) -> None:
    for target in form.files.values():
        if target.pending_bytes >= threshold or (final and target.writer is None):
            pieces = target.take()
            await anyio.to_thread.run_sync(target.write_many, store, pieces)


def boundary_of(content_type: str) -> bytes:
    """The multipart boundary, or a 400 like the hosted API gives for a non-multipart body."""
    ctype, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise apierror.bad_request(
            "Invalid Content-Type header (expected multipart/form-data with a boundary), got "
            f"'{content_type}'."
        )
    return boundary


_PARAM = re.compile(rb';\s*([A-Za-z0-9_\-*]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def content_disposition(value: bytes) -> tuple[str, str | None]:
    """``name`` and ``filename`` of a part, decoded as UTF-8; quoted-string escapes undone,
    ``filename*=UTF-8''…`` (RFC 5987) honoured. Unlike browsers' parsers, a filename is taken
    verbatim (no path stripping, no percent-decoding): the API stores any filename."""
    params: dict[str, str] = {}
    for key, raw in _PARAM.findall(value):
        text = raw.strip()
        if text.startswith(b'"') and text.endswith(b'"') and len(text) >= 2:
            text = re.sub(rb"\\(.)", rb"\1", text[1:-1], flags=re.S)
        params[key.decode("latin-1").lower()] = text.decode("utf-8", errors="replace")
    filename = params.get("filename")
    extended = params.get("filename*")
    if extended and "''" in extended:
        charset, _, encoded = extended.partition("''")
        filename = urllib.parse.unquote(encoded, encoding=charset or "utf-8", errors="replace")
    return params.get("name", ""), filename
