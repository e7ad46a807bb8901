"""Uploads API (``/uploads``: create, parts, complete, cancel) through FilesClient against a real
``openaifs serve``, with limits lowered so that tens of MiB take the multipart path."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
import trio

from openaifs.client import EarlierAttempt, FileRecord
from openaifs.client.transport import Failure
from openaifs.errors import APIError
from tests.contract.test_client_api import MiB, open_client, sha256_of_download, write_file
from tests.support.server import LocalServer


async def test_40_mib_in_parts_under_faults(server: LocalServer, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    digest = write_file(src, 40 * MiB + 4321)
    server.configure(max_part_bytes=4 * MiB)
    server.set_faults(
        error_rate={"uploads.parts": 0.2, "uploads.complete": 0.3, "uploads.create": 0.2},
        error_status=503,
        retry_after=0.05,
        drop_after_request_rate={"uploads.complete": 0.5},
        seed=3,
    )
    server.reset_stats()
    progress: list[int] = []
    async with open_client(
        server, single_upload_limit=8 * MiB, part_size=4 * MiB, part_concurrency=4
    ) as client:
        record = await client.upload(src, "big.bin", "vision", expires_after=7200, progress=progress.append)
        server.set_faults()
        assert record.bytes == src.stat().st_size and record.filename == "big.bin"
        assert record.expires_at == record.created_at + 7200
        assert [r.id for r in await client.list_all()] == [record.id]
        assert await sha256_of_download(client, record.id, 0, record.bytes) == (digest, record.bytes)
        assert client.stats.requests["files.create"] == 0
        assert server.requests("uploads.parts") == client.stats.requests["uploads.parts"] >= 11
        assert server.requests("uploads.cancel") == 0
    assert progress[-1] == src.stat().st_size


async def test_refused_part_cancels_the_upload(server: LocalServer, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    write_file(src, 9 * MiB)
    server.configure(max_part_bytes=2 * MiB)  # our parts of 4 MiB are too big
    async with open_client(server, single_upload_limit=8 * MiB, part_size=4 * MiB) as client:
        with pytest.raises(APIError) as info:
            await client.upload(src, "big.bin", "vision")
        assert 400 <= info.value.status < 500 and info.value.operation == "upload part"
        assert await client.list_all() == []
        assert client.stats.retries["uploads.parts"] == 0
    assert server.requests("uploads.cancel") == 1


@pytest.mark.slow
async def test_1_gib_in_parts(server: LocalServer, tmp_path: Path) -> None:
    src = tmp_path / "huge.bin"
    digest = write_file(src, 1024 * MiB)
    async with open_client(server, single_upload_limit=64 * MiB, part_size=64 * MiB) as client:
        record = await client.upload(src, "huge.bin", "vision")
        assert record.bytes == 1024 * MiB
        assert client.stats.requests["uploads.parts"] == 16
        assert await sha256_of_download(client, record.id, 0, record.bytes) == (digest, record.bytes)


class Pieces:
    """A file body that arrives a piece at a time, as a file being written does (class-based, as
    the client requires of a streamed body)."""

    def __init__(self, pieces: list[bytes], gate: trio.Event | None = None) -> None:
        self._pieces = list(pieces)
        self._gate = gate  # when given, the body waits there before its last piece

    def __aiter__(self) -> Pieces:
        return self

    async def __anext__(self) -> bytes:
        if not self._pieces:
            raise StopAsyncIteration
        if len(self._pieces) == 1 and self._gate is not None:
            await self._gate.wait()
        await trio.sleep(0.01)
        return self._pieces.pop(0)


async def test_a_streamed_upload_is_chunked_and_exact(server: LocalServer) -> None:
    pieces = [os.urandom(MiB + i * 1000) for i in range(5)]
    server.reset_stats()
    async with open_client(server) as client:
        record = await client.upload_streaming("grown.bin", "vision", Pieces(pieces))
        assert isinstance(record, FileRecord) and record.bytes == sum(map(len, pieces))
        data = b"".join(pieces)
        assert await sha256_of_download(client, record.id, 0, record.bytes) == (
            hashlib.sha256(data).hexdigest(), len(data))
    stats = server.stats()
    assert stats["requests"]["files.create"] == stats["chunked_requests"]["files.create"] == 1


async def test_a_streamed_upload_cut_off_stores_nothing(server: LocalServer) -> None:
    gate = trio.Event()
    async with open_client(server) as client:
        with trio.move_on_after(0.5):
            await client.upload_streaming("cut.bin", "vision", Pieces([b"a" * MiB, b"b" * MiB], gate))
        assert await client.list_all() == []
    assert server.requests("files.create") == 1


async def test_a_lost_answer_of_a_streamed_upload_is_found_not_sent_again(server: LocalServer, tmp_path: Path) -> None:
    """The server stored the streamed file but the answer never came: the upload that follows is
    told so (``earlier``), finds that file, and sends nothing again."""
    src = tmp_path / "lost.bin"
    write_file(src, 3 * MiB)
    data = src.read_bytes()
    server.set_faults(drop_after_request_rate={"files.create": 1.0}, seed=1)
    async with open_client(server) as client:
        started = time.time()
        failure = await client.upload_streaming("lost.bin", "vision", Pieces([data[:MiB], data[MiB:]]))
        assert isinstance(failure, Failure) and failure.reached
        server.set_faults()
        record = await client.upload(src, "lost.bin", "vision", earlier=EarlierAttempt(started, failure.reached))
        assert [r.id for r in await client.list_all()] == [record.id] and record.bytes == len(data)
        assert client.stats.adopted_uploads == 1
    assert server.requests("files.create") == 1
