"""Content (the facade fs.py uses) over the verified FakeClient: laziness, exact bytes, read-ahead,
shared downloads, no-Range streaming, cancellation, failures, forbidden purposes, adopt, discard,
persistence and eviction. Deterministic: no sleeps; tasks settle with wait_all_tasks_blocked."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openaifs.content import Content, ContentHandle, ContentStore, cache_key, facade
from openaifs.errors import DownloadForbiddenError, NotFoundError, ServerError, errno_for
from tests.unit.test_content_fake import FakeClient, pattern

KiB = 1024
MiB = 1024 * KiB

# Small sizes so that little files cross many chunk and batch boundaries.
SMALL = dict(first_chunk=4 * KiB, chunk_min=8 * KiB, chunk_max=32 * KiB, write_batch=8 * KiB,
             commit_every=64 * KiB, seq_slack=4 * KiB)


@asynccontextmanager
async def content_for(cache: Path, client: FakeClient, max_bytes: int = 1 << 40,
                      **kw: Any) -> AsyncIterator[Content]:
    store = ContentStore(cache, max_bytes)
    async with trio.open_nursery() as nursery:
        content = Content(client, store, nursery, **kw)
        try:
            yield content
        finally:
            await content.aclose()


async def read_all(content: Content, handle: ContentHandle, piece: int) -> bytes:
    out = bytearray()
    offset = 0
    while True:
        data = await content.read(handle, offset, piece)
        if not data:
            return bytes(out)
        out += data
        offset += len(data)


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


# -- laziness and exactness --------------------------------------------------------------------------

async def test_open_fetches_nothing_and_a_read_fetches_a_small_first_chunk(tmp_path: Path) -> None:
    data = pattern(10 * MiB)
    client = FakeClient({"f": data})
    async with content_for(tmp_path, client) as content:
        handle = await content.open("f", len(data), "batch")
        await settle()
        assert client.requests == []
        assert await content.read(handle, 0, 4096) == data[:4096]
        assert client.requests == [("f", 0, 128 * KiB)]  # a sniff costs 128 KiB, not the file
        assert await content.read(handle, 100, 1000) == data[100:1100]
        assert len(client.requests) == 1 and content.stats.hits == 1 and content.stats.misses == 1
        await content.release(handle)


async def test_a_small_file_is_one_request_and_a_big_one_starts_small(tmp_path: Path) -> None:
    """A request costs more than a MiB of bytes: a file whose rest after the first chunk is under
    ``chunk_min`` comes in one request; a bigger file's first read still fetches 128 KiB only."""
    small, big = pattern(MiB + 100 * KiB, seed=1), pattern(3 * MiB, seed=2)
    client = FakeClient({"small": small, "big": big})
    async with content_for(tmp_path, client) as content:
        handle = await content.open("small", len(small), "vision")
        assert await read_all(content, handle, 128 * KiB) == small
        await content.release(handle)
        assert client.requests == [("small", 0, len(small))]
        handle = await content.open("big", len(big), "vision")
        assert await content.read(handle, 0, 4096) == big[:4096]
        assert client.requests[1:] == [("big", 0, 128 * KiB)]
        await content.release(handle)


async def test_eof_clipping_and_empty_files(tmp_path: Path) -> None:
    data = pattern(1000)
    client = FakeClient({"f": data, "empty": b""})
    async with content_for(tmp_path, client) as content:
        handle = await content.open("f", 1000, "batch")
        assert await content.read(handle, 990, 4096) == data[990:]
        assert await content.read(handle, 1000, 10) == b""
        assert await content.read(handle, 5000, 10) == b""
        assert await content.read(handle, 10, 0) == b""
        await content.release(handle)
        empty = await content.open("empty", 0, "batch")
        assert await content.read(empty, 0, 4096) == b""
        await content.release(empty)
    assert client.requests == [("f", 990, 1000)]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(cache_key("empty"))]


