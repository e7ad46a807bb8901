"""Storage and transfer: persistence across restarts, concurrency, flat memory, Range, shutdown."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import trio

from openaifs.server.blobs import BlobStore
from openaifs.server.storage import FileRow, Storage
from tests.contract.conftest import rss_kib
from tests.support.server import LocalServer

MiB = 1024 * 1024


def test_files_survive_a_restart(
    server_factory: Callable[..., LocalServer], make_sdk: Callable[..., openai.OpenAI], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = server_factory(data_dir=data)
    sdk = make_sdk(first)
    kept = sdk.files.create(file=("kept.jsonl", b'{"a": 1}\n'), purpose="batch")
    gone = sdk.files.create(file=("gone.txt", b"bye"), purpose="vision")
    up = sdk.uploads.create(bytes=4, filename="up.bin", mime_type="x", purpose="vision")
    part = sdk.uploads.parts.create(up.id, data=b"abcd")
    from_upload = sdk.uploads.complete(up.id, part_ids=[part.id]).file
    pending = sdk.uploads.create(bytes=2, filename="later.bin", mime_type="x", purpose="vision")
    pending_part = sdk.uploads.parts.create(pending.id, data=b"zz")
    odd = first.add_file("batch_output", "a/b\x01..", b"\x00\xff", created_at=1234)
    sdk.files.delete(gone.id)
    before = [f.model_dump() for f in sdk.files.list()]
    first.stop()

    second = server_factory(data_dir=data)
    sdk = make_sdk(second)
    assert [f.model_dump() for f in sdk.files.list()] == before
    assert {f["id"] for f in before} == {kept.id, from_upload.id, odd["id"]}  # type: ignore[union-attr]
    assert sdk.files.content(kept.id).read() == b'{"a": 1}\n'
    assert sdk.files.content(odd["id"]).read() == b"\x00\xff"
    assert sdk.files.retrieve(odd["id"]).filename == "a/b\x01.."
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(gone.id)
    done = sdk.uploads.complete(pending.id, part_ids=[pending_part.id])  # pending uploads survive too
    assert done.file is not None and sdk.files.content(done.file.id).read() == b"zz"


async def test_twenty_concurrent_uploads(
    server: LocalServer, make_async_sdk: Callable[..., openai.AsyncOpenAI]
) -> None:
    contents = {f"f{i:02}.jsonl": (b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * 1000)) * 200 for i in range(20)}
    ids: dict[str, str] = {}
    async with make_async_sdk(server) as client:

        async def one(name: str, data: bytes) -> None:
            ids[name] = (await client.files.create(file=(name, data), purpose="batch")).id

        async with trio.open_nursery() as nursery:
            for name, data in contents.items():
                nursery.start_soon(one, name, data)
        listed = {f.filename: f async for f in client.files.list()}
        assert set(listed) == set(contents)
        for name, data in contents.items():
            assert listed[name].id == ids[name] and listed[name].bytes == len(data)
            assert (await client.files.content(ids[name])).read() == data
    assert server.requests("files.create") == 20


def _block(i: int) -> bytes:
    """1 MiB of deterministic, incompressible-looking bytes."""
    return hashlib.sha256(b"%d" % i).digest() * (MiB // 32)


def _streamed_multipart(
    n_mib: int, field: str, extra: list[tuple[str, bytes]]
) -> tuple[Iterator[bytes], int, str]:
    boundary = "stream-boundary-7d1c"
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode() + v + b"\r\n"
        for k, v in extra
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="big.bin"\r\n\r\n'.encode()
    )
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        for i in range(n_mib):
            yield _block(i)
        yield tail

    return body(), len(head) + n_mib * MiB + len(tail), f"multipart/form-data; boundary={boundary}"


def _post_streamed(
    http: httpx.Client, path: str, n_mib: int, field: str, extra: list[tuple[str, bytes]]
) -> dict:
    body, length, ctype = _streamed_multipart(n_mib, field, extra)
    r = http.post(path, content=body, headers={"content-type": ctype, "content-length": str(length)})
    assert r.status_code == 200, r.text
    return r.json()


def _download_digest(http: httpx.Client, file_id: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with http.stream("GET", f"/files/{file_id}/content") as r:
        assert r.status_code == 200
        for chunk in r.iter_bytes(MiB):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _expected_digest(n_mib: int) -> str:
    digest = hashlib.sha256()
    for i in range(n_mib):
        digest.update(_block(i))
    return digest.hexdigest()


def _rss_growth_check(server: LocalServer, baseline: int, budget_mib: int, when: str) -> None:
    assert server.proc is not None
    grown = rss_kib(server.proc.pid) - baseline
    assert grown < budget_mib * 1024, f"server RSS grew by {grown} KiB {when}"


def _warm(server: LocalServer, http: httpx.Client) -> int:
    """Exercise every code path once so imports and pools are counted in the baseline."""
    f = _post_streamed(http, "/files", 2, "file", [("purpose", b"vision")])
    _download_digest(http, f["id"])
    http.delete(f"/files/{f['id']}")
    assert server.proc is not None
    return rss_kib(server.proc.pid)


def test_64mib_upload_and_download_in_flat_memory(server: LocalServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        baseline = _warm(server, http)
        f = _post_streamed(http, "/files", 64, "file", [("purpose", b"vision")])
        assert f["bytes"] == 64 * MiB
        _rss_growth_check(server, baseline, 24, "after a 64 MiB upload")
        assert _download_digest(http, f["id"]) == (_expected_digest(64), 64 * MiB)
        _rss_growth_check(server, baseline, 24, "after a 64 MiB download")
    assert server.stats()["bytes_received"]["files.create"] > 64 * MiB
    assert server.stats()["bytes_sent"]["files.content"] == 66 * MiB


@pytest.mark.slow
def test_1gib_through_the_uploads_api_in_flat_memory(server: LocalServer) -> None:
    n_parts, part_mib = 16, 64  # the SDK's default part size: 64 MiB
    with httpx.Client(base_url=server.base_url, timeout=300) as http:
        baseline = _warm(server, http)
        up = http.post(
            "/uploads",
            json={
                "filename": "g.bin",
                "purpose": "vision",
                "bytes": n_parts * part_mib * MiB,
                "mime_type": "application/octet-stream",
            },
        ).json()
        part_ids = []
        for _ in range(n_parts):
            part_ids.append(_post_streamed(http, f"/uploads/{up['id']}/parts", part_mib, "data", [])["id"])
        _rss_growth_check(server, baseline, 48, "after 1 GiB of parts")
        done = http.post(f"/uploads/{up['id']}/complete", json={"part_ids": part_ids}).json()
        assert done["status"] == "completed", done
        _rss_growth_check(server, baseline, 48, "after joining 1 GiB")
        digest, size = _download_digest(http, done["file"]["id"])
        assert size == n_parts * part_mib * MiB
        one_part = _expected_digest(part_mib)
        assert digest != one_part  # (sanity) the whole is not a single part
        _rss_growth_check(server, baseline, 48, "after a 1 GiB download")


@pytest.fixture
def blob(server: LocalServer) -> tuple[str, bytes]:
    data = bytes(range(256)) * 40  # 10240 bytes
    return server.add_file("batch_output", "r.bin", data)["id"], data


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-9", 0, 10),
        ("bytes=10-", 10, 10240),
        ("bytes=-100", 10140, 10240),
        ("bytes=10000-99999", 10000, 10240),
        ("bytes=-99999", 0, 10240),
        ("bytes=10239-10239", 10239, 10240),
    ],
)
def test_range_requests(
    raw: httpx.Client, blob: tuple[str, bytes], header: str, start: int, end: int
) -> None:
    file_id, data = blob
    r = raw.get(f"/files/{file_id}/content", headers={"range": header})
    assert r.status_code == 206
    assert r.content == data[start:end]
    assert r.headers["content-range"] == f"bytes {start}-{end - 1}/10240"
    assert r.headers["content-length"] == str(end - start)
    assert r.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize("header", ["bytes=10240-", "bytes=20000-30000", "bytes=-0"])
def test_unsatisfiable_range(raw: httpx.Client, blob: tuple[str, bytes], header: str) -> None:
    r = raw.get(f"/files/{blob[0]}/content", headers={"range": header})
    assert r.status_code == 416
    assert r.headers["content-range"] == "bytes */10240"
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("header", ["bytes=5-2", "items=0-1", "bytes=0-1,5-6", "bytes=x-y", "bytes=-"])
def test_unusable_range_headers_are_ignored(raw: httpx.Client, blob: tuple[str, bytes], header: str) -> None:
    r = raw.get(f"/files/{blob[0]}/content", headers={"range": header})
    assert (r.status_code, r.content) == (200, blob[1])


def test_full_download_headers(raw: httpx.Client, blob: tuple[str, bytes]) -> None:
    r = raw.get(f"/files/{blob[0]}/content")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-length"] == "10240"
    assert r.headers["accept-ranges"] == "bytes"


def test_empty_file_download(server: LocalServer, raw: httpx.Client) -> None:
    file_id = server.add_file("vision", "empty", b"")["id"]
    r = raw.get(f"/files/{file_id}/content")
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "0")
    assert raw.get(f"/files/{file_id}/content", headers={"range": "bytes=0-"}).status_code == 416


def test_no_range_flag(server_factory: Callable[..., LocalServer]) -> None:
    srv = server_factory("--no-range")
    file_id = srv.add_file("vision", "r", b"0123456789")["id"]
    r = httpx.get(f"{srv.base_url}/files/{file_id}/content", headers={"range": "bytes=2-3"})
    assert (r.status_code, r.content) == (200, b"0123456789")
    assert "accept-ranges" not in r.headers
    srv.set_faults(range=True)
    r = httpx.get(f"{srv.base_url}/files/{file_id}/content", headers={"range": "bytes=2-3"})
    assert (r.status_code, r.content) == (206, b"23")
    srv.set_faults()  # {} restores the startup setting
    assert (
        httpx.get(f"{srv.base_url}/files/{file_id}/content", headers={"range": "bytes=2-3"}).status_code
        == 200
    )


def test_range_switched_off_at_run_time(
    server: LocalServer, raw: httpx.Client, blob: tuple[str, bytes]
) -> None:
    server.set_faults(range=False)
    r = raw.get(f"/files/{blob[0]}/content", headers={"range": "bytes=0-0"})
    assert (r.status_code, len(r.content)) == (200, 10240) and "accept-ranges" not in r.headers
    assert server.admin("GET", "faults")["range"] is False


def test_download_of_a_file_deleted_meanwhile_completes(server: LocalServer) -> None:
    data = os.urandom(8 * MiB)
    file_id = server.add_file("vision", "big", data)["id"]
    with httpx.Client(base_url=server.base_url) as http, http.stream("GET", f"/files/{file_id}/content") as r:
        chunks = r.iter_raw(64 * 1024)
        got = bytearray(next(chunks))
        assert http.delete(f"/files/{file_id}").status_code == 200
        for chunk in chunks:
            got += chunk
    assert bytes(got) == data


# -- process lifecycle ---------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_means_clean_exit_and_temp_data_removed(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "openaifs", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/v1) \(data: (.+)\)", line)
        assert m, line
        data_dir = Path(m.group(2))
        assert data_dir.is_dir()
        assert httpx.get(m.group(1) + "/files").status_code == 200
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0, proc.stdout.read()
        assert not data_dir.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_bad_key_file_is_a_usage_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "openaifs",
            "serve",
            "--port",
            "0",
            "--api-key-file",
            str(tmp_path / "missing"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "cannot read API key file" in r.stderr


# -- storage units ---------------------------------------------------------------------------------


def test_crash_leftovers_are_swept(tmp_path: Path) -> None:
    store = Storage(tmp_path)
    live = FileRow("file-" + "a" * 24, "live", "vision", 1, 1)
    w = store.blobs.writer()
    w.write(b"x")
    w.commit(store.blobs.file_path(live.id))
    store.insert_file(live)
    half_written = store.blobs.writer()
    half_written.write(b"partial")  # a crash now leaves a temp file ...
    store.blobs.file_path("file-" + "b" * 24).write_bytes(b"orphan")  # ... or a blob whose row was lost
    store.close()
    reopened = Storage(tmp_path)
    assert list(reopened.blobs.tmp.iterdir()) == []
    assert sorted(p.name for p in reopened.blobs.files.iterdir()) == [live.id]
    assert reopened.get_file(live.id, now=2) == live
    reopened.close()


def test_discarded_writer_leaves_nothing(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    w = blobs.writer(md5=True)
    w.write(b"abc")
    assert w.md5_hex() == hashlib.md5(b"abc").hexdigest()
    w.discard()
    w.discard()
    assert list(blobs.tmp.iterdir()) == []


def test_interrupted_upload_leaves_nothing(server: LocalServer) -> None:
    url = urlsplit(server.base_url)
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {10 * MiB}\r\n\r\n"
        '--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nvision\r\n'
        '--b\r\nContent-Disposition: form-data; name="file"; filename="cut.bin"\r\n\r\n'
    ).encode()
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(head + b"x" * (3 * MiB))
    deadline = time.monotonic() + 5
    while list((server.data_dir / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((server.data_dir / "tmp").iterdir()) == []
    assert httpx.get(f"{server.base_url}/files").json()["data"] == []
    assert server.requests("files.create") == 1
    assert "Traceback" not in "".join(server.output)
