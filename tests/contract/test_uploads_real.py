"""The upload spool against a real ``openaifs serve`` through the real ``FilesClient`` (no kernel).

Two parts: the same cases run against the unit tests' fake client and the real client, so the fake
stays verified; then the spool's promises over real HTTP (bytes arrive intact, through ``/files``
and through ``/uploads`` parts; a rejected or failing upload keeps its bytes and maps to the right
errno).
"""

from __future__ import annotations

import errno
import random
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from openaifs.client import FileRecord, FilesClient
from openaifs.config import ClientConfig
from openaifs.errors import BadRequestError, NotFoundError, UploadError, errno_for
from openaifs.uploads import UploadSpool
from tests.support.server import LocalServer
from tests.unit.test_uploads_fake import FakeFilesClient

KEY = "sk-test-uploads-0123456789"
ATTEMPTS = 3
# Small limits make a 1.5 MiB file take the Uploads API path (create, 6 parts, complete), so both
# upload paths are covered without moving hundreds of MiB.
SINGLE_LIMIT = 512 * 1024
PART_SIZE = 256 * 1024


async def no_sleep(seconds: float) -> None:
    """Retries happen at once: the backoff policy has its own tests; these are about outcomes."""


@pytest.fixture
async def real_client(server: LocalServer) -> AsyncIterator[FilesClient]:
    config = ClientConfig(
        base_url=server.base_url, api_key=KEY, max_attempts=ATTEMPTS,
        single_upload_limit=SINGLE_LIMIT, part_size=PART_SIZE,
    )
    async with FilesClient.make_http(config) as http:
        yield FilesClient(config, http, sleep=no_sleep)


async def download(server: LocalServer, file_id: str) -> bytes:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http:
        r = await http.get(f"{server.base_url}/files/{file_id}/content")
        r.raise_for_status()
        return r.content


# -- the fake, verified: each case runs against both clients ----------------------------------------

Client = FakeFilesClient | FilesClient


@pytest.fixture(params=["fake", "real"])
def client(request: pytest.FixtureRequest) -> Client:
    if request.param == "fake":
        return FakeFilesClient()
    return request.getfixturevalue("real_client")  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "filename", "purpose"),
    [
        (b'{"a": 1}\n', "in.jsonl", "batch"),
        (b"", "empty.txt", "user_data"),
        (b"\0" * 1000, "x.bin", "vision"),
    ],
)
async def test_both_clients_record_an_upload_alike(
    client: Client, tmp_path: Path, body: bytes, filename: str, purpose: str
) -> None:
    path = tmp_path / "f"
    path.write_bytes(body)
    record = await client.upload(path, filename, purpose)
    assert (record.filename, record.purpose, record.bytes) == (filename, purpose, len(body))
    assert record.id.startswith("file-")


@pytest.mark.parametrize(
    ("body", "purpose"),
    [(b'{"a": 1}\nnot json\n', "batch"), (b"[1]\n", "fine-tune"), (b"x", "batch_output"), (b"x", "nonsense")],
)
async def test_both_clients_refuse_alike(client: Client, tmp_path: Path, body: bytes, purpose: str) -> None:
    path = tmp_path / "f"
    path.write_bytes(body)
    with pytest.raises(BadRequestError):
        await client.upload(path, "f.jsonl", purpose)


async def test_both_clients_answer_404_for_an_unknown_delete(client: Client) -> None:
    with pytest.raises(NotFoundError):
        await client.delete("file-doesnotexist0000")


# -- the spool over real HTTP --------------------------------------------------------------------


@pytest.fixture
def spool(real_client: FilesClient, tmp_path: Path) -> Iterator[UploadSpool]:
    s = UploadSpool(real_client, tmp_path / "cache")
    yield s
    s.close()


def scatter(spool: UploadSpool, pf: Any, size: int, seed: int) -> bytes:
    """Write ``size`` random bytes in shuffled 64 KiB pieces, as a kernel may deliver them."""
    rng = random.Random(seed)
    data = rng.randbytes(size)
    pieces = list(range(0, size, 64 * 1024))
    rng.shuffle(pieces)
    for off in pieces:
        spool.write(pf, off, data[off:off + 64 * 1024])
    return data


