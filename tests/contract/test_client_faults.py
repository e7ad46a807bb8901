"""FilesClient under the local server's fault modes: 5xx, 429 with retry-after, bodies cut mid-way,
answers lost after the work was done. Downloads must come out byte-identical and uploads exist
exactly once. Real HTTP to ``openaifs serve``; the faults are the server's own (``/_admin/faults``)."""

from __future__ import annotations

import hashlib
import os
import random
from collections import Counter
from pathlib import Path

import pytest
import trio

from openaifs.client import FileRecord, FilesClient
from openaifs.errors import TransportError
from tests.contract.test_client_api import MiB, jsonl, open_client, sha256_of_download
from tests.support.server import LocalServer

FAULTS = {
    "error_rate": {"*": 0.1},
    "error_status": 503,
    "rate_limit_rate": {"*": 0.05},
    "retry_after": 0.05,
    "drop_rate": {"files.content": 0.05},
}
# Sizes around the edges that matter: empty, one byte, httpcore's 64 KiB read size, our 1 MiB.
SIZES = [0, 1, 65535, 65536, 65537, MiB - 1, MiB, MiB + 1, 2 * MiB + 12345, 3 * MiB]


async def run_all(jobs: list, limit: int) -> None:  # type: ignore[type-arg]
    """Run async callables ``limit`` at a time."""
    sem = trio.Semaphore(limit)

    async def one(job) -> None:  # type: ignore[no-untyped-def]
        async with sem:
            await job()

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(one, job)


@pytest.mark.parametrize("range_ok", [True, False], ids=["range", "no-range"])
async def test_50_downloads_are_byte_identical_under_faults(server: LocalServer, range_ok: bool) -> None:
    rng = random.Random(1234)
    files = []
    for i, size in enumerate(SIZES):
        data = os.urandom(size)
        record = server.add_file("vision", f"f{i}.bin", data)
        files.append((record["id"], data))
    server.set_faults(**FAULTS, range=range_ok, drop_after_request_rate={"files.content": 0.02}, seed=7)
    server.reset_stats()
    results: list[bool] = []
    async with open_client(server) as client:

        def job(i: int):  # type: ignore[no-untyped-def]
            fid, data = files[i % len(files)]
            start, end = (0, len(data)) if i < 30 or not data else sorted(rng.sample(range(len(data) + 1), 2))

            async def go() -> None:
                digest, n = await sha256_of_download(client, fid, start, end)
                results.append(n == end - start and digest == hashlib.sha256(data[start:end]).hexdigest())

            return go

        await run_all([job(i) for i in range(50)], limit=4)
        assert results == [True] * 50
        assert await client.range_supported() is range_ok
        # faults did happen and were ridden out
        assert sum(client.stats.retries.values()) > 0
        assert server.requests("files.content") == client.stats.requests["files.content"] > 50


async def test_30_uploads_exist_exactly_once_under_faults(server: LocalServer, tmp_path: Path) -> None:
    sources: list[tuple[str, str, Path]] = []
    for i in range(30):
        path = tmp_path / f"src{i}"
        if i % 2:
            path.write_bytes(jsonl(1 + i * 37, tag=str(i)))
            sources.append((f"batch-{i}.jsonl", "batch", path))
        else:
            path.write_bytes(os.urandom(SIZES[i % len(SIZES)]))
            sources.append((f"image {i} 🦊.bin", "vision", path))
    server.set_faults(**FAULTS, drop_after_request_rate={"files.create": 0.2}, seed=11)
    server.reset_stats()
    returned: dict[str, FileRecord] = {}
    async with open_client(server) as client:

        def job(name: str, purpose: str, path: Path):  # type: ignore[no-untyped-def]
            async def go() -> None:
                returned[name] = await client.upload(path, name, purpose)

            return go

        await run_all([job(*s) for s in sources], limit=4)
        adopted = client.stats.adopted_uploads
        assert adopted > 0  # some answers were lost after the server had made the file
        server.set_faults()
        await check_exactly_once(client, sources, returned)
    assert server.requests("files.create") > 30


async def test_same_name_uploads_are_not_confused_under_faults(server: LocalServer, tmp_path: Path) -> None:
    """Identical name and size: a retry must never adopt a sibling upload's file."""
    server.set_faults(
        error_rate={"files.create": 0.2},
        error_status=500,
        retry_after=0.05,
        drop_after_request_rate={"files.create": 0.3},
        seed=5,
    )
    paths = []
    for i in range(10):
        p = tmp_path / f"same{i}.jsonl"
        p.write_bytes(jsonl(3, tag=f"{i:02d}"))  # same size, different bytes
        paths.append(p)
    async with open_client(server) as client:
        ids: list[str] = []

        def job(p: Path):  # type: ignore[no-untyped-def]
            async def go() -> None:
                ids.append((await client.upload(p, "same.jsonl", "batch")).id)

            return go

        await run_all([job(p) for p in paths], limit=10)
        server.set_faults()
        listed = [r for r in await client.list_all("batch") if r.filename == "same.jsonl"]
        assert len(ids) == len(set(ids)) == 10
        assert sorted(r.id for r in listed) == sorted(ids)
        contents = {await sha256_of_download(client, i, 0, paths[0].stat().st_size) for i in ids}
        assert len(contents) == 10  # each upload's own bytes, none lost, none twice


async def check_exactly_once(
    client: FilesClient, sources: list[tuple[str, str, Path]], returned: dict[str, FileRecord]
) -> None:
    listed = await client.list_all()
    counts = Counter(r.filename for r in listed)
    assert counts == Counter(name for name, _, _ in sources), "a file is missing or duplicated"
    by_name = {r.filename: r for r in listed}
    for name, purpose, path in sources:
        record = by_name[name]
        assert returned[name].id == record.id and record.purpose == purpose
        data = path.read_bytes()
        assert record.bytes == len(data)
        digest, _ = await sha256_of_download(client, record.id, 0, record.bytes)
        assert digest == hashlib.sha256(data).hexdigest()


async def test_a_stalled_server_times_out_and_is_reported(server: LocalServer) -> None:
    server.add_file("vision", "a.bin", b"abc")
    server.set_faults(latency_ms=1500)
    async with open_client(server, read_timeout=0.2, max_attempts=2) as client:
        with trio.fail_after(10):
            with pytest.raises(TransportError, match="did not answer in time.*gave up after 2 attempts"):
                await client.list_all()
    server.set_faults()
    async with open_client(server, read_timeout=0.2) as client:
        assert len(await client.list_all()) == 1
