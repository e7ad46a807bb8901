"""Multipart bodies streamed from disk: exact length, exact bytes, filenames that survive parsing."""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from python_multipart.multipart import MultipartParser, parse_options_header

from openaifs.client.multipart import (
    CHUNK,
    FileSlice,
    MultipartBody,
    content_disposition,
    guess_mime_type,
    md5_of_fd,
    part_content_type,
)
from openaifs.errors import IntegrityError

NASTY_NAMES = [
    "plain.jsonl",
    'say "hi".txt',
    "back\\slash\\.txt",
    "ends-with-backslash\\",
    "a/b/c.jsonl",
    "semi;colon; filename=evil.txt",
    "emoji 🦊🚀.jsonl",
    "ünïcödé – 名前.txt",
    "line\nbreak\r.txt",
    "tab\tand\x00nul\x1f\x7f.bin",
    "C:\\windows\\path.txt",
    "\\\\share\\x",
    "100%25 literal%22.txt",
    " spaced  ",
    "",
]


def parse_form(body: bytes, boundary: str) -> list[tuple[dict[str, bytes], bytes]]:
    """Parse with python-multipart (what Starlette-based servers use): [(headers, data)]."""
    parts: list[tuple[dict[str, bytes], bytes]] = []
    state: dict[str, bytes | bytearray] = {}
    headers: dict[str, bytes] = {}

    def on_part_begin() -> None:
        headers.clear()
        state["data"] = bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hname"] = bytes(state.get("hname", b"")) + data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hvalue"] = bytes(state.get("hvalue", b"")) + data[start:end]

    def on_header_end() -> None:
        headers[bytes(state.pop("hname")).decode().lower()] = bytes(state.pop("hvalue", b""))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"] += data[start:end]  # type: ignore[operator]

    def on_part_end() -> None:
        parts.append((dict(headers), bytes(state["data"])))

    parser = MultipartParser(
        boundary.encode(),
        callbacks={
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    parser.write(body)
    parser.finalize()
    return parts


def rfc5987_filename(disposition: bytes) -> str:
    """The exact name from filename*=UTF-8''…, decoded as RFC 5987 receivers do."""
    text = disposition.decode("latin-1")
    marker = "filename*=UTF-8''"
    value = text[text.index(marker) + len(marker) :].split(";", 1)[0].strip()
    return urllib.parse.unquote(value, encoding="utf-8", errors="strict")


async def collect(body: MultipartBody) -> bytes:
    out = bytearray()
    async for chunk in body:
        out += chunk
    return bytes(out)


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(CHUNK * 2 + 12345)
    p = tmp_path / "src.bin"
    p.write_bytes(data)
    return p, data


@pytest.mark.parametrize("name", NASTY_NAMES)
async def test_body_round_trips_through_python_multipart(sample: tuple[Path, bytes], name: str) -> None:
    path, data = sample
    fd = os.open(path, os.O_RDONLY)
    try:
        fields = [
            ("purpose", "batch"),
            ("expires_after[anchor]", "created_at"),
            ("expires_after[seconds]", "3600"),
        ]
        body = MultipartBody(fields, "file", name, "application/octet-stream", FileSlice(fd, 0, len(data)))
        raw = await collect(body)
    finally:
        os.close(fd)
    assert len(raw) == body.content_length
    assert body.headers()["Content-Length"] == str(len(raw))
    parts = parse_form(raw, body.boundary)
    assert [p[1] for p in parts[:3]] == [b"batch", b"created_at", b"3600"]
    file_headers, file_data = parts[3]
    assert file_data == data
    disposition = file_headers["content-disposition"]
    # the extended parameter carries the exact name, whatever it holds
    assert rfc5987_filename(disposition) == name
    # the plain parameter, as python-multipart (Starlette) reads it: exact unless the name holds
    # control characters (percent-encoded there, as httpx does) or looks like an old IE path
    _, options = parse_options_header(disposition)
    plain = options[b"filename"].decode("utf-8")
    if not any(ord(c) < 0x20 or c == "\x7f" for c in name) and not name.startswith(("\\\\", "C:\\")):
        assert plain == name
    assert options[b"name"] == b"file"


def test_content_disposition_format() -> None:
    assert content_disposition("purpose") == 'form-data; name="purpose"'
    assert content_disposition("file", 'a"b\\c\n.txt') == (
        'form-data; name="file"; filename*=UTF-8\'\'a%22b%5Cc%0A.txt; filename="a\\"b\\\\c%0A.txt"'
    )
    # non-ASCII goes raw (UTF-8) in the plain parameter, percent-encoded in the extended one
    assert (
        content_disposition("file", "é") == 'form-data; name="file"; filename*=UTF-8\'\'%C3%A9; filename="é"'
    )


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_name_survives_the_extended_parameter(name: str) -> None:
    disposition = content_disposition("file", name).encode("utf-8", "surrogateescape")
    assert b"\r" not in disposition and b"\n" not in disposition
    decoded = rfc5987_filename(disposition)
    assert decoded == name


async def test_slice_reads_exact_range(sample: tuple[Path, bytes]) -> None:
    path, data = sample
    fd = os.open(path, os.O_RDONLY)
    seen: list[int] = []
    try:
        out = b"".join([c async for c in FileSlice(fd, 1000, CHUNK + 7).chunks(seen.append)])
    finally:
        os.close(fd)
    assert out == data[1000 : 1000 + CHUNK + 7]
    assert seen == [CHUNK, 7]


async def test_slice_of_a_file_that_shrank(sample: tuple[Path, bytes]) -> None:
    path, data = sample
    fd = os.open(path, os.O_RDONLY)
    try:
        os.truncate(path, 100)
        with pytest.raises(IntegrityError, match="changed while uploading"):
            async for _ in FileSlice(fd, 0, len(data)).chunks():
                pass
    finally:
        os.close(fd)


def test_md5_of_fd(sample: tuple[Path, bytes]) -> None:
    path, data = sample
    fd = os.open(path, os.O_RDONLY)
    try:
        assert md5_of_fd(fd, threading.Event()) == hashlib.md5(data).hexdigest()
        stop = threading.Event()
        stop.set()
        assert md5_of_fd(fd, stop) is None
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("name", "upload_type", "part_type"),
    [
        ("x.jsonl", "text/jsonl", "application/octet-stream"),
        ("X.JSONL", "text/jsonl", "application/octet-stream"),
        ("a.png", "image/png", "image/png"),
        ("a.pdf", "application/pdf", "application/pdf"),
        ("noext", "application/octet-stream", "application/octet-stream"),
    ],
)
def test_mime_types(name: str, upload_type: str, part_type: str) -> None:
    assert guess_mime_type(name) == upload_type
    assert part_content_type(name) == part_type
