"""Memory stays flat: a 1 GiB upload and a 1 GiB download grow this process's RSS by far less than
the file. Bytes stream between disk and socket 1 MiB (upload) or 64 KiB (download) at a time."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trio

from openaifs.client import FilesClient
from tests.contract.test_client_api import MiB, open_client, write_file
from tests.support.server import LocalServer

GIB = 1024 * MiB
# The bound the design promises: growth far below the 1 GiB moved (and below the 4 × 64 MiB of
# parts in flight, which would show up if any layer buffered a part).
MAX_GROWTH = 64 * MiB


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class PeakRSS:
    """Samples RSS every 10 ms while the block runs."""

    def __init__(self) -> None:
        self.peak = 0

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self.peak = max(self.peak, rss())
            await trio.sleep(0.01)


# ~11 s each here (under the 20 s line for `slow`); the single-POST twin adds little, so it is slow.
@pytest.mark.parametrize(
    "single",
    [pytest.param(False, id="uploads-api"), pytest.param(True, id="single-post", marks=pytest.mark.slow)],
)
async def test_1_gib_upload_and_download_keep_rss_flat(
    server: LocalServer, tmp_path: Path, single: bool
) -> None:
    src = tmp_path / "big.bin"
    digest = write_file(src, GIB)
    config = {"single_upload_limit": 2 * GIB} if single else {}
    if single:
        server.configure(max_file_bytes=2 * GIB)
    small = tmp_path / "small.bin"
    small.write_bytes(b"warm-up" * 1000)
    async with open_client(server, **config) as client:
        # warm up: imports, thread pool, connection pool, so the baseline holds them
        warm = await client.upload(small, "warm", "vision")
        await drain(client, warm.id, warm.bytes)
        baseline = rss()
        sampler = PeakRSS()
        async with trio.open_nursery() as nursery:
            await nursery.start(sampler.run)
            record = await client.upload(src, "big.bin", "vision")
            got = await drain(client, record.id, record.bytes)
            nursery.cancel_scope.cancel()
        assert got == digest
        growth = sampler.peak - baseline
        print(f"RSS baseline {baseline / MiB:.0f} MiB, peak growth {growth / MiB:.1f} MiB")
        assert growth < MAX_GROWTH, f"RSS grew by {growth / MiB:.0f} MiB moving 1 GiB"
        assert client.stats.requests["uploads.parts" if not single else "files.create"] >= 1


async def drain(client: FilesClient, file_id: str, size: int) -> str:
    digest = hashlib.sha256()
    async for chunk in client.download(file_id, 0, size):
        digest.update(chunk)
    return digest.hexdigest()