@pytest.mark.parametrize("size", [100_000, 1_500_000], ids=["files", "uploads-api"])
async def test_commit_puts_the_exact_bytes_on_the_server(
    spool: UploadSpool, server: LocalServer, size: int
) -> None:
    server.configure(refuse_downloads=[])
    pf = spool.create("scatter.bin", "user_data")
    data = scatter(spool, pf, size, seed=size)
    record = await spool.commit(pf)
    assert record is not None and record.bytes == size
    assert await download(server, record.id) == data
    assert await spool.commit(pf) is None
    route = "files.create" if size <= SINGLE_LIMIT else "uploads.complete"
    assert server.requests(route) == 1


async def test_rewritten_file_replaces_its_first_upload(
    spool: UploadSpool, server: LocalServer, real_client: FilesClient
) -> None:
    server.configure(refuse_downloads=[])
    pf = spool.create("log.jsonl", "batch")
    spool.write(pf, 0, b'{"n": 1}\n')
    first = await spool.commit(pf)
    spool.write(pf, 9, b'{"n": 2}\n')
    second = await spool.commit(pf)
    assert first is not None and second is not None and first.id != second.id
    await real_client.delete(first.id)  # the caller's half of a replacement (fs.py does this)
    ids = [r.id for r in await real_client.list_all("batch")]
    assert ids == [second.id]
    assert await download(server, second.id) == b'{"n": 1}\n{"n": 2}\n'


async def test_bad_jsonl_is_einval_and_the_bytes_are_kept(spool: UploadSpool, server: LocalServer) -> None:
    pf = spool.create("requests.jsonl", "batch")
    body = b'{"custom_id": "1"}\nthis is not json\n'
    spool.write(pf, 0, body)
    with pytest.raises(UploadError) as info:
        await spool.commit(pf)
    assert errno_for(info.value) == errno.EINVAL
    kept = Path(info.value.preserved_at or "")
    assert kept.parent == spool.failed_dir and kept.name.endswith("_requests.jsonl")
    assert await trio.Path(kept).read_bytes() == body
    assert server.requests("files.create") == 1  # a 400 is an answer, not a reason to retry


async def test_a_server_failing_every_upload_is_eio_and_the_bytes_are_kept(
    spool: UploadSpool, server: LocalServer, real_client: FilesClient
) -> None:
    server.set_faults(error_rate={"files.create": 1.0})
    pf = spool.create("data.bin", "user_data")
    spool.write(pf, 0, b"precious")
    with pytest.raises(UploadError) as info:
        await spool.commit(pf)
    assert errno_for(info.value) == errno.EIO
    assert await trio.Path(info.value.preserved_at or "").read_bytes() == b"precious"
    assert server.requests("files.create") == ATTEMPTS
    server.set_faults()
    assert await real_client.list_all() == []  # no half-made file left behind
    with pytest.raises(UploadError):  # the handle's later closes keep saying so
        await spool.commit(pf)


class Announcing:
    """The real client, announcing each upload as it starts (so a test can act mid-request)."""

    def __init__(self, real: FilesClient) -> None:
        self.real = real
        self.started = trio.Event()

    async def upload(self, path: Path, filename: str, purpose: str, **kw: Any) -> FileRecord:
        self.started.set()
        return await self.real.upload(path, filename, purpose, **kw)

    async def delete(self, file_id: str) -> None:
        await self.real.delete(file_id)


async def test_a_file_deleted_while_uploading_does_not_come_back(
    server: LocalServer, real_client: FilesClient, tmp_path: Path
) -> None:
    server.set_faults(latency_ms=200)  # the server answers late: the unlink arrives mid-request
    client = Announcing(real_client)
    spool = UploadSpool(client, tmp_path / "cache")
    pf = spool.create("gone.txt", "user_data")
    spool.write(pf, 0, b"bye")
    results: list[FileRecord | None] = []

    async def flush(commit: Callable[..., Any]) -> None:
        results.append(await commit(pf))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flush, spool.commit)
        await client.started.wait()
        assert spool.discard(pf) is None
    server.set_faults()
    assert results == [None]
    assert await real_client.list_all() == []
    assert server.requests("files.delete") == 1
    spool.close()
