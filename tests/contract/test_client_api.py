"""FilesClient against a real ``openaifs serve`` over HTTP: listing, metadata, typed errors, Range,
filenames. No transport mocks: every request crosses a socket to the local server.

Also holds the helpers the other ``test_client_*`` contract modules import."""

from __future__ import annotations

import gc
import hashlib
import math
import os
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from openaifs.client import FileRecord, FilesClient
from openaifs.config import ClientConfig
from openaifs.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    DownloadForbiddenError,
    IntegrityError,
    NotFoundError,
    TransportError,
)
from tests.conftest import TEST_KEY
from tests.support.server import LocalServer

MiB = 1024 * 1024


async def quick_sleep(seconds: float) -> None:
    """Retry delays capped at 50 ms: the policy's delays are unit-tested (tests/unit/test_retry.py);
    here only the outcome under faults matters, and real backoff would make the suite slow."""
    await trio.sleep(min(seconds, 0.05))


@asynccontextmanager
async def open_client(
    server: LocalServer, *, key: str = TEST_KEY, sleep: Callable[[float], Any] = quick_sleep, **config: Any
) -> AsyncIterator[FilesClient]:
    cfg = ClientConfig(base_url=server.base_url, api_key=key, **config)
    async with FilesClient.make_http(cfg) as http:
        yield FilesClient(cfg, http, sleep=sleep)


async def fetch(client: FilesClient, file_id: str, start: int, end: int) -> bytes:
    out = bytearray()
    async with aclosing(client.download(file_id, start, end)) as chunks:
        async for chunk in chunks:
            out += chunk
    return bytes(out)


async def sha256_of_download(client: FilesClient, file_id: str, start: int, end: int) -> tuple[str, int]:
    digest, n = hashlib.sha256(), 0
    async with aclosing(client.download(file_id, start, end)) as chunks:
        async for chunk in chunks:
            digest.update(chunk)
            n += len(chunk)
    return digest.hexdigest(), n


def write_file(path: Path, size: int, seed: int = 0) -> str:
    """A file of ``size`` pseudo-random bytes written 1 MiB at a time (each block distinct, so a
    misplaced block is caught); returns its sha256."""
    block = os.urandom(MiB) if seed == 0 else hashlib.shake_256(str(seed).encode()).digest(MiB)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        written, counter = 0, 0
        while written < size:
            piece = (counter.to_bytes(8, "little") + block[8:])[: size - written]
            f.write(piece)
            digest.update(piece)
            written += len(piece)
            counter += 1
    return digest.hexdigest()


def jsonl(n: int, tag: str = "") -> bytes:
    return b"".join(b'{"custom_id": "%s-%d", "x": %d}\n' % (tag.encode(), i, i) for i in range(n))


# -- listing ---------------------------------------------------------------------------------------
async def test_pagination_over_short_pages(server: LocalServer) -> None:
    server.configure(max_page_size=7)
    made = [
        server.add_file("batch_output", f"out-{i}.jsonl", jsonl(i + 1), created_at=1_700_000_000 + i)["id"]
        for i in range(30)
    ]
    made += [server.add_file("vision", f"img-{i}.png", b"\x89PNG" + bytes(i))["id"] for i in range(4)]
    server.reset_stats()
    async with open_client(server) as client:
        everything = await client.list_all()
        assert sorted(r.id for r in everything) == sorted(made)
        assert len({r.id for r in everything}) == len(made)
        assert server.requests("files.list") == math.ceil(34 / 7) == client.stats.requests["files.list"]
        outputs = await client.list_all("batch_output")
        assert [r.filename for r in outputs] == [
            f"out-{i}.jsonl" for i in reversed(range(30))
        ]  # newest first
        assert all(isinstance(r, FileRecord) and r.purpose == "batch_output" for r in outputs)
        assert outputs[0].bytes == len(jsonl(30)) and outputs[0].created_at == 1_700_000_029
    async with open_client(server, list_page_size=4) as client:  # client pages smaller than the server's
        server.reset_stats()
        assert len(await client.list_all("vision")) == 4
        # 4 files in pages of 4: the first page says has_more=false, or an empty second page ends it
        assert server.requests("files.list") in (1, 2)


