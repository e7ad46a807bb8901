"""download(): exact bytes or an error, Range probing, resume after breaks. In-process fake server
(httpx.MockTransport) so that each break lands on an exact byte; fake clock, no sleeping."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

import httpx
import pytest

from openaifs.client import FilesClient
from openaifs.config import ClientConfig
from openaifs.errors import (
    AuthenticationError,
    IntegrityError,
    NotFoundError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
    TransportError,
)

BASE = "http://fake.test/v1"
DATA = os.urandom(3 * 1024 * 1024 + 77)


class Body(httpx.AsyncByteStream):
    """A response body sent in 64 KiB pieces that may stop after ``upto`` bytes, raising or not."""

    def __init__(self, data: bytes, upto: int | None = None, error: Exception | None = None) -> None:
        self.data, self.upto, self.error = data, upto, error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        limit = len(self.data) if self.upto is None else self.upto
        for i in range(0, limit, 65536):
            yield self.data[i : min(i + 65536, limit)]
        if self.error is not None:
            raise self.error


@dataclass
class FakeContent:
    """GET /files/{id}/content for one file; ``script`` says how each successive request goes wrong."""

    data: bytes = DATA
    range_ok: bool = True
    script: list[object] = field(default_factory=list)
    ranges: list[str | None] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["accept-encoding"] == "identity"
        if not request.url.path.startswith("/v1/files/file-1/"):
            return httpx.Response(
                404,
                json={
                    "error": {
                        "message": "No such File object: x",
                        "type": "invalid_request_error",
                        "param": "id",
                        "code": None,
                    }
                },
            )
        rng = request.headers.get("range")
        self.ranges.append(rng)
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, httpx.Response):
            return step
        start, stop = 0, len(self.data)
        status, headers = 200, {}
        if rng and self.range_ok:
            m = re.fullmatch(r"bytes=(\d+)-(\d+)", rng)
            assert m
            start, stop = int(m.group(1)), min(int(m.group(2)) + 1, len(self.data))
            status = 206
            headers["content-range"] = f"bytes {start}-{stop - 1}/{len(self.data)}"
        piece = self.data[start:stop]
        headers["content-length"] = str(len(piece))
        if step == "ok":
            return httpx.Response(status, headers=headers, stream=Body(piece))
        kind, n = step  # type: ignore[misc]
        if kind == "drop":
            return httpx.Response(status, headers=headers, stream=Body(piece, n, httpx.ReadError("reset")))
        if kind == "short":  # the body just ends early, no error from the transport
            return httpx.Response(status, headers=headers, stream=Body(piece, n))
        raise AssertionError(step)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def make(fake: FakeContent, **cfg: object) -> tuple[FilesClient, FakeTime]:
    config = ClientConfig(base_url=BASE, api_key="sk-unit-test-key-0000", **cfg)  # type: ignore[arg-type]
    t = FakeTime()
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    return FilesClient(config, http, sleep=t.sleep, clock=t.clock), t


async def fetch(client: FilesClient, start: int, end: int, file_id: str = "file-1") -> bytes:
    out = bytearray()
    async with aclosing(client.download(file_id, start, end)) as chunks:
        async for chunk in chunks:
            out += chunk
    return bytes(out)


async def test_range_probe_and_exact_bytes() -> None:
    fake = FakeContent()
    client, t = make(fake)
    assert await client.range_supported() is None
    assert await fetch(client, 10, 1_000_010) == DATA[10:1_000_010]
    assert await client.range_supported() is True
    assert fake.ranges == ["bytes=10-1000009"]
    assert await fetch(client, 0, len(DATA)) == DATA
    assert t.sleeps == []
    assert client.stats.requests["files.content"] == 2


async def test_without_range_reads_from_start_and_skips() -> None:
    fake = FakeContent(range_ok=False)
    client, _ = make(fake)
    assert await fetch(client, 5000, 200_000) == DATA[5000:200_000]
    assert await client.range_supported() is False
    assert await fetch(client, 1_000_000, 1_000_001) == DATA[1_000_000:1_000_001]
    assert fake.ranges == ["bytes=5000-199999", None]  # probed once, then never sent again


async def test_resume_with_range_starts_at_the_next_byte() -> None:
    fake = FakeContent(script=[("drop", 200_000), ("short", 300_000)])
    client, t = make(fake)
    assert await fetch(client, 100, len(DATA)) == DATA[100:]
    assert fake.ranges == [
        f"bytes=100-{len(DATA) - 1}",
        f"bytes=200100-{len(DATA) - 1}",
        f"bytes=500100-{len(DATA) - 1}",
    ]
    assert len(t.sleeps) == 2 and client.stats.retries["files.content"] == 2


async def test_resume_without_range_restarts_and_skips() -> None:
    fake = FakeContent(range_ok=False, script=[("drop", 1_500_000), ("short", 10)])
    client, _ = make(fake)
    assert await fetch(client, 1_000_000, 2_000_000) == DATA[1_000_000:2_000_000]
    assert fake.ranges == ["bytes=1000000-1999999", None, None]


async def test_never_silently_short_gives_up_without_progress() -> None:
    fake = FakeContent(script=[("drop", 0)] * 20)
    client, t = make(fake, max_attempts=4)
    with pytest.raises(TransportError, match=r"connection broke.*gave up after 4 attempts") as info:
        await fetch(client, 0, len(DATA))
    assert not isinstance(info.value, IntegrityError)
    assert len(t.sleeps) == 3 and len(fake.ranges) == 4


async def test_progress_renews_the_budget() -> None:
    # 12 breaks, each after 2 MiB of progress: more breaks than attempts, and still exact
    data = os.urandom(30 * 1024 * 1024)
    fake = FakeContent(data=data, script=[("drop", 2 * 1024 * 1024)] * 12)
    client, _ = make(fake, max_attempts=3)
    assert await fetch(client, 0, len(data)) == data


async def test_file_shorter_than_asked_is_an_integrity_error() -> None:
    client, _ = make(FakeContent())
    with pytest.raises(IntegrityError, match=r"only 3145805 bytes"):
        await fetch(client, 0, len(DATA) + 1)
    client, _ = make(FakeContent(range_ok=False))
    with pytest.raises(IntegrityError, match=r"only 3145805 bytes"):
        await fetch(client, 0, len(DATA) + 1)


async def test_chunked_body_ending_early_is_an_integrity_error() -> None:
    short = httpx.Response(200, stream=Body(DATA[:1000]))  # no Content-Length: the file is 1000 bytes
    client, _ = make(FakeContent(range_ok=False, script=[short]))
    with pytest.raises(IntegrityError, match="only 1000 bytes"):
        await fetch(client, 0, 5000)


async def test_wrong_content_range_is_an_integrity_error() -> None:
    bad = httpx.Response(206, headers={"content-range": "bytes 0-9/100"}, stream=Body(DATA[:10]))
    client, _ = make(FakeContent(script=[bad]))
    with pytest.raises(IntegrityError, match="asked for bytes from 5"):
        await fetch(client, 5, 10)


async def test_partial_206_continues_from_where_it_stopped() -> None:
    part = httpx.Response(
        206,
        headers={"content-range": f"bytes 0-99/{len(DATA)}", "content-length": "100"},
        stream=Body(DATA[:100]),
    )
    fake = FakeContent(script=[part])
    client, t = make(fake)
    assert await fetch(client, 0, 1000) == DATA[:1000]
    assert fake.ranges == ["bytes=0-999", "bytes=100-999"] and t.sleeps == []


async def test_404_is_not_retried() -> None:
    fake = FakeContent()
    client, t = make(fake)
    with pytest.raises(NotFoundError) as info:
        await fetch(client, 0, 10, file_id="file-zzz")
    assert info.value.file_id == "file-zzz" and info.value.param == "id"
    assert str(info.value) == ("download request of file-zzz failed with HTTP 404: No such File object: x")
    assert t.sleeps == [] and client.stats.requests["files.content"] == 1


async def test_server_errors_are_retried_with_backoff_and_retry_after() -> None:
    script: list[object] = [
        httpx.Response(503, text="upstream down"),
        httpx.Response(
            429,
            headers={"retry-after-ms": "250"},
            json={
                "error": {
                    "message": "slow down",
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                    "param": None,
                }
            },
        ),
    ]
    client, t = make(FakeContent(script=script))
    assert await fetch(client, 0, 100) == DATA[:100]
    assert 0.375 < t.sleeps[0] <= 0.5 and t.sleeps[1] == pytest.approx(0.25)


async def test_gives_up_on_persistent_5xx_with_its_message() -> None:
    client, t = make(
        FakeContent(script=[httpx.Response(503, text="<html>\nBad gateway\n</html>")] * 10), max_attempts=3
    )
    with pytest.raises(ServerError) as info:
        await fetch(client, 0, 100)
    assert info.value.status == 503 and info.value.message == "<html> Bad gateway </html>"
    assert len(t.sleeps) == 2


async def test_quota_429_is_not_retried() -> None:
    quota = httpx.Response(
        429,
        json={
            "error": {
                "message": "You exceeded your current quota",
                "type": "insufficient_quota",
                "code": "insufficient_quota",
                "param": None,
            }
        },
    )
    client, t = make(FakeContent(script=[quota]))
    with pytest.raises(QuotaExceededError):
        await fetch(client, 0, 100)
    assert t.sleeps == []


async def test_server_delay_beyond_limit_gives_up_at_once() -> None:
    slow = httpx.Response(429, headers={"retry-after": "600"}, json={"error": {"message": "later"}})
    client, t = make(FakeContent(script=[slow]))
    with pytest.raises(RateLimitError) as info:
        await fetch(client, 0, 100)
    assert not isinstance(info.value, QuotaExceededError)
    assert t.sleeps == []


async def test_empty_range_makes_no_request() -> None:
    fake = FakeContent()
    client, _ = make(fake)
    assert await fetch(client, 7, 7) == b""
    assert fake.ranges == []
    with pytest.raises(ValueError):
        await fetch(client, 7, 6)


async def test_stopping_early_releases_the_stream() -> None:
    fake = FakeContent()
    client, _ = make(fake)
    async with aclosing(client.download("file-1", 0, len(DATA))) as chunks:
        async for chunk in chunks:
            assert chunk == DATA[: len(chunk)]
            break
    assert await fetch(client, 0, 10) == DATA[:10]


async def test_a_key_echoed_by_the_server_is_scrubbed() -> None:
    echo = httpx.Response(
        401,
        json={
            "error": {
                "message": "Incorrect API key provided: sk-unit-test-key-0000.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        },
    )
    client, _ = make(FakeContent(script=[echo]))
    with pytest.raises(AuthenticationError) as info:
        await fetch(client, 0, 1)
    assert "sk-unit-test-key-0000" not in str(info.value) + repr(info.value)
    assert "[redacted]" in str(info.value)
