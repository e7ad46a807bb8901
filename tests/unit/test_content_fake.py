"""A verified fake of the part of ``FilesClient`` the content cache uses, and the tests that verify it.

``FakeClient.download(file_id, start, end)`` is an async generator yielding exactly ``[start, end)``
in pieces, like ``FilesClient.download``. It honours Range or not (without it, ``bytes_sent`` counts
the prefix a real server would have sent and the client skipped), answers ``range_supported()`` with
None until the first download, counts requests and bytes, and can fail (typed errors, after N bytes),
refuse downloads, or stall at an offset until a test lets it go. Contract tests in
``tests/contract/test_content_real.py`` run the same scenarios against the real client and server.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from openaifs.errors import DownloadForbiddenError, NotFoundError, OpenAIFSError

KiB = 1024
MiB = 1024 * KiB


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (fast: 64 MiB in ~0.1 s): a misplaced byte shows."""
    return hashlib.shake_256(b"openaifs-content-%d" % seed).digest(size)


@dataclass
class _Failure:
    exc: Exception
    after: int  # bytes of the request yielded before raising


class FakeClient:
    def __init__(self, files: dict[str, bytes] | None = None, *, ranges: bool = True, piece: int = 64 * KiB,
                 forbidden: set[str] | None = None) -> None:
        self.files = dict(files or {})
        self.ranges = ranges
        self.piece = piece
        self.forbidden = set(forbidden or ())
        self.requests: list[tuple[str, int, int]] = []
        self.bytes_sent = 0  # what the server put on the wire (incl. skipped prefixes without Range)
        self.bytes_yielded = 0
        self.active = 0  # downloads currently open
        self.closed_early = 0  # downloads closed (aclose) before their end: cancelled or abandoned
        self._failures: list[_Failure] = []
        self._known: bool | None = None
        self.gate: trio.Event | None = None
        self.gate_at: int = 0  # downloads stall before yielding bytes from this offset until gate is set
        self.reached_gate = trio.Event()

    def fail_next(self, exc: Exception, after: int = 0) -> None:
        """The next request raises ``exc`` once it has yielded ``after`` bytes."""
        self._failures.append(_Failure(exc, after))

    def stall_at(self, offset: int) -> trio.Event:
        """Downloads stop before offset ``offset`` until the returned event is set."""
        self.gate = trio.Event()
        self.gate_at = offset
        self.reached_gate = trio.Event()
        return self.gate

    async def range_supported(self) -> bool | None:
        return self._known

    def request_sizes(self) -> list[int]:
        return [end - start for _, start, end in self.requests]

    async def download(self, file_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        await trio.lowlevel.checkpoint()
        self.requests.append((file_id, start, end))
        if file_id not in self.files:
            raise NotFoundError(404, f"No such File object: {file_id}", file_id=file_id, operation="download")
        data = self.files[file_id]
        assert 0 <= start <= end <= len(data), (start, end, len(data))
        if file_id in self.forbidden:
            raise DownloadForbiddenError(400, "Not allowed to download files of purpose: assistants",
                                         file_id=file_id, operation="download")
        failure = self._failures.pop(0) if self._failures else None
        self._known = self.ranges
        if not self.ranges:
            self.bytes_sent += start  # the server sent the prefix; the client skipped it
        pos = start
        self.active += 1
        try:
            while pos < end:
                if failure is not None and pos - start >= failure.after:
                    raise failure.exc
                if self.gate is not None and not self.gate.is_set() and pos + self.piece > self.gate_at:
                    if pos < self.gate_at:  # yield up to the gate, then stall
                        n = self.gate_at - pos
                    else:
                        self.reached_gate.set()
                        await self.gate.wait()
                        continue
                else:
                    n = min(self.piece, end - pos)
                if failure is not None:
                    n = min(n, start + failure.after - pos)
                n = min(n, end - pos)
                await trio.lowlevel.checkpoint()
                self.bytes_sent += n
                self.bytes_yielded += n
                yield data[pos:pos + n]
                pos += n
        finally:
            self.active -= 1
            if pos < end:
                self.closed_early += 1


# -- verification of the fake -----------------------------------------------------------------------

async def collect(client: FakeClient, file_id: str, start: int, end: int) -> bytes:
    out = bytearray()
    async for piece in client.download(file_id, start, end):
        out += piece
    return bytes(out)


@pytest.mark.parametrize("ranges", [True, False])
async def test_fake_yields_exactly_the_range(ranges: bool) -> None:
    data = pattern(300 * KiB)
    client = FakeClient({"f": data}, ranges=ranges, piece=7 * KiB)
    assert await client.range_supported() is None
    for start, end in [(0, len(data)), (5, 6), (100 * KiB + 3, 299 * KiB), (10, 10)]:
        assert await collect(client, "f", start, end) == data[start:end]
    assert await client.range_supported() is ranges
    assert len(client.requests) == 4


async def test_fake_counts_the_skipped_prefix_without_range() -> None:
    client = FakeClient({"f": pattern(1000)}, ranges=False)
    await collect(client, "f", 600, 1000)
    assert client.bytes_sent == 1000 and client.bytes_yielded == 400


async def test_fake_fails_after_n_bytes_and_refuses() -> None:
    client = FakeClient({"f": pattern(1000), "g": pattern(10)}, piece=100, forbidden={"g"})
    client.fail_next(OpenAIFSError("boom"), after=250)
    got = bytearray()
    with pytest.raises(OpenAIFSError, match="boom"):
        async for piece in client.download("f", 0, 1000):
            got += piece
    assert bytes(got) == pattern(1000)[:250]
    with pytest.raises(DownloadForbiddenError):
        await collect(client, "g", 0, 10)
    with pytest.raises(NotFoundError):
        await collect(client, "nope", 0, 1)


async def test_fake_stalls_at_the_gate_until_released() -> None:
    data = pattern(1000)
    client = FakeClient({"f": data}, piece=300)
    gate = client.stall_at(450)
    got = bytearray()

    async def reader() -> None:
        async for piece in client.download("f", 0, 1000):
            got.extend(piece)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await client.reached_gate.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert bytes(got) == data[:450]
        gate.set()
    assert bytes(got) == data


async def test_fake_counts_downloads_closed_early() -> None:
    client = FakeClient({"f": pattern(1000)}, piece=100)
    gen = client.download("f", 0, 1000)
    assert await gen.__anext__() == pattern(1000)[:100]  # type: ignore[attr-defined]
    await gen.aclose()  # type: ignore[attr-defined]
    assert client.closed_early == 1 and client.active == 0