async def test_listing_stops_early_when_the_caller_does(server: LocalServer) -> None:
    server.configure(max_page_size=5)
    for i in range(20):
        server.add_file("vision", f"{i}.png", b"x")
    server.reset_stats()
    async with open_client(server) as client:
        async with aclosing(client.list_files()) as records:
            async for _ in records:
                break
    assert server.requests("files.list") == 1


async def test_empty_account(server: LocalServer) -> None:
    async with open_client(server) as client:
        assert await client.list_all() == []
        assert await client.list_all("batch") == []


# -- metadata ----------------------------------------------------------------------------------------
async def test_retrieve_and_delete(server: LocalServer) -> None:
    made = server.add_file("batch", "req.jsonl", jsonl(3))
    async with open_client(server) as client:
        record = await client.retrieve(made["id"])
        assert record == FileRecord.from_json(made)
        assert record.status == "processed"
        await client.delete(made["id"])
        with pytest.raises(NotFoundError) as info:
            await client.retrieve(made["id"])
        assert info.value.file_id == made["id"] and info.value.status == 404
        assert str(info.value).startswith(f"retrieve request of {made['id']} failed with HTTP 404: ")
        with pytest.raises(NotFoundError):
            await client.delete(made["id"])
        assert client.stats.retries == {}


# -- downloads ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["honoured", "no-range flag", "range fault off"])
async def test_download_ranges(server_factory: Callable[..., LocalServer], how: str) -> None:
    server = server_factory("--no-range") if how == "no-range flag" else server_factory()
    if how == "range fault off":
        server.set_faults(range=False)
    data = os.urandom(3 * MiB + 5)
    fid = server.add_file("vision", "pic.bin", data)["id"]
    async with open_client(server) as client:
        assert await client.range_supported() is None
        assert await fetch(client, fid, 0, len(data)) == data
        assert await client.range_supported() is (how == "honoured")
        for start, end in [
            (0, 1),
            (1, 2),
            (4095, 4097),
            (MiB - 3, 2 * MiB + 9),
            (len(data) - 1, len(data)),
            (7, 7),
        ]:
            assert await fetch(client, fid, start, end) == data[start:end], (start, end)
        with pytest.raises(IntegrityError, match="only"):
            await fetch(client, fid, 0, len(data) + 1)
        if how == "honoured":  # ranged reads move only what was asked for
            server.reset_stats()
            await fetch(client, fid, MiB, MiB + 10)
            assert server.stats()["bytes_sent"]["files.content"] < 1000


@pytest.mark.parametrize("range_ok", [True, False], ids=["range", "no-range"])
async def test_cancelled_or_abandoned_downloads_leave_nothing_behind(
    server: LocalServer, range_ok: bool
) -> None:
    """A download cancelled mid-body (the content cache cancels what nobody waits for) or closed early
    releases its response at once, with no half-read stream left for the garbage collector (which
    trio would report, and strict pytest turns into a failure)."""
    server.set_faults(range=range_ok)
    data = os.urandom(8 * MiB)
    fid = server.add_file("vision", "big.bin", data)["id"]
    async with open_client(server, max_connections=2) as client:
        for _ in range(3):
            with trio.CancelScope() as scope:
                async with aclosing(client.download(fid, 0, len(data))) as chunks:
                    async for _chunk in chunks:
                        scope.cancel()  # the generator is cancelled at its next await
            assert scope.cancelled_caught
            async with aclosing(client.download(fid, 100, len(data))) as chunks:
                async for _chunk in chunks:
                    break
        gc.collect()
        await trio.lowlevel.checkpoint()
        # the pool of 2 is not exhausted by leaked connections
        assert await fetch(client, fid, len(data) - 10, len(data)) == data[-10:]


async def test_download_errors_are_typed(server: LocalServer) -> None:
    refused = server.add_file("assistants", "secret.pdf", b"%PDF")["id"]
    async with open_client(server) as client:
        with pytest.raises(DownloadForbiddenError) as info:
            await fetch(client, refused, 0, 4)
        assert "Not allowed to download files of purpose: assistants" in str(info.value)
        with pytest.raises(NotFoundError):
            await fetch(client, "file-doesnotexist", 0, 1)
        assert client.stats.retries == {}