reads = st.lists(st.lists(st.tuples(st.integers(0, 140 * KiB), st.integers(1, 40 * KiB)),
                          min_size=1, max_size=6), min_size=1, max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=reads, ranges=st.booleans(), piece=st.sampled_from([1000, 3 * KiB, 64 * KiB]),
       churn=st.lists(st.booleans(), min_size=5, max_size=5))
async def test_random_concurrent_reads_return_exact_bytes(batches: list[list[tuple[int, int]]],
                                                         ranges: bool, piece: int, churn: list[bool]) -> None:
    size = 131 * KiB + 7
    data = pattern(size, seed=3)
    client = FakeClient({"f": data}, ranges=ranges, piece=piece)
    with tempfile.TemporaryDirectory() as tmp:
        async with content_for(Path(tmp), client, **SMALL) as content:
            handles = [await content.open("f", size, "batch") for _ in range(3)]
            results: dict[int, bytes] = {}

            async def one(i: int, offset: int, length: int) -> None:
                results[i] = await content.read(handles[i % 3], offset, length)

            for batch, close_all in zip(batches, churn, strict=False):
                results.clear()
                async with trio.open_nursery() as nursery:  # each batch runs concurrently
                    for i, (offset, length) in enumerate(batch):
                        nursery.start_soon(one, i, offset, length)
                for i, (offset, length) in enumerate(batch):
                    assert results[i] == data[offset:offset + length]
                if close_all:  # every handle closed: running read-ahead is cancelled, prefixes kept
                    for handle in handles:
                        await content.release(handle)
                    handles = [await content.open("f", size, "batch") for _ in range(3)]
            for handle in handles:
                await content.release(handle)
    if ranges:  # a byte that arrived is never fetched again, cancelled or not
        assert client.bytes_yielded <= size


# -- read-ahead ---------------------------------------------------------------------------------------

async def test_sequential_reads_grow_the_read_ahead_up_to_the_cap(tmp_path: Path) -> None:
    size = 64 * MiB
    data = pattern(size)
    client = FakeClient({"f": data}, piece=256 * KiB)
    async with content_for(tmp_path, client) as content:
        handle = await content.open("f", size, "batch")
        digest = hashlib.sha256(await read_all(content, handle, 128 * KiB)).digest()
        await content.release(handle)
    assert digest == hashlib.sha256(data).digest()
    sizes = [end - start for _, start, end in sorted(client.requests)]  # tasks start in any order
    assert sizes[0] == 128 * KiB  # the first read: small (it may be a sniff)
    assert max(sizes) == 16 * MiB  # CHUNK_MAX
    grown = sizes[2:sizes.index(16 * MiB) + 1]  # the read-ahead chunks double up to the cap
    assert grown == sorted(grown) and grown[0] == 1 * MiB
    assert sizes[sizes.index(16 * MiB):-1] == [16 * MiB] * (len(sizes) - sizes.index(16 * MiB) - 1)
    assert sum(sizes) == size and client.bytes_yielded == size  # nothing fetched twice
    assert len(sizes) <= 16  # 64 MiB in about a dozen requests, not 512
    assert content.stats.hits > content.stats.misses  # read-ahead ran ahead of the reader


async def test_random_reads_stay_small(tmp_path: Path) -> None:
    data = pattern(16 * MiB)
    client = FakeClient({"f": data})
    async with content_for(tmp_path, client) as content:
        handle = await content.open("f", len(data), "batch")
        for offset in (9 * MiB, 2 * MiB, 14 * MiB, 5 * MiB):
            assert await content.read(handle, offset, 4096) == data[offset:offset + 4096]
        await content.release(handle)
    assert client.request_sizes() == [128 * KiB] * 4


