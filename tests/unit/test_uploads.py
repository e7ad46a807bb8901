"""The upload spool (openaifs/uploads.py) against an in-memory fake client: no network, no FUSE."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from openaifs.client.records import FileRecord
from openaifs.errors import (
    BadRequestError,
    FileTooLargeError,
    OpenAIFSError,
    ServerError,
    ServerOnlyPurposeError,
    TransportError,
    UploadError,
    errno_for,
)
from openaifs.uploads import FAILED_DIR, SPOOL_DIR, UploadSpool
from tests.unit.test_uploads_fake import FakeFilesClient

NOW = 1_764_307_260.0  # 2025-11-28T05:21:00Z: a fixed clock makes failed-upload names predictable


@pytest.fixture
def fake() -> FakeFilesClient:
    return FakeFilesClient()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def spool(fake: FakeFilesClient, cache: Path) -> Iterator[UploadSpool]:
    s = UploadSpool(fake, cache, now=lambda: NOW)
    yield s
    s.close()


def failed_files(spool: UploadSpool) -> list[Path]:
    """The preserved data files: every entry except the sidecars (``<data>.json`` next to its data)."""
    names = {p.name for p in spool.failed_dir.iterdir()}
    return sorted(spool.failed_dir / n for n in names if not (n.endswith(".json") and n[:-5] in names))


def sidecar(data: Path) -> dict:
    return json.loads(data.with_name(data.name + ".json").read_text(encoding="utf-8"))


def spool_contents(spool: UploadSpool) -> list[str]:
    return sorted(p.name for p in spool.session_dir.iterdir() if p.name != ".lock")


# -- create ---------------------------------------------------------------------------------------


def test_create_makes_private_dirs_and_files(spool: UploadSpool, cache: Path) -> None:
    old = os.umask(0)  # even with a permissive umask, nothing is readable by others
    try:
        pf = spool.create("in.jsonl", "batch")
    finally:
        os.umask(old)
    for d in (cache / SPOOL_DIR, cache / FAILED_DIR, spool.session_dir):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert stat.S_IMODE(pf.spool_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pf.sidecar_path.stat().st_mode) == 0o600
    assert (pf.filename, pf.purpose, pf.size, pf.dirty) == ("in.jsonl", "batch", 0, True)


def test_existing_wide_dirs_are_tightened(fake: FakeFilesClient, cache: Path) -> None:
    (cache / FAILED_DIR).mkdir(parents=True, mode=0o777)
    os.chmod(cache / FAILED_DIR, 0o777)
    s = UploadSpool(fake, cache)
    try:
        assert stat.S_IMODE((cache / FAILED_DIR).stat().st_mode) == 0o700
    finally:
        s.close()


def test_create_writes_a_sidecar_for_crash_recovery(spool: UploadSpool) -> None:
    pf = spool.create("a b.jsonl", "fine-tune")
    info = json.loads(pf.sidecar_path.read_text())
    assert (info["filename"], info["purpose"]) == ("a b.jsonl", "fine-tune")


@pytest.mark.parametrize("purpose", ["batch_output", "fine-tune-results", "assistants_output"])
def test_create_refuses_purposes_that_take_no_uploads(spool: UploadSpool, purpose: str) -> None:
    with pytest.raises(ServerOnlyPurposeError) as info:
        spool.create("x.jsonl", purpose)
    assert errno_for(info.value) == errno.EACCES
    assert purpose in str(info.value)
    assert spool_contents(spool) == []


# -- write, read, truncate ------------------------------------------------------------------------


def test_writes_at_offsets_read_back_and_set_the_size(spool: UploadSpool) -> None:
    pf = spool.create("x", "vision")
    assert spool.write(pf, 0, b"hello") == 5
    assert spool.write(pf, 10, b"world") == 5
    assert pf.size == 15
    assert spool.read(pf, 0, 100) == b"hello\0\0\0\0\0world"
    assert spool.write(pf, 100, b"") == 0
    assert pf.size == 15  # an empty write at a far offset does not extend the file


def test_truncate_shrinks_and_extends(spool: UploadSpool) -> None:
    pf = spool.create("x", "vision")
    spool.write(pf, 0, b"abcdef")
    spool.truncate(pf, 3)
    assert (pf.size, spool.read(pf, 0, 10)) == (3, b"abc")
    spool.truncate(pf, 5)
    assert (pf.size, spool.read(pf, 0, 10)) == (5, b"abc\0\0")


def test_writing_past_the_limit_is_efbig_and_writes_nothing(fake: FakeFilesClient, cache: Path) -> None:
    s = UploadSpool(fake, cache, max_file_bytes=10)
    try:
        pf = s.create("big.bin", "user_data")
        assert s.write(pf, 0, b"0123456789") == 10  # exactly the limit is fine
        with pytest.raises(FileTooLargeError) as info:
            s.write(pf, 5, b"0123456")
        assert errno_for(info.value) == errno.EFBIG
        assert "10 bytes" in str(info.value)
        with pytest.raises(FileTooLargeError):
            s.truncate(pf, 11)
        assert pf.size == 10 and pf.spool_path.stat().st_size == 10
    finally:
        s.close()


# -- commit -----------------------------------------------------------------------------------------


async def test_commit_uploads_the_spooled_bytes_once(spool: UploadSpool, fake: FakeFilesClient) -> None:
    pf = spool.create("in.jsonl", "batch")
    spool.write(pf, 0, b'{"a": 1}\n')
    record = await spool.commit(pf)
    assert record is not None and pf.record == record and not pf.dirty
    assert (record.filename, record.purpose, fake.content(record)) == ("in.jsonl", "batch", b'{"a": 1}\n')
    assert await spool.commit(pf) is None  # a dup'ed fd's close: nothing new
    assert fake.uploads == 1


async def test_a_new_file_without_writes_is_uploaded_empty(spool: UploadSpool, fake: FakeFilesClient) -> None:
    record = await spool.commit(spool.create("empty.txt", "user_data"))  # touch, cp of an empty file
    assert record is not None and fake.content(record) == b""


async def test_concurrent_flushes_upload_once(spool: UploadSpool, fake: FakeFilesClient) -> None:
    pf = spool.create("x", "vision")
    spool.write(pf, 0, b"data")
    fake.gate = trio.Event()
    results: list[FileRecord | None] = []

    async def flush() -> None:
        results.append(await spool.commit(pf))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flush)
        nursery.start_soon(flush)
        await fake.started.wait()
        await trio.testing.wait_all_tasks_blocked()
        fake.gate.set()
    assert fake.uploads == 1
    assert sorted(results, key=lambda r: r is None) == [pf.record, None]


async def test_a_write_during_the_upload_keeps_the_file_dirty(
    spool: UploadSpool, fake: FakeFilesClient
) -> None:
    pf = spool.create("x", "vision")
    spool.write(pf, 0, b"first")
    fake.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(spool.commit, pf)
        await fake.started.wait()
        spool.write(pf, 5, b"+more")  # another fd writes while the first close uploads
        fake.gate.set()
    assert pf.dirty  # what went up may be torn: the next flush sends the whole file again
    first = pf.record
    second = await spool.commit(pf)
    assert second is not None and second != first
    assert fake.content(second) == b"first+more" and not pf.dirty


async def test_writes_after_an_upload_make_a_new_upload(spool: UploadSpool, fake: FakeFilesClient) -> None:
    pf = spool.create("log.txt", "user_data")
    spool.write(pf, 0, b"one\n")
    first = await spool.commit(pf)
    spool.write(pf, 4, b"two\n")  # an fd flushed early (a dup, a child exiting) keeps writing
    assert pf.dirty
    second = await spool.commit(pf)
    assert first is not None and second is not None and second.id != first.id
    assert fake.content(second) == b"one\ntwo\n"
    assert first.id in fake.files  # the caller deletes the replaced upload, after this one succeeded
    assert fake.deletes == []


# -- failures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cause", "code"),
    [
        (BadRequestError(400, "line 2 is not valid JSON"), errno.EINVAL),
        (ServerError(500, "The server had an error"), errno.EIO),
        (TransportError("connection dropped"), errno.EIO),
    ],
)
async def test_a_failed_upload_preserves_bytes_and_says_where(
    spool: UploadSpool, fake: FakeFilesClient, caplog: pytest.LogCaptureFixture, cause: OpenAIFSError,
    code: int,
) -> None:
    pf = spool.create("in.jsonl", "batch")
    spool.write(pf, 0, b'{"a": 1}\nbroken\n')
    fake.fail = [cause]
    with caplog.at_level(logging.ERROR), pytest.raises(UploadError) as info:
        await spool.commit(pf)
    err = info.value
    assert errno_for(err) == code and err.cause is cause
    [kept] = failed_files(spool)
    assert err.preserved_at == str(kept) == str(pf.preserved_at) and pf.spool_path == kept
    assert kept.read_bytes() == b'{"a": 1}\nbroken\n'
    assert kept.name == "20251128T052100Z_" + kept.name.split("_")[1] + "_in.jsonl"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    info_ = sidecar(kept)
    assert info_["filename"] == "in.jsonl" and info_["purpose"] == "batch" and info_["size"] == 16
    assert info_["time"] == "2025-11-28T05:21:00Z" and info_["errno"] == errno.errorcode[code]
    assert str(cause.message) in info_["reason"]
    assert str(kept) in caplog.text and "ERROR" in [r.levelname for r in caplog.records]
    assert spool_contents(spool) == []  # moved, not copied


async def test_every_later_flush_reports_the_failure(spool: UploadSpool, fake: FakeFilesClient) -> None:
    pf = spool.create("x", "vision")
    fake.fail = [ServerError(503, "busy")]
    with pytest.raises(UploadError) as first:
        await spool.commit(pf)
    with pytest.raises(UploadError) as again:
        await spool.commit(pf)
    assert again.value.preserved_at == first.value.preserved_at and fake.uploads == 1


async def test_an_unexpected_error_is_preserved_and_logged_with_its_traceback(
    spool: UploadSpool, fake: FakeFilesClient, caplog: pytest.LogCaptureFixture
) -> None:
    pf = spool.create("x", "vision")
    spool.write(pf, 0, b"keep me")
    fake.fail = [RuntimeError("a bug")]
    with pytest.raises(UploadError) as info:
        await spool.commit(pf)
    assert errno_for(info.value) == errno.EIO
    assert await trio.Path(info.value.preserved_at or "").read_bytes() == b"keep me"
    assert any(r.exc_info for r in caplog.records)


async def test_writes_after_a_failure_land_in_the_preserved_file(
    spool: UploadSpool, fake: FakeFilesClient
) -> None:
    pf = spool.create("x", "vision")
    spool.write(pf, 0, b"abc")
    fake.fail = [ServerError(500, "no")]
    with pytest.raises(UploadError):
        await spool.commit(pf)
    spool.write(pf, 3, b"def")
    spool.release(pf)
    [kept] = failed_files(spool)
    assert kept.read_bytes() == b"abcdef" and sidecar(kept)["size"] == 6


async def test_a_failed_reupload_leaves_the_earlier_upload_alone(
    spool: UploadSpool, fake: FakeFilesClient
) -> None:
    pf = spool.create("log.txt", "user_data")
    spool.write(pf, 0, b"v1")
    first = await spool.commit(pf)
    spool.write(pf, 2, b"+v2")
    fake.fail = [ServerError(500, "no")]
    with pytest.raises(UploadError) as info:
        await spool.commit(pf)
    assert first is not None and pf.record == first and fake.content(first) == b"v1"
    [kept] = failed_files(spool)
    assert str(kept) == info.value.preserved_at and sidecar(kept)["earlier_upload"] == first.id
    assert spool.read(pf, 0, 100) == b"v1+v2"


@pytest.mark.parametrize(
    "filename",
    ["../../x", "a/b/../c.jsonl", "..", ".", "", "\x00\n\x7f", "x" * 300 + ".jsonl", "é" * 200,
     "bad\udcffname.txt", ".json", "name.json"],
)
async def test_failed_names_stay_inside_failed_uploads(
    spool: UploadSpool, fake: FakeFilesClient, filename: str
) -> None:
    pf = spool.create(filename, "user_data")
    spool.write(pf, 0, b"x")
    fake.fail = [ServerError(500, "no")]
    with pytest.raises(UploadError):
        await spool.commit(pf)
    [kept] = failed_files(spool)
    side = kept.with_name(kept.name + ".json")
    for p in (kept, side):
        assert p.parent == spool.failed_dir and p.exists()
        assert len(os.fsencode(p.name)) <= 255
        assert "/" not in p.name and not any(ord(c) < 0x20 for c in p.name)
    assert sidecar(kept)["filename"] == filename  # the exact name, to upload it again
    if filename.endswith(".jsonl"):
        assert kept.name.endswith(".jsonl")


async def test_two_failures_of_the_same_name_keep_both(spool: UploadSpool, fake: FakeFilesClient) -> None:
    for body in (b"one", b"two"):
        pf = spool.create("same.jsonl", "batch")
        spool.write(pf, 0, body)
        fake.fail = [ServerError(500, "no")]
        with pytest.raises(UploadError):
            await spool.commit(pf)
    assert sorted(p.read_bytes() for p in failed_files(spool)) == [b"one", b"two"]


# -- release ----------------------------------------------------------------------------------------


async def test_release_after_upload_hands_the_spool_to_the_cache(spool: UploadSpool) -> None:
    pf = spool.create("x", "vision")
    spool.write(pf, 0, b"cached")
    record = await spool.commit(pf)
    adopted: list[tuple[FileRecord, bytes]] = []
    spool.release(pf, adopt=lambda rec, path: adopted.append((rec, path.read_bytes())))
    assert adopted == [(record, b"cached")]
    assert spool_contents(spool) == [] and failed_files(spool) == []
    with pytest.raises(RuntimeError):
        spool.write(pf, 0, b"late")  # a programming error in the caller, not a user's


async def test_release_survives_a_failing_cache(spool: UploadSpool, caplog: pytest.LogCaptureFixture) -> None:
    pf = spool.create("x", "vision")
    await spool.commit(pf)

    def broken(rec: FileRecord, path: Path) -> None:
        raise OSError(errno.ENOSPC, "full")

    spool.release(pf, adopt=broken)
    assert spool_contents(spool) == [] and "did not take" in caplog.text


def test_release_of_a_dirty_file_preserves_it(spool: UploadSpool) -> None:
    pf = spool.create("x.jsonl", "batch")
    spool.write(pf, 0, b"never flushed")
    spool.release(pf, adopt=lambda rec, path: pytest.fail("dirty bytes are not an upload"))
    [kept] = failed_files(spool)
    assert kept.read_bytes() == b"never flushed"
    assert "without a successful flush" in sidecar(kept)["reason"]


# -- discard and rename -------------------------------------------------------------------------------


async def test_discard_drops_the_spool_and_later_flushes_do_nothing(
    spool: UploadSpool, fake: FakeFilesClient
) -> None:
    pf = spool.create("x", "vision")
    spool.write(pf, 0, b"gone")
    assert spool.discard(pf) is None
    assert spool_contents(spool) == []
    assert spool.write(pf, 4, b"still writable") == 14  # an unlinked open file stays writable
    assert await spool.commit(pf) is None and fake.uploads == 0
    spool.release(pf)
    assert failed_files(spool) == []


async def test_discard_of_an_uploaded_file_returns_it_for_deletion(spool: UploadSpool) -> None:
    pf = spool.create("x", "vision")
    record = await spool.commit(pf)
    assert spool.discard(pf) == record and pf.record is None


async def test_discard_while_uploading_deletes_the_new_upload(
    spool: UploadSpool, fake: FakeFilesClient
) -> None:
    pf = spool.create("x", "vision")
    fake.gate = trio.Event()
    results: list[FileRecord | None] = []

    async def flush() -> None:
        results.append(await spool.commit(pf))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flush)
        await fake.started.wait()
        assert spool.discard(pf) is None
        fake.gate.set()
    assert results == [None] and fake.files == {} and len(fake.deletes) == 1
    assert spool_contents(spool) == []


async def test_rename_of_a_pending_file_is_local(spool: UploadSpool, fake: FakeFilesClient) -> None:
    pf = spool.create("draft.tmp", "batch")
    spool.write(pf, 0, b"{}\n")
    spool.rename(pf, "final.jsonl", "fine-tune")
    assert json.loads(pf.sidecar_path.read_text())["filename"] == "final.jsonl"
    assert fake.uploads == 0
    record = await spool.commit(pf)
    assert record is not None and (record.filename, record.purpose) == ("final.jsonl", "fine-tune")


def test_rename_into_a_server_only_purpose_is_refused(spool: UploadSpool) -> None:
    pf = spool.create("x", "batch")
    with pytest.raises(ServerOnlyPurposeError):
        spool.rename(pf, "x", "batch_output")
    assert (pf.filename, pf.purpose) == ("x", "batch")


async def test_rename_after_an_upload_uploads_again_under_the_new_name(spool: UploadSpool) -> None:
    pf = spool.create("a.txt", "user_data")
    first = await spool.commit(pf)
    spool.rename(pf, "b.txt", "user_data")
    assert pf.dirty
    second = await spool.commit(pf)
    assert first is not None and second is not None and second.filename == "b.txt"


async def test_rename_while_uploading_keeps_the_file_dirty(spool: UploadSpool, fake: FakeFilesClient) -> None:
    pf = spool.create("a.txt", "user_data")
    fake.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(spool.commit, pf)
        await fake.started.wait()
        spool.rename(pf, "b.txt", "user_data")
        fake.gate.set()
    assert pf.dirty and pf.record is not None and pf.record.filename == "a.txt"
    assert (await spool.commit(pf)).filename == "b.txt"  # type: ignore[union-attr]


# -- unmount: wait_idle and close -------------------------------------------------------------------


async def test_wait_idle_is_immediate_with_nothing_in_flight(spool: UploadSpool) -> None:
    assert await spool.wait_idle(0) is True


async def test_wait_idle_waits_for_an_upload_and_gives_up_after_its_timeout(
    spool: UploadSpool, fake: FakeFilesClient, autojump_clock: trio.testing.MockClock
) -> None:
    pf = spool.create("slow.bin", "user_data")
    fake.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(spool.commit, pf)
        await fake.started.wait()
        start = trio.current_time()
        assert await spool.wait_idle(30) is False
        assert trio.current_time() - start == pytest.approx(30)
        nursery.start_soon(spool.wait_idle, 30)
        fake.gate.set()
        assert await spool.wait_idle(30) is True
    assert not pf.dirty


def test_close_preserves_what_was_never_uploaded(fake: FakeFilesClient, cache: Path) -> None:
    s = UploadSpool(fake, cache)
    pf = s.create("unsent.jsonl", "batch")
    s.write(pf, 0, b"bytes")
    kept = s.close()
    assert [p.read_bytes() for p in kept] == [b"bytes"]
    assert "unmounted" in sidecar(kept[0])["reason"]
    assert not s.session_dir.exists()
    s.close()  # twice is harmless


# -- recover ----------------------------------------------------------------------------------------

CRASH = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from openaifs.uploads import UploadSpool
    spool = UploadSpool(None, Path(sys.argv[1]))
    pf = spool.create("../crash me.jsonl", "batch")
    spool.write(pf, 0, b'{"n": 1}\\n')
    spool.rename(pf, "crash me.jsonl", "batch")
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_recover_after_kill_9_moves_the_bytes_to_failed_uploads(fake: FakeFilesClient, cache: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", CRASH, str(cache)], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    s = UploadSpool(fake, cache, now=lambda: NOW)
    try:
        [kept] = s.recover()
        assert kept.parent == s.failed_dir and kept.read_bytes() == b'{"n": 1}\n'
        assert kept.name.endswith("_crash me.jsonl")
        info = sidecar(kept)
        assert (info["filename"], info["purpose"], info["size"]) == ("crash me.jsonl", "batch", 9)
        assert "crashed or was killed" in info["reason"]
        assert [p.name for p in (cache / SPOOL_DIR).iterdir()] == [s.session_dir.name]
        assert s.recover() == []
    finally:
        s.close()


def test_recover_leaves_a_live_mount_alone(fake: FakeFilesClient, cache: Path) -> None:
    live = UploadSpool(fake, cache)
    other = UploadSpool(fake, cache)
    try:
        pf = live.create("x", "vision")
        live.write(pf, 0, b"in use")
        assert other.recover() == []
        assert pf.spool_path.read_bytes() == b"in use"
    finally:
        other.close()
        live.close()


async def test_recover_says_when_the_bytes_were_already_uploaded(fake: FakeFilesClient, cache: Path) -> None:
    dead = UploadSpool(fake, cache)
    pf = dead.create("done.txt", "user_data")
    record = await dead.commit(pf)
    os.close(dead._lock_fd)  # the mount dies between the flush and the release
    s = UploadSpool(fake, cache)
    try:
        [kept] = s.recover()
        assert record is not None and sidecar(kept)["uploaded_as"] == record.id
        assert record.id in sidecar(kept)["reason"]
    finally:
        s.close()
        os.close(pf.fd)


def test_recover_without_a_sidecar_still_keeps_the_bytes(fake: FakeFilesClient, cache: Path) -> None:
    dead = UploadSpool(fake, cache)
    pf = dead.create("x", "vision")
    dead.write(pf, 0, b"orphan")
    pf.sidecar_path.write_text("{not json")
    os.close(dead._lock_fd)
    os.close(pf.fd)
    s = UploadSpool(fake, cache)
    try:
        [kept] = s.recover()
        assert kept.read_bytes() == b"orphan" and sidecar(kept)["purpose"] == "unknown"
    finally:
        s.close()
