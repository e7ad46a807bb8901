"""Uploads API (``/uploads``: create, parts, complete, cancel) through FilesClient against a real
``openaifs serve``, with limits lowered so that tens of MiB take the multipart path."""

from __future__ import annotations

from pathlib import Path

import pytest

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
