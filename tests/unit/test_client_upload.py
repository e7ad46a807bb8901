"""upload(): streamed multipart bodies, the Uploads API, and no duplicates after lost answers.

An in-process fake of /files and /uploads (httpx.MockTransport) lets each fault land exactly where a
test wants it: after the server did the work, or before. Fake sleep; no waiting."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from openaifs.client import FilesClient
from openaifs.config import ClientConfig
from openaifs.errors import BadRequestError, LocalFileError, ServerError, TransportError
from tests.unit.test_client_multipart import parse_form, rfc5987_filename

BASE = "http://fake.test/v1"
KEY = "sk-unit-test-key-0000"


def err(status: int, message: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"message": message, "type": "x", "param": None, "code": None}}
    )


@dataclass
class FakeAPI:
    """Enough of the Files and Uploads API; ``script[route]`` lists faults for successive calls:
    "ok", "drop_after" (do the work, lose the answer), "drop_before" (lose the request), or a
    Response to answer without doing the work, or ("after", Response) to answer it after the work."""

    script: dict[str, list[object]] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)
    parts: dict[str, bytes] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    forms: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    seq: int = 0

    def new_id(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}{self.seq:04d}"

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        route = self.route(request)
        self.calls.append(route)
        steps = self.script.get(route, [])
        step = steps.pop(0) if steps else "ok"
        if step == "drop_before":
            raise httpx.ReadError("connection reset")
        if isinstance(step, httpx.Response):
            return step
        body = await request.aread()
        response = await self.handle(route, request, body)
        if step == "drop_after":
            raise httpx.RemoteProtocolError("server disconnected without sending a response")
        if isinstance(step, tuple):
            return step[1]
        return response

    @staticmethod
    def route(request: httpx.Request) -> str:
        path = request.url.path.removeprefix("/v1")
        if path == "/files":
            return "files.list" if request.method == "GET" else "files.create"
        if path.startswith("/uploads/"):
            return "uploads." + path.rsplit("/", 1)[1]
        if path == "/uploads":
            return "uploads.create"
        return "other"

    async def handle(self, route: str, request: httpx.Request, body: bytes) -> httpx.Response:
        if route == "files.create":
            return httpx.Response(200, json=self.create_file(request, body))
        if route == "files.list":
            return httpx.Response(200, json=self.list(request))
        if route == "uploads.create":
            spec = json.loads(body)
            uid = self.new_id("upload_")
            self.uploads[uid] = {**spec, "id": uid, "status": "pending"}
            return httpx.Response(200, json=self.uploads[uid])
        uid = request.url.path.split("/")[-2]
        if route == "uploads.parts":
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            await trio.sleep(0.001)  # let other parts overlap
            self.in_flight -= 1
            boundary = request.headers["content-type"].split("boundary=")[1]
            ((headers, data),) = parse_form(body, boundary)
            pid = self.new_id("part_")
            self.parts[pid] = data
            return httpx.Response(200, json={"id": pid, "object": "upload.part", "upload_id": uid})
        if route == "uploads.complete":
            spec = json.loads(body)
            data = b"".join(self.parts[p] for p in spec["part_ids"])
            up = self.uploads[uid]
            assert len(data) == up["bytes"] and hashlib.md5(data).hexdigest() == spec["md5"]
            record = self.store(up["filename"], up["purpose"], data)
            up.update(status="completed", file=record)
            return httpx.Response(200, json=up)
        if route == "uploads.cancel":
            self.uploads[uid]["status"] = "cancelled"
            return httpx.Response(200, json=self.uploads[uid])
        return err(404, "no route")

    def create_file(self, request: httpx.Request, body: bytes) -> dict[str, Any]:
        boundary = request.headers["content-type"].split("boundary=")[1]
        assert int(request.headers["content-length"]) == len(body)
        parts = parse_form(body, boundary)
        form: dict[str, Any] = {}
        for headers, data in parts:
            disposition = headers["content-disposition"].decode("latin-1")
            name = disposition.split('name="', 1)[1].split('"', 1)[0]
            form[name] = (
                (rfc5987_filename(headers["content-disposition"]), data)
                if "filename*" in disposition
                else data.decode()
            )
        self.forms.append(form)
        filename, data = form["file"]
        return self.store(filename, form["purpose"], data)

    def store(self, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        fid = self.new_id("file-")
        self.files[fid] = {
            "id": fid,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.blobs[fid] = data
        return self.files[fid]

    def list(self, request: httpx.Request) -> dict[str, Any]:
        q = request.url.params
        items = [f for f in reversed(self.files.values()) if f["purpose"] == q.get("purpose", f["purpose"])]
        if "after" in q:
            items = items[[f["id"] for f in items].index(q["after"]) + 1 :]
        limit = int(q.get("limit", 10000))
        return {"object": "list", "data": items[:limit], "has_more": len(items) > limit}


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await trio.lowlevel.checkpoint()

    def clock(self) -> float:
        return self.now


def make(api: FakeAPI, **cfg: Any) -> tuple[FilesClient, FakeTime]:
    config = ClientConfig(base_url=BASE, api_key=KEY, **cfg)
    t = FakeTime()
    return FilesClient(
        config, httpx.AsyncClient(transport=httpx.MockTransport(api)), sleep=t.sleep, clock=t.clock
    ), t


@pytest.fixture
def src(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(2 * 1024 * 1024 + 333)
    p = tmp_path / "local.bin"
    p.write_bytes(data)
    return p, data


async def test_single_upload_streams_fields_and_exact_name(src: tuple[Path, bytes]) -> None:
    path, data = src
    api = FakeAPI()
    client, t = make(api)
    seen: list[int] = []
    name = 'we"ird\\ na/me\n🦊.jsonl'
    record = await client.upload(path, name, "batch", expires_after=7200, progress=seen.append)
    assert record.filename == name and record.bytes == len(data) and record.purpose == "batch"
    assert api.blobs[record.id] == data
    assert api.forms[0]["purpose"] == "batch"
    assert api.forms[0]["expires_after[anchor]"] == "created_at"
    assert api.forms[0]["expires_after[seconds]"] == "7200"
    assert seen[-1] == len(data) and seen == sorted(seen)
    assert client.stats.requests == Counter({"files.create": 1})
    assert client.stats.bytes_up > len(data) and t.sleeps == []


async def test_lost_answer_adopts_the_file_instead_of_uploading_again(
    src: tuple[Path, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    path, data = src
    api = FakeAPI(script={"files.create": ["drop_after"]})
    client, _ = make(api)
    with caplog.at_level(logging.INFO, logger="openaifs.client"):
        record = await client.upload(path, "a.jsonl", "batch")
    assert list(api.files) == [record.id]
    assert api.calls == ["files.create", "files.list"]
    assert client.stats.adopted_uploads == 1
    assert any("earlier attempt" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


async def test_5xx_after_the_work_adopts_too(src: tuple[Path, bytes]) -> None:
    path, _ = src
    api = FakeAPI(script={"files.create": [("after", err(500, "oops"))]})
    client, _ = make(api)
    record = await client.upload(path, "a.jsonl", "batch")
    assert list(api.files) == [record.id] and api.calls == ["files.create", "files.list"]


async def test_5xx_before_the_work_uploads_again_after_looking(src: tuple[Path, bytes]) -> None:
    path, _ = src
    api = FakeAPI(script={"files.create": [err(503, "busy"), "drop_before"]})
    client, t = make(api)
    record = await client.upload(path, "a.jsonl", "batch")
    assert list(api.files) == [record.id]
    assert api.calls == ["files.create", "files.list", "files.create", "files.list", "files.create"]
    assert len(t.sleeps) == 2


async def test_429_is_retried_without_looking(src: tuple[Path, bytes]) -> None:
    path, _ = src
    api = FakeAPI(script={"files.create": [httpx.Response(429, headers={"retry-after": "1"}, json={})]})
    client, t = make(api)
    await client.upload(path, "a.jsonl", "batch")
    assert api.calls == ["files.create", "files.create"] and t.sleeps == [1.0]


async def test_failed_look_counts_as_an_attempt_and_is_repeated(src: tuple[Path, bytes]) -> None:
    path, _ = src
    api = FakeAPI(script={"files.create": ["drop_after"], "files.list": [err(502, "gw")]})
    client, t = make(api)
    record = await client.upload(path, "a.jsonl", "batch")
    assert list(api.files) == [record.id]
    assert api.calls == ["files.create", "files.list", "files.list"] and len(t.sleeps) == 2


async def test_out_of_attempts_still_looks_once_more(src: tuple[Path, bytes]) -> None:
    path, _ = src
    api = FakeAPI(script={"files.create": ["drop_after"]})
    client, t = make(api, max_attempts=1)
    record = await client.upload(path, "a.jsonl", "batch")
    assert list(api.files) == [record.id] and t.sleeps == []


async def test_out_of_attempts_raises_transport_error_when_nothing_was_made(src: tuple[Path, bytes]) -> None:
    path, _ = src
    api = FakeAPI(script={"files.create": ["drop_before"] * 3})
    client, _ = make(api, max_attempts=3)
    with pytest.raises(TransportError, match="upload request failed: the connection broke.*3 attempts"):
        await client.upload(path, "a.jsonl", "batch")
    assert api.files == {}


async def test_own_earlier_upload_is_never_adopted(src: tuple[Path, bytes]) -> None:
    path, _ = src
    api = FakeAPI()
    client, _ = make(api)
    first = await client.upload(path, "same.jsonl", "batch")
    api.script["files.create"] = ["drop_before"]
    second = await client.upload(path, "same.jsonl", "batch")
    assert first.id != second.id and len(api.files) == 2


async def test_multipart_upload_in_bounded_parallel_parts(src: tuple[Path, bytes]) -> None:
    path, data = src
    api = FakeAPI()
    client, _ = make(api, single_upload_limit=1024 * 1024, part_size=256 * 1024, part_concurrency=3)
    seen: list[int] = []
    record = await client.upload(path, "big.jsonl", "fine-tune", progress=seen.append)
    assert api.blobs[record.id] == data and record.filename == "big.jsonl"
    (upload,) = api.uploads.values()
    assert upload["mime_type"] == "text/jsonl" and upload["bytes"] == len(data)
    assert client.stats.requests["uploads.parts"] == 9  # ceil((2 MiB + 333) / 256 KiB)
    assert 1 < api.max_in_flight <= 3
    assert seen[-1] == len(data)


async def test_a_failing_part_is_retried_alone(src: tuple[Path, bytes]) -> None:
    path, data = src
    api = FakeAPI(script={"uploads.parts": ["ok", err(503, "busy"), "drop_after"]})
    client, _ = make(api, single_upload_limit=1024 * 1024, part_size=1024 * 1024)
    record = await client.upload(path, "big.bin", "assistants")
    assert api.blobs[record.id] == data
    assert client.stats.requests["uploads.parts"] == 5 and client.stats.retries["uploads.parts"] == 2


async def test_a_part_refused_cancels_the_upload(src: tuple[Path, bytes]) -> None:
    path, _ = src
    api = FakeAPI(script={"uploads.parts": ["ok", err(400, "part too large")]})
    client, _ = make(api, single_upload_limit=1024 * 1024, part_size=1024 * 1024)
    with pytest.raises(
        BadRequestError, match="upload part request of upload_0001 failed with HTTP 400: part too large"
    ):
        await client.upload(path, "big.bin", "assistants")
    (upload,) = api.uploads.values()
    assert upload["status"] == "cancelled" and api.files == {}
    assert api.calls[-1] == "uploads.cancel"


async def test_lost_complete_answer_adopts_the_file(src: tuple[Path, bytes]) -> None:
    path, data = src
    api = FakeAPI(script={"uploads.complete": ["drop_after"]})
    client, _ = make(api, single_upload_limit=1024 * 1024, part_size=1024 * 1024)
    record = await client.upload(path, "big.bin", "vision")
    assert list(api.files) == [record.id] and api.blobs[record.id] == data
    assert api.calls[-2:] == ["uploads.complete", "files.list"]


async def test_complete_failing_for_good_cancels(src: tuple[Path, bytes]) -> None:
    path, _ = src
    api = FakeAPI(script={"uploads.complete": [err(500, "broken")] * 3})
    client, _ = make(api, single_upload_limit=1024 * 1024, part_size=1024 * 1024, max_attempts=3)
    with pytest.raises(ServerError):
        await client.upload(path, "big.bin", "vision")
    assert api.calls[-1] == "uploads.cancel"


async def test_missing_local_file(tmp_path: Path) -> None:
    client, _ = make(FakeAPI())
    with pytest.raises(LocalFileError, match="cannot open"):
        await client.upload(tmp_path / "nope", "x", "batch")


async def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    api = FakeAPI()
    client, _ = make(api)
    record = await client.upload(tmp_path / "empty", "empty.jsonl", "batch")
    assert record.bytes == 0 and api.blobs[record.id] == b""


async def test_concurrent_same_name_uploads_never_share_a_file(tmp_path: Path) -> None:
    """The first attempt of each loses its answer; run together, neither may adopt the other's file."""
    paths = []
    for i in range(3):
        p = tmp_path / f"s{i}"
        p.write_bytes(b"%d" % i * 100)
        paths.append(p)
    api = FakeAPI(script={"files.create": ["drop_after", "drop_after", "drop_after"]})
    client, _ = make(api)
    ids: list[str] = []

    async def one(p: Path) -> None:
        ids.append((await client.upload(p, "same.jsonl", "batch")).id)

    async with trio.open_nursery() as nursery:
        for p in paths:
            nursery.start_soon(one, p)
    assert sorted(ids) == sorted(api.files) and len(set(ids)) == 3
    assert sorted(api.blobs[i] for i in ids) == sorted(p.read_bytes() for p in paths)