async def test_read_ahead_respects_the_in_flight_bound(tmp_path: Path) -> None:
    data = pattern(8 * MiB)
    client = FakeClient({"f": data}, piece=64 * KiB)
    gate = client.stall_at(8 * MiB)  # nothing completes... until we let it
    gate.set()
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, client.active)
            await trio.lowlevel.checkpoint()

    async with content_for(tmp_path, client, chunk_max=1 * MiB, max_inflight=2) as content:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            handle = await content.open("f", len(data), "batch")
            assert await read_all(content, handle, 128 * KiB) == data
            await content.release(handle)
            nursery.cancel_scope.cancel()
    assert 1 <= most <= 3  # 2 read-ahead fetches + 1 that a reader needed at once


# -- sharing --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ranges", [True, False])
async def test_eight_concurrent_readers_share_one_download(tmp_path: Path, ranges: bool) -> None:
    size = 24 * MiB + 12345
    data = pattern(size)
    client = FakeClient({"f": data}, ranges=ranges, piece=64 * KiB)
    digests: list[bytes] = []

    async def reader(content: Content) -> None:
        handle = await content.open("f", size, "batch")
        digests.append(hashlib.sha256(await read_all(content, handle, 128 * KiB)).digest())
        await content.release(handle)

    async with content_for(tmp_path, client) as content:
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(reader, content)
    assert digests == [hashlib.sha256(data).digest()] * 8
    if ranges:
        assert client.bytes_sent == size
    else:  # one probe of the first chunk (Range support still unknown), then one stream
        assert client.bytes_sent <= size + 128 * KiB
        assert len(client.requests) <= 2


# -- no Range: one stream, waiters woken as their bytes arrive ------------------------------------------

async def test_without_range_readers_wait_only_for_their_bytes(tmp_path: Path) -> None:
    data = pattern(4 * MiB)
    client = FakeClient({"f": data, "probe": b"x"}, ranges=False, piece=32 * KiB)
    got: dict[str, bytes] = {}
    async with content_for(tmp_path, client) as content:
        probe = await content.open("probe", 1, "batch")  # teaches the client: no Range
        await content.read(probe, 0, 1)
        await content.release(probe)
        gate = client.stall_at(2 * MiB)
        handle = await content.open("f", len(data), "batch")

        two_done = trio.Event()

        async def read(name: str, offset: int, length: int) -> None:
            got[name] = await content.read(handle, offset, length)
            if len(got) == 2:
                two_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, "far", 3 * MiB, 4096)
            nursery.start_soon(read, "near", 1 * MiB, 4096)
            nursery.start_soon(read, "start", 0, 4096)
            await client.reached_gate.wait()
            await two_done.wait()  # (if these waited for the gate, the test would hang: a failure)
            assert got == {"start": data[:4096], "near": data[MiB:MiB + 4096]}  # served before the gate
            assert not gate.is_set()
            gate.set()
        assert got["far"] == data[3 * MiB:3 * MiB + 4096]
        await content.release(handle)
    assert client.requests[1:] == [("f", 0, 4 * MiB)]  # one stream for all three readers


# -- cancelling what nobody wants -----------------------------------------------------------------------

@pytest.mark.parametrize("ranges", [True, False])
async def test_last_release_cancels_downloads_and_keeps_the_prefix(tmp_path: Path, ranges: bool) -> None:
    data = pattern(32 * MiB)
    client = FakeClient({"f": data}, ranges=ranges, piece=16 * KiB)
    client._known = ranges  # as if an earlier download had taught the client
    async with content_for(tmp_path, client) as content:
        gate = client.stall_at(300 * KiB)
        handle = await content.open("f", len(data), "batch")
        for offset in range(0, 256 * KiB, 64 * KiB):  # sequential: read-ahead starts
            assert await content.read(handle, offset, 64 * KiB) == data[offset:offset + 64 * KiB]
        await client.reached_gate.wait()
        await settle()
        assert client.active >= 1
        await content.release(handle)  # a file manager done sniffing
        await content.drain()
        assert client.active == 0 and client.closed_early >= 1
        assert content.stats.cancelled >= 1
        entry = content.store.get("f")
        assert entry is not None and entry.ranges.contains(0, 300 * KiB)  # what arrived is kept
        assert client.bytes_yielded < 1 * MiB  # far less than the file
        gate.set()
        requests = len(client.requests)
        handle = await content.open("f", len(data), "batch")
        assert await content.read(handle, 0, 300 * KiB) == data[:300 * KiB]
        assert len(client.requests) == requests  # the prefix is served from the cache
        await content.release(handle)
    again = ContentStore(tmp_path, 1 << 40)  # and it was recorded
    kept = again.get("f")
    assert kept is not None and kept.ranges.contains(0, 300 * KiB)
    again.close()


