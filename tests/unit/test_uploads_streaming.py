"""Uploading while writing (openaifs/uploads.py, ``enable_streaming``), against the in-memory fake.

A file written in order from byte 0 starts uploading at ``START`` bytes; its flush ends that
request. Whatever else happens to the file (a write elsewhere, a truncate, a rename, an unlink, a
failed stream), the server must end up with exactly the flushed bytes, once, or nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import trio
import trio.testing

from openaifs.client.records import FileRecord
from openaifs.client.transport import Failure
from openaifs.errors import UploadError
from openaifs.uploads import PendingFile, UploadSpool
from tests.unit.test_uploads_fake import FakeFilesClient

START = 1000  # bytes before a file starts streaming
LIMIT = 10_000  # what one request may carry


@pytest.fixture
async def setup(tmp_path: object) -> AsyncIterator[tuple[UploadSpool, FakeFilesClient]]:
    fake = FakeFilesClient()
    spool = UploadSpool(fake, tmp_path / "cache")  # type: ignore[operator]
    async with trio.open_nursery() as nursery:
        spool.enable_streaming(nursery, start_at=START, max_bytes=LIMIT)
        yield spool, fake
        spool.close()
        nursery.cancel_scope.cancel()


def write_in_order(spool: UploadSpool, pf: PendingFile, data: bytes, start: int = 0, piece: int = 300) -> None:
    for pos in range(0, len(data), piece):
        spool.write(pf, start + pos, data[pos : pos + piece])


def stored(fake: FakeFilesClient) -> list[tuple[str, str, bytes]]:
    return [(r.filename, r.purpose, data) for r, data in fake.files.values()]


async def test_a_file_written_in_order_is_uploaded_while_written(setup: tuple[UploadSpool, FakeFilesClient]) -> None:
    spool, fake = setup
    data = bytes(range(256)) * 20  # 5120 bytes
    pf = spool.create("a.bin", "vision")
    write_in_order(spool, pf, data[:900])
    await trio.testing.wait_all_tasks_blocked()
    assert fake.streams == []  # not before START bytes
    write_in_order(spool, pf, data[900:], start=900)
    await trio.testing.wait_all_tasks_blocked()
    assert fake.streams == [data]  # already sent, before any flush
    record = await spool.commit(pf)
    assert isinstance(record, FileRecord) and record.bytes == len(data)
    assert stored(fake) == [("a.bin", "vision", data)]
    assert fake.uploads == 0 and spool.stats.streamed == 1
    assert await spool.commit(pf) is None  # clean now


@pytest.mark.parametrize("change", ["overwrite", "gap", "truncate", "rename", "too big"])
async def test_any_other_change_abandons_the_stream_and_the_flush_uploads(
    setup: tuple[UploadSpool, FakeFilesClient], change: str
) -> None:
    spool, fake = setup
    data = bytearray(b"x" * 3000)
    pf = spool.create("b.bin", "vision")
    write_in_order(spool, pf, bytes(data))
    await trio.testing.wait_all_tasks_blocked()
    assert len(fake.streams) == 1
    name = "b.bin"
    if change == "overwrite":
        spool.write(pf, 10, b"OVER")
        data[10:14] = b"OVER"
    elif change == "gap":
        spool.write(pf, 3100, b"after a hole")
        data += b"\0" * 100 + b"after a hole"
    elif change == "truncate":
        spool.truncate(pf, 1500)
        del data[1500:]
    elif change == "rename":
        spool.rename(pf, "c.bin", "vision")
        name = "c.bin"
    else:
        spool.write(pf, 3000, b"y" * LIMIT)
        data += b"y" * LIMIT
    spool.write(pf, len(data), b"tail")  # an append after that starts no second stream
    data += b"tail"
    await trio.testing.wait_all_tasks_blocked()
    record = await spool.commit(pf)
    assert record is not None and record.bytes == len(data)
    assert stored(fake) == [(name, "vision", bytes(data))]  # the cut-off stream stored nothing
    assert fake.uploads == 1 and len(fake.streams) == 1 and spool.stats.streamed == 0
    assert fake.earlier == [None]  # a cut-off stream cannot have stored anything


@pytest.mark.parametrize("reached", [False, True])
async def test_a_failed_stream_is_an_earlier_attempt_of_the_upload(
    setup: tuple[UploadSpool, FakeFilesClient], reached: bool
) -> None:
    spool, fake = setup
    fake.stream_fail = Failure("files.create", "upload", status=503, reached=reached)
    pf = spool.create("d.bin", "vision")
    write_in_order(spool, pf, b"z" * 2000)
    record = await spool.commit(pf)
    assert record is not None and stored(fake) == [("d.bin", "vision", b"z" * 2000)]
    assert fake.uploads == 1 and fake.earlier[0] is not None and fake.earlier[0].reached is reached


async def test_rejected_content_fails_the_flush_and_keeps_the_bytes(
    setup: tuple[UploadSpool, FakeFilesClient],
) -> None:
    spool, fake = setup
    pf = spool.create("bad.jsonl", "batch")
    write_in_order(spool, pf, b"not json\n" * 200)
    with pytest.raises(UploadError) as info:
        await spool.commit(pf)
    assert info.value.preserved_at is not None
    assert stored(fake) == [] and len(fake.streams) == 1 and fake.uploads == 1


@pytest.mark.parametrize("how", ["discard", "release", "close"])
async def test_unlink_release_or_unmount_while_streaming_uploads_nothing(
    setup: tuple[UploadSpool, FakeFilesClient], how: str
) -> None:
    spool, fake = setup
    pf = spool.create("e.bin", "vision")
    write_in_order(spool, pf, b"q" * 2000)
    await trio.testing.wait_all_tasks_blocked()
    assert len(fake.streams) == 1
    finish: Callable[[], object] = {"discard": lambda: spool.discard(pf), "release": lambda: spool.release(pf),
                                    "close": spool.close}[how]
    finish()
    await trio.testing.wait_all_tasks_blocked()
    assert stored(fake) == [] and fake.uploads == 0


async def test_at_most_two_files_stream_at_once(setup: tuple[UploadSpool, FakeFilesClient]) -> None:
    spool, fake = setup
    files = [spool.create(f"f{i}.bin", "vision") for i in range(3)]
    for pf in files:
        write_in_order(spool, pf, b"w" * 2000)
    await trio.testing.wait_all_tasks_blocked()
    assert len(fake.streams) == 2
    for pf in files:
        assert await spool.commit(pf) is not None
    assert sorted(name for name, _, _ in stored(fake)) == ["f0.bin", "f1.bin", "f2.bin"]
    assert fake.uploads == 1 and spool.stats.streamed == 2


async def test_a_server_that_refuses_chunked_uploads_is_not_sent_them_again(
    setup: tuple[UploadSpool, FakeFilesClient], caplog: pytest.LogCaptureFixture
) -> None:
    spool, fake = setup
    fake.stream_fail = Failure("files.create", "upload", status=411, message="Length Required")
    for name in ("g1.bin", "g2.bin"):
        pf = spool.create(name, "vision")
        write_in_order(spool, pf, b"r" * 2000)
        assert await spool.commit(pf) is not None
    assert len(fake.streams) == 1 and fake.uploads == 2
    assert "uploaded after they are written from now on" in caplog.text
