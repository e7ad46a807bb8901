"""Content over the real FilesClient and a real ``openaifs serve``, with Range and with --no-range.

The same behaviours the unit tests prove against the FakeClient, here across a socket: exact bytes
(sha256 of a 64 MiB file read in random-order 128 KiB pieces, and sequentially), one download's worth
of server bytes for concurrent readers, refused purposes, and the cache surviving a new store.
Server bytes are counted by the server itself (``/_admin/stats``).
"""

from __future__ import annotations

import errno
import hashlib
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from openaifs.client import FilesClient
from openaifs.config import ClientConfig
from openaifs.content import Content, ContentHandle, ContentStore
from openaifs.errors import DownloadForbiddenError, errno_for
from tests.conftest import TEST_KEY
from tests.support.server import LocalServer

KiB = 1024
MiB = 1024 * KiB
SIZE = 64 * MiB
PIECE = 128 * KiB  # the kernel's default read size
SLACK = 1 * MiB  # the client reads a body in network-sized pieces, so it may read a little past a cut


def payload(size: int, seed: int = 7) -> bytes:
    """Pseudo-random bytes, every MiB distinct (a misplaced block changes the hash)."""
    blocks = (hashlib.shake_256(b"%d-%d" % (seed, i)).digest(MiB) for i in range(size // MiB + 1))
    return b"".join(blocks)[:size]


@pytest.fixture(params=[True, False], ids=["range", "no-range"])
def ranged_server(request: pytest.FixtureRequest, server_factory: Callable[..., LocalServer]) -> LocalServer:
    server = server_factory() if request.param else server_factory("--no-range")
    server.range = request.param  # type: ignore[attr-defined]
    return server


@asynccontextmanager
async def content_over(server: LocalServer, cache: Path, **kw: object) -> AsyncIterator[Content]:
    cfg = ClientConfig(base_url=server.base_url, api_key=TEST_KEY)
    async with FilesClient.make_http(cfg) as http:
        client = FilesClient(cfg, http)
        async with trio.open_nursery() as nursery:
            content = Content(client, ContentStore(cache, 1 << 40), nursery, **kw)  # type: ignore[arg-type]
            try:
                yield content
            finally:
                await content.aclose()


def sent(server: LocalServer) -> int:
    """Body bytes the server handed to its socket. Exact with Range. Without it the server goes on
    counting a body after the client has hung up, so there the client's own count is the measure."""
    return int(server.stats()["bytes_sent"].get("files.content", 0))


def received(content: Content) -> int:
    """Body bytes the client read from its sockets (skipped prefixes included)."""
    client = content.client
    assert isinstance(client, FilesClient)
    return client.stats.bytes_down


async def read_sequentially(content: Content, handle: ContentHandle, piece: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while data := await content.read(handle, offset, piece):
        digest.update(data)
        offset += len(data)
    assert offset == handle.size
    return digest.hexdigest()


async def test_random_order_then_sequential_reads_are_exact(ranged_server: LocalServer,
                                                            tmp_path: Path) -> None:
    server = ranged_server
    data = payload(SIZE)
    want = hashlib.sha256(data).hexdigest()
    file_id = server.add_file("batch_output", "big.jsonl", data)["id"]
    offsets = list(range(0, SIZE, PIECE))
    random.Random(1).shuffle(offsets)

    server.reset_stats()
    async with content_over(server, tmp_path / "a") as content:
        handle = await content.open(file_id, SIZE, "batch_output")
        out = bytearray(SIZE)
        for offset in offsets:
            out[offset:offset + PIECE] = await content.read(handle, offset, PIECE)
        await content.release(handle)
        down = received(content)
    assert hashlib.sha256(out).hexdigest() == want
    if server.range:  # type: ignore[attr-defined]
        assert sent(server) == SIZE == down  # every byte exactly once
    else:  # a first ranged try (support unknown: the body came from 0), then one stream from 0
        assert server.requests("files.content") == 2
        assert down <= offsets[0] + PIECE + SIZE + SLACK

    server.reset_stats()
    async with content_over(server, tmp_path / "b") as content:
        handle = await content.open(file_id, SIZE, "batch_output")
        assert await read_sequentially(content, handle, PIECE) == want
        await content.release(handle)
        assert content.stats.fetches <= 16  # read-ahead grew: not one request per 128 KiB
        down = received(content)
    if server.range:  # type: ignore[attr-defined]
        assert sent(server) == SIZE == down
    else:
        assert server.requests("files.content") == 2 and down <= SIZE + 2 * PIECE + SLACK

    server.reset_stats()
    async with content_over(server, tmp_path / "b") as content:  # a new store on the same directory
        handle = await content.open(file_id, SIZE, "batch_output")
        assert await read_sequentially(content, handle, MiB) == want
        await content.release(handle)
    assert sent(server) == 0 and server.requests("files.content") == 0


async def test_eight_readers_cost_one_download(ranged_server: LocalServer, tmp_path: Path) -> None:
    server = ranged_server
    data = payload(32 * MiB, seed=2)
    want = hashlib.sha256(data).hexdigest()
    file_id = server.add_file("batch_output", "shared.jsonl", data)["id"]
    server.reset_stats()
    got: list[str] = []
    async with content_over(server, tmp_path) as content:

        async def reader() -> None:
            handle = await content.open(file_id, len(data), "batch_output")
            got.append(await read_sequentially(content, handle, PIECE))
            await content.release(handle)

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(reader)
        down = received(content)
    assert got == [want] * 8
    if server.range:  # type: ignore[attr-defined]
        assert sent(server) == len(data) == down
    else:
        assert server.requests("files.content") <= 2 and down <= len(data) + 2 * PIECE + SLACK


async def test_refused_purpose_over_http(server: LocalServer, tmp_path: Path) -> None:
    a = server.add_file("assistants", "a.txt", b"secret")["id"]
    b = server.add_file("assistants", "b.txt", b"other")["id"]
    async with content_over(server, tmp_path) as content:
        handle = await content.open(a, 6, "assistants")
        with pytest.raises(DownloadForbiddenError) as info:
            await content.read(handle, 0, 6)
        assert errno_for(info.value) == errno.EACCES
        await content.release(handle)
        before = server.requests("files.content")
        with pytest.raises(DownloadForbiddenError):
            await content.open(b, 5, "assistants")
        assert server.requests("files.content") == before  # remembered: no second request


async def test_sniffing_many_files_costs_little(ranged_server: LocalServer, tmp_path: Path) -> None:
    """A file manager opening a folder: read 4 KiB of each big file and close it."""
    server = ranged_server
    ids = [server.add_file("batch_output", f"f{i}.jsonl", payload(8 * MiB, seed=10 + i))["id"]
           for i in range(5)]
    server.reset_stats()
    async with content_over(server, tmp_path) as content:
        for file_id in ids:
            handle = await content.open(file_id, 8 * MiB, "batch_output")
            assert len(await content.read(handle, 0, 4096)) == 4096
            await content.release(handle)
        await content.drain()
        down = received(content)
    if server.range:  # type: ignore[attr-defined]
        # 128 KiB a file at most (a fetch still running at close is cancelled, so maybe less)
        assert down <= sent(server) <= 5 * PIECE
    else:  # each stream is cancelled at close: what was in flight by then, far from whole files
        assert down <= 5 * 8 * MiB // 4, down