async def test_malformed_answers_are_transport_errors(server: LocalServer) -> None:
    server.add_file("vision", "a.png", b"x")
    server.set_faults(corrupt_rate={"files.list": 1.0})
    async with open_client(server) as client:
        with pytest.raises(TransportError, match="malformed"):
            await client.list_all()


# -- uploads and names ---------------------------------------------------------------------------------
NAMES = [
    "plain.jsonl",
    'say "hi" (1).jsonl',
    "back\\slash.jsonl",
    "trailing\\",
    "dir/like/name.jsonl",
    "semi;colon; filename=evil.jsonl",
    "emoji 🦊🚀.jsonl",
    "ünïcödé 名前.jsonl",
    "line\nbreak\r\ttab.jsonl",
    "nul\x00and\x1fcontrol\x7f.jsonl",
    "C:\\Users\\x.jsonl",
    "\\\\server\\share.jsonl",
    "%22percent%0A.jsonl",
    "  spaces  ",
    ".",
    "..",
    "x" * 300 + ".jsonl",
]


async def test_any_filename_round_trips(server: LocalServer, tmp_path: Path) -> None:
    src = tmp_path / "src.jsonl"
    src.write_bytes(jsonl(2))
    async with open_client(server) as client:
        for name in NAMES:
            record = await client.upload(src, name, "batch")
            assert record.filename == name, name
            assert (await client.retrieve(record.id)).filename == name
        listed = {r.filename for r in await client.list_all("batch")}
        assert listed == set(NAMES)


async def test_upload_fields(server: LocalServer, tmp_path: Path) -> None:
    src = tmp_path / "src.jsonl"
    src.write_bytes(jsonl(5))
    async with open_client(server) as client:
        record = await client.upload(src, "exp.jsonl", "batch", expires_after=7200)
        assert record.expires_at == record.created_at + 7200
        assert record.bytes == src.stat().st_size and record.purpose == "batch"
        assert await fetch(client, record.id, 0, record.bytes) == src.read_bytes()
        sent: list[int] = []
        await client.upload(src, "p.jsonl", "batch", progress=sent.append)
        assert sent and sent[-1] == src.stat().st_size


async def test_upload_rejections_are_typed(server: LocalServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"not json\n")
    async with open_client(server) as client:
        with pytest.raises(BadRequestError) as info:
            await client.upload(bad, "bad.jsonl", "batch")
        assert info.value.status == 400 and info.value.operation == "upload"
        with pytest.raises(BadRequestError, match="purpose"):
            await client.upload(bad, "x", "no-such-purpose")
        assert await client.list_all() == []
        assert client.stats.retries == {}


async def test_wrong_key_is_an_authentication_error(server_factory: Callable[..., LocalServer]) -> None:
    server = server_factory(env={**os.environ, "OPENAIFS_SERVER_API_KEY": TEST_KEY})
    async with open_client(server, key="sk-wrong-0000000000000000") as client:
        with pytest.raises(AuthenticationError):
            await client.list_all()
    async with open_client(server) as client:
        assert await client.list_all() == []


async def test_unreachable_server_is_a_transport_error() -> None:
    with trio.socket.socket() as s:  # a port nobody listens on
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ClientConfig(base_url=f"http://127.0.0.1:{port}/v1", api_key=TEST_KEY, max_attempts=3)
    async with FilesClient.make_http(cfg) as http:
        client = FilesClient(cfg, http, sleep=quick_sleep)
        with pytest.raises(TransportError, match="could not connect.*3 attempts"):
            await client.list_all()
        assert client.stats.requests["files.list"] == 3


async def test_too_large_single_upload_is_refused_not_retried(server: LocalServer, tmp_path: Path) -> None:
    """The server answers before reading the body; the client reports that answer, not a broken pipe."""
    src = tmp_path / "big.bin"
    write_file(src, 24 * MiB)
    server.configure(max_file_bytes=MiB)
    async with open_client(server) as client:
        with pytest.raises(APIError) as info:
            await client.upload(src, "big.bin", "vision")
        assert info.value.status in (400, 413) and info.value.operation == "upload"
        assert client.stats.retries == {}
        assert await client.list_all() == []