async def test_a_reader_giving_up_does_not_cancel_the_shared_download(tmp_path: Path) -> None:
    data = pattern(1 * MiB)
    client = FakeClient({"f": data}, piece=16 * KiB)
    async with content_for(tmp_path, client) as content:
        gate = client.stall_at(64 * KiB)
        a = await content.open("f", len(data), "batch")
        b = await content.open("f", len(data), "batch")
        with trio.move_on_after(1) as scope:  # an interrupted read (autojump clock not needed:
            scope.cancel()                    # cancelled before it can wait)
            await content.read(a, 0, 100 * KiB)
        result: list[bytes] = []

        async def read_b() -> None:
            result.append(await content.read(b, 0, 100 * KiB))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_b)
            await client.reached_gate.wait()
            gate.set()
        assert result == [data[:100 * KiB]]
        await content.release(a)
        await content.release(b)


# -- failures -------------------------------------------------------------------------------------------

async def test_a_failed_chunk_raises_typed_logs_the_id_and_the_next_read_retries(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that failed fails again at once through the same handle for FAILURE_MEMORY seconds (the
    kernel's immediate retry must not wait out the same timeouts again); a new open, or the same handle
    after that, tries again."""
    monkeypatch.setattr(facade, "FAILURE_MEMORY", 0.2)
    data = pattern(1 * MiB)
    client = FakeClient({"file-flaky": data}, piece=16 * KiB)
    client.fail_next(ServerError(500, "boom", file_id="file-flaky", operation="download"), after=48 * KiB)
    async with content_for(tmp_path, client) as content:
        handle = await content.open("file-flaky", len(data), "batch")
        with caplog.at_level(logging.WARNING, logger="openaifs.content"), pytest.raises(ServerError):
            await content.read(handle, 100 * KiB, 64 * KiB)  # fetch [100K, 228K) fails after 48 KiB
        assert errno_for(ServerError(500, "x")) == errno.EIO
        assert any("file-flaky" in r.getMessage() for r in caplog.records)
        entry = content.store.get("file-flaky")
        assert entry is not None and entry.ranges.as_list() == [(100 * KiB, 148 * KiB)]  # kept
        with pytest.raises(ServerError):  # at once, without a request: the kernel's own retry
            await content.read(handle, 100 * KiB, 64 * KiB)
        assert len(client.requests) == 1
        assert await content.read(handle, 100 * KiB, 40 * KiB) == data[100 * KiB:140 * KiB]  # cached: fine
        other = await content.open("file-flaky", len(data), "batch")  # a new open tries again at once
        assert await content.read(other, 200 * KiB, 10) == data[200 * KiB:200 * KiB + 10]
        await content.release(other)
        await trio.sleep(0.2)
        assert await content.read(handle, 100 * KiB, 64 * KiB) == data[100 * KiB:164 * KiB]  # retried
        again = sorted(start for _, start, _ in client.requests[1:])
        assert again[0] == 148 * KiB  # only the missing part was asked again
        assert content.stats.failures == 1
        client.fail_next(ServerError(503, "again"), after=0)
        with pytest.raises(ServerError):
            await content.read(handle, 0, 10)
        await trio.sleep(0.2)
        assert await content.read(handle, 0, 10) == data[:10]
        await content.release(handle)


async def test_a_missing_file_is_a_typed_error(tmp_path: Path) -> None:
    client = FakeClient({})
    async with content_for(tmp_path, client) as content:
        handle = await content.open("file-gone", 100, "batch")
        with pytest.raises(NotFoundError):
            await content.read(handle, 0, 100)
        await content.release(handle)


async def test_forbidden_purpose_is_remembered(tmp_path: Path) -> None:
    client = FakeClient({"a1": pattern(100), "a2": pattern(100), "b1": pattern(100)}, forbidden={"a1", "a2"})
    async with content_for(tmp_path, client) as content:
        h = await content.open("a1", 100, "assistants")  # open: no network, so it cannot know yet
        with pytest.raises(DownloadForbiddenError) as info:
            await content.read(h, 0, 100)
        assert errno_for(info.value) == errno.EACCES
        await content.release(h)
        assert content.refused_purposes == {"assistants"}
        requests = len(client.requests)
        with pytest.raises(DownloadForbiddenError) as info:
            await content.open("a2", 100, "assistants")  # fails fast, no request
        assert info.value.file_id == "a2" and errno_for(info.value) == errno.EACCES
        assert len(client.requests) == requests
        # a completely cached file of that purpose still opens (e.g. one this mount uploaded)
        spool = tmp_path.parent / "spool-a3"
        spool.write_bytes(b"mine")
        assert content.adopt("a3", spool, 4)
        h = await content.open("a3", 4, "assistants")
        assert await content.read(h, 0, 10) == b"mine"
        await content.release(h)
        h = await content.open("b1", 100, "batch")  # other purposes are unaffected
        assert await content.read(h, 0, 100) == pattern(100)
        await content.release(h)


# -- adopt, discard, materialize/link ------------------------------------------------------------------

async def test_adopt_seeds_the_cache_without_a_download(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.write_bytes(pattern(200 * KiB))
    client = FakeClient({})
    cache = tmp_path / "content"
    async with content_for(cache, client) as content:
        assert content.adopt("file-up", spool, 200 * KiB)
        assert not spool.exists() and content.is_cached("file-up")
        h = await content.open("file-up", 200 * KiB, "batch")
        assert await content.read(h, 1000, 5000) == pattern(200 * KiB)[1000:6000]
        await content.release(h)
        await content.drain()
        assert (cache / f"{cache_key('file-up')}.json").exists()  # recorded in the background
        other = tmp_path / "other"
        other.write_bytes(b"abc")
        assert not content.adopt("file-x", other, 4)  # wrong size: left to the caller
        assert other.exists()
    assert client.requests == []
    again = ContentStore(cache, 1 << 40)
    assert again.is_complete("file-up")
    again.close()


async def test_discard_while_open_defers_until_release(tmp_path: Path) -> None:
    data = pattern(100 * KiB)
    client = FakeClient({"f": data})
    async with content_for(tmp_path, client) as content:
        h = await content.open("f", len(data), "batch")
        assert await content.read(h, 0, 10) == data[:10]
        content.discard("f")
        assert not content.is_cached("f")
        assert not [n for n in os.listdir(tmp_path) if n.startswith(cache_key("f"))]
        assert await content.read(h, 50, 1000) == data[50:1050]  # still readable while open
        await content.release(h)
        assert content.store.get("f") is None


async def test_materialize_then_link_reuploads_without_downloading_twice(tmp_path: Path) -> None:
    data = pattern(3 * MiB + 5)
    client = FakeClient({"old": data})
    async with content_for(tmp_path, client) as content:
        path = await content.materialize("old", len(data), "batch")
        assert path.read_bytes() == data and client.bytes_sent == len(data)
        await content.drain()
        entry = content.store.get("old")
        assert entry is not None and entry.pins == 1  # pinned while the upload reads it
        assert content.link("new", "old")
        content.discard("old")
        h = await content.open("new", len(data), "fine-tune")
        assert await content.read(h, 0, len(data)) == data
        await content.release(h)
        assert (await content.materialize("e", 0, "batch")).read_bytes() == b""
    assert client.bytes_sent == len(data)


# -- persistence, eviction, shutdown -------------------------------------------------------------------

async def test_cache_survives_a_remount(tmp_path: Path) -> None:
    data = pattern(5 * MiB)
    client = FakeClient({"f": data, "g": pattern(300 * KiB)})
    async with content_for(tmp_path, client) as content:
        h = await content.open("f", len(data), "batch")
        assert await read_all(content, h, MiB) == data
        await content.release(h)
        g = await content.open("g", 300 * KiB, "batch")
        await content.read(g, 0, 10)  # g stays open, partly fetched, at unmount
    fetched = client.bytes_sent
    async with content_for(tmp_path, client) as content:
        h = await content.open("f", len(data), "batch")
        assert await read_all(content, h, 128 * KiB) == data
        await content.release(h)
        g = await content.open("g", 300 * KiB, "batch")
        assert await content.read(g, 0, 10) == pattern(300 * KiB)[:10]
        await content.release(g)
    assert client.bytes_sent == fetched  # nothing fetched again


async def test_lru_eviction_through_content_skips_open_files(tmp_path: Path) -> None:
    files = {name: pattern(MiB, seed=i) for i, name in enumerate("abcd")}
    client = FakeClient(files)
    async with content_for(tmp_path, client, max_bytes=int(2.5 * MiB)) as content:
        held = await content.open("a", MiB, "batch")
        assert await read_all(content, held, MiB) == files["a"]
        for name in "bcd":
            h = await content.open(name, MiB, "batch")
            assert await read_all(content, h, MiB) == files[name]
            await content.release(h)
            await content.drain()
        assert content.is_cached("a")  # the oldest, but open
        assert not content.is_cached("b") and not content.is_cached("c") and content.is_cached("d")
        assert content.store.total_bytes <= int(2.5 * MiB)
        await content.release(held)


async def test_cached_reads_take_no_thread_hop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = pattern(2 * MiB)
    client = FakeClient({"f": data})
    async with content_for(tmp_path, client) as content:
        h = await content.open("f", len(data), "batch")
        await read_all(content, h, MiB)
        await content.drain()
        hops = 0
        real = trio.to_thread.run_sync

        async def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal hops
            hops += 1
            return await real(*args, **kwargs)

        monkeypatch.setattr(trio.to_thread, "run_sync", counting)
        for offset in range(0, len(data), 128 * KiB):
            assert await content.read(h, offset, 128 * KiB) == data[offset:offset + 128 * KiB]
        assert hops == 0
        monkeypatch.undo()
        await content.release(h)


async def test_memory_per_download_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[int] = []
    real = ContentStore.pwrite_all

    def recording(fd: int, data: bytes, offset: int) -> None:
        writes.append(len(data))
        real(fd, data, offset)

    monkeypatch.setattr(ContentStore, "pwrite_all", staticmethod(recording))
    data = pattern(40 * MiB)
    client = FakeClient({"f": data}, ranges=False, piece=64 * KiB)
    client._known = False
    async with content_for(tmp_path, client) as content:
        h = await content.open("f", len(data), "batch")
        assert await read_all(content, h, 4 * MiB) == data
        await content.release(h)
    assert sum(writes) == len(data)
    assert max(writes) <= 1 * MiB + 64 * KiB  # WRITE_BATCH plus one network piece


async def test_aclose_stops_downloads_and_records_the_prefix(tmp_path: Path) -> None:
    data = pattern(4 * MiB)
    client = FakeClient({"f": data}, piece=16 * KiB)
    client._known = False
    async with content_for(tmp_path, client) as content:
        client.stall_at(200 * KiB)
        h = await content.open("f", len(data), "batch")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(content.read, h, 3 * MiB, 10)
            await client.reached_gate.wait()
            nursery.cancel_scope.cancel()  # the reader goes away, the handle stays open
    assert client.active == 0
    again = ContentStore(tmp_path, 1 << 40)
    entry = again.get("f")
    assert entry is not None and entry.ranges.as_list() == [(0, 200 * KiB)]
    again.close()


async def test_summary_reports_the_counters(tmp_path: Path) -> None:
    client = FakeClient({"f": pattern(MiB)})
    async with content_for(tmp_path, client) as content:
        h = await content.open("f", MiB, "batch")
        await read_all(content, h, 128 * KiB)
        await content.release(h)
        text = content.summary()
    assert "1.0 MiB fetched" in text and "cached reads" in text


async def test_a_long_download_records_its_ranges_on_the_way(tmp_path: Path) -> None:
    data = pattern(1 * MiB)
    client = FakeClient({"f": data}, piece=16 * KiB)
    async with content_for(tmp_path, client, commit_every=256 * KiB) as content:
        h = await content.open("f", len(data), "batch")
        assert await content.read(h, 0, 600 * KiB) == data[:600 * KiB]
        await content.drain()
        # Still open, so no idle commit has run: only the every-256-KiB one can have written this.
        doc = json.loads((tmp_path / f"{cache_key('f')}.json").read_text())
        assert sum(e - s for s, e in doc["ranges"]) >= 256 * KiB
        await content.release(h)


async def test_a_failing_commit_is_logged_once_and_not_retried_in_a_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def broken(*args: Any) -> None:
        nonlocal calls
        calls += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    data = pattern(200 * KiB)
    client = FakeClient({"f": data})
    async with content_for(tmp_path, client) as content:
        monkeypatch.setattr(content.store, "write_sidecar", broken)
        h = await content.open("f", len(data), "batch")
        assert await content.read(h, 0, len(data)) == data  # reads do not depend on recording
        await content.release(h)
        await content.drain()
        assert calls == 1
        assert "No space left" in caplog.text and "f" in caplog.text
        assert content.is_cached("f")  # cached for this mount, just not recorded for the next
        monkeypatch.undo()
    again = ContentStore(tmp_path, 1 << 40)
    assert again.get("f") is None  # nothing was recorded, so nothing is trusted
    again.close()


async def test_data_files_are_deleted_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unlinking 1 GiB took 200 ms here: evictions and discards must never do it in a handler."""
    on_loop: list[str] = []
    real_unlink = os.unlink

    def spy(path: Any, *args: Any, **kwargs: Any) -> None:
        if str(path).endswith(".data") and threading.current_thread() is threading.main_thread():
            on_loop.append(str(path))
        real_unlink(path, *args, **kwargs)

    files = {name: pattern(MiB, seed=i) for i, name in enumerate("abc")}
    client = FakeClient(files)
    async with content_for(tmp_path, client, max_bytes=int(1.5 * MiB)) as content:
        monkeypatch.setattr(os, "unlink", spy)
        for name in "abc":  # each read evicts the previous file
            h = await content.open(name, MiB, "batch")
            assert await read_all(content, h, MiB) == files[name]
            await content.release(h)
            await content.drain()
        held = await content.open("c", MiB, "batch")
        content.discard("c")  # open: the bytes stay readable, the blocks are freed later
        assert await content.read(held, 0, 10) == files["c"][:10]
        await content.release(held)
        await content.drain()
        assert content.store.stats.evicted_files == 2
        assert os.listdir(tmp_path / "trash") == []
        monkeypatch.undo()
    assert on_loop == []


async def test_a_bug_below_does_not_end_the_mount(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected exception in a download reaches the reader (fs.py maps it to EIO), is logged
    with its traceback, and never escapes into the nursery, which would end the mount."""
    data = pattern(100 * KiB)
    client = FakeClient({"f": data})
    client.fail_next(RuntimeError("a bug in the client"))
    async with content_for(tmp_path, client) as content:
        h = await content.open("f", len(data), "batch")
        with pytest.raises(RuntimeError, match="a bug"):
            await content.read(h, 0, 10)
        assert "failed unexpectedly" in caplog.text
        assert await content.read(h, 0, 10) == data[:10]
        await content.release(h)
