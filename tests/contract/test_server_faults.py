"""Fault injection and the admin routes (docs/INTERNALS.md), observed over real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
import trio.lowlevel

from openaifs.server.admin import is_loopback
from openaifs.server.app import FilesApp
from openaifs.server.faults import ROUTES
from openaifs.server.state import ServerState
from openaifs.server.storage import Storage
from tests.contract.conftest import error_of
from tests.support.server import LocalServer

MiB = 1024 * 1024


def test_stats_count_requests_and_bytes_per_route(sdk: openai.OpenAI, server: LocalServer) -> None:
    stats = server.stats()
    assert set(stats) == {"requests", "bytes_sent", "bytes_received", "chunked_requests"}
    assert all(set(stats[k]) == set(ROUTES) for k in stats)
    assert sum(stats["requests"].values()) == 0
    f = sdk.files.create(file=("a.txt", b"x" * 1000), purpose="vision")
    sdk.files.list()
    sdk.files.list()
    assert sdk.files.content(f.id).read() == b"x" * 1000
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve("file-missing")
    up = sdk.uploads.create(bytes=1, filename="u", mime_type="x", purpose="vision")
    part = sdk.uploads.parts.create(up.id, data=b"y")
    sdk.uploads.complete(up.id, part_ids=[part.id])
    sdk.uploads.cancel(sdk.uploads.create(bytes=1, filename="u", mime_type="x", purpose="vision").id)
    sdk.files.delete(f.id)
    stats = server.stats()
    assert stats["requests"] == {
        "files.list": 2,
        "files.create": 1,
        "files.retrieve": 1,
        "files.delete": 1,
        "files.content": 1,
        "uploads.create": 2,
        "uploads.parts": 1,
        "uploads.complete": 1,
        "uploads.cancel": 1,
    }
    assert stats["bytes_sent"]["files.content"] == 1000
    assert 1000 < stats["bytes_received"]["files.create"] < 1500
    assert stats["bytes_received"]["files.list"] == 0
    assert stats["bytes_sent"]["files.list"] > 0
    assert sum(stats["chunked_requests"].values()) == 0  # the SDK always sends a Content-Length
    server.reset_stats()
    assert sum(server.stats()["requests"].values()) == 0


def test_latency(server: LocalServer, raw: httpx.Client) -> None:
    server.set_faults(latency_ms=300, latency_jitter_ms=100)
    started = time.monotonic()
    assert raw.get("/files").status_code == 200
    assert 0.3 <= time.monotonic() - started < 2.0
    server.set_faults()
    started = time.monotonic()
    raw.get("/files")
    assert time.monotonic() - started < 0.3


def test_server_errors(server: LocalServer, sdk: openai.OpenAI) -> None:
    server.set_faults(error_rate={"files.list": 1.0}, error_status=503)
    with pytest.raises(openai.InternalServerError) as info:
        sdk.files.list()
    assert info.value.status_code == 503
    assert error_of(info.value)["type"] == "server_error"
    assert sdk.files.create(file=("a", b"a"), purpose="vision").bytes == 1  # other routes unaffected
    server.set_faults(error_rate={"*": 1.0})
    with pytest.raises(openai.InternalServerError) as info:
        sdk.files.retrieve("file-x")
    assert info.value.status_code == 500
    server.set_faults(error_rate={"*": 1.0, "files.retrieve": 0.0})
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve("file-x")  # a route's own rate overrides "*"
    assert server.requests("files.list") == 1


def test_rate_limits(server: LocalServer, sdk: openai.OpenAI, raw: httpx.Client) -> None:
    server.set_faults(rate_limit_rate={"*": 1.0}, retry_after=2)
    with pytest.raises(openai.RateLimitError) as info:
        sdk.files.list()
    assert error_of(info.value)["code"] == "rate_limit_exceeded"
    r = raw.get("/files")
    assert (r.status_code, r.headers["retry-after"], r.headers["retry-after-ms"]) == (429, "2", "2000")
    server.set_faults(rate_limit_rate={"*": 1.0}, retry_after=0.1)
    r = raw.get("/files")
    assert (r.headers["retry-after"], r.headers["retry-after-ms"]) == ("0.1", "100")
    server.set_faults(rate_limit_rate={"files.list": 0.5}, seed=7)
    statuses = [raw.get("/files").status_code for _ in range(40)]
    assert 5 < statuses.count(429) < 35 and set(statuses) == {200, 429}
    server.set_faults(rate_limit_rate={"files.list": 0.5}, seed=7)
    assert [raw.get("/files").status_code for _ in range(40)] == statuses  # seeded: reproducible


def test_sdk_retries_through_faults(server: LocalServer, make_sdk: Callable[..., openai.OpenAI]) -> None:
    # 429s carry retry-after (10 ms here); 5xx would cost the SDK's 0.5 s+ backoff, so only 429s.
    server.set_faults(rate_limit_rate={"files.list": 0.6}, retry_after=0.01, seed=3)
    sdk = make_sdk(server, max_retries=10)
    for _ in range(5):
        assert sdk.files.list().data == []
    assert server.requests("files.list") > 5


def _stream_until_cut(base_url: str, path: str) -> int:
    received = 0
    with httpx.Client(base_url=base_url) as http, http.stream("GET", path) as r:
        assert r.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in r.iter_raw():
                received += len(chunk)
    return received


def test_drop_mid_body_of_content(server: LocalServer) -> None:
    size = 5 * MiB
    file_id = server.add_file("vision", "d.bin", b"z" * size)["id"]
    server.set_faults(drop_rate={"files.content": 1.0}, seed=11)
    first = _stream_until_cut(server.base_url, f"/files/{file_id}/content")
    assert 0 < first < size
    server.set_faults(drop_rate={"files.content": 1.0}, seed=11)
    assert _stream_until_cut(server.base_url, f"/files/{file_id}/content") == first  # same seed, same cut
    assert server.stats()["bytes_sent"]["files.content"] == 2 * first
    with pytest.raises(httpx.RemoteProtocolError):  # ranged answers are cut too
        httpx.get(f"{server.base_url}/files/{file_id}/content", headers={"range": f"bytes={size - 10}-"})
    server.set_faults()
    assert len(httpx.get(f"{server.base_url}/files/{file_id}/content").content) == size  # server still fine
    output = "".join(server.output)
    assert "Traceback" not in output and "Exception in ASGI" not in output


def test_drop_mid_body_of_json(server: LocalServer) -> None:
    for i in range(3):
        server.add_file("vision", f"f{i}", b"")
    server.set_faults(drop_rate={"files.list": 1.0})
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{server.base_url}/files")


def test_drop_after_request_does_the_work(
    server: LocalServer, make_sdk: Callable[..., openai.OpenAI]
) -> None:
    server.set_faults(drop_after_request_rate={"files.create": 1.0})
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        httpx.post(f"{server.base_url}/files", data={"purpose": "vision"}, files={"file": ("once.txt", b"1")})
    server.set_faults()
    sdk = make_sdk(server)
    assert [f.filename for f in sdk.files.list()] == ["once.txt"]
    # The SDK retries a dropped POST without an idempotency key: duplicates appear.
    server.set_faults(drop_after_request_rate={"files.create": 1.0})
    with pytest.raises(openai.APIConnectionError):
        make_sdk(server, max_retries=2).files.create(file=("dup.txt", b"2"), purpose="vision")
    server.set_faults()
    assert sorted(f.filename for f in sdk.files.list()) == ["dup.txt"] * 3 + ["once.txt"]
    output = "".join(server.output)
    assert "Traceback" not in output and "ASGI callable" not in output


def test_corrupt_answers(server: LocalServer) -> None:
    server.set_faults(corrupt_rate={"files.list": 1.0})
    r = httpx.get(f"{server.base_url}/files")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        r.json()


def test_fault_set_validation(server: LocalServer) -> None:
    for bad in (
        {"error_rate": {"files.nope": 0.1}},
        {"error_rate": {"*": 1.5}},
        {"latency_ms": -1},
        {"error_status": 404},
        {"surprise": 1},
        {"range": "yes"},
        [1],
    ):
        r = httpx.put(f"{server.root_url}/_admin/faults", json=bad)
        assert r.status_code == 400, bad
    server.set_faults(latency_ms=5, error_rate={"*": 0.25}, seed=1)
    got = server.admin("GET", "faults")
    assert (got["latency_ms"], got["error_rate"], got["seed"], got["range"]) == (5, {"*": 0.25}, 1, True)
    server.set_faults()
    assert server.admin("GET", "faults")["error_rate"] == {}


def test_admin_files_take_any_name_and_purpose(server: LocalServer, sdk: openai.OpenAI) -> None:
    names = ["a/b/c.txt", "ctl\x00\x01\n\t.txt", "", "..", ".", "x" * 1000, "名前.jsonl", "sp ace%20.txt"]
    made = [
        server.add_file("batch_output", n, n.encode() or b"-", created_at=1000 + i)
        for i, n in enumerate(names)
    ]
    for f, name in zip(made, names, strict=True):
        assert sdk.files.retrieve(f["id"]).filename == name
        assert sdk.files.content(f["id"]).read() == (name.encode() or b"-")
    assert [f.filename for f in sdk.files.list(order="asc")] == names
    assert made[0]["created_at"] == 1000 and made[0]["purpose"] == "batch_output"
    for purpose in ("assistants_output", "fine-tune-results"):
        assert server.add_file(purpose, "r", b"")["purpose"] == purpose
    r = httpx.post(f"{server.root_url}/_admin/files", params={"filename": "x"}, content=b"")
    assert r.status_code == 400


def test_admin_clock(server: LocalServer, sdk: openai.OpenAI) -> None:
    now = server.admin("GET", "clock")["now"]
    assert abs(now - time.time()) < 5
    assert server.admin("POST", "clock", json={"advance": 86400})["now"] >= now + 86400
    assert sdk.files.create(file=("a", b"a"), purpose="vision").created_at >= now + 86400
    assert httpx.post(f"{server.root_url}/_admin/clock", json={"advance": -1}).status_code == 400
    assert httpx.post(f"{server.root_url}/_admin/clock", json={"back": 1}).status_code == 400


def test_admin_config(server: LocalServer) -> None:
    config = server.admin("GET", "config")
    assert config == {
        "max_file_bytes": 512_000_000,
        "max_part_bytes": 64 * MiB,
        "max_upload_bytes": 8_000_000_000,
        "max_page_size": 10000,
        "refuse_downloads": ["assistants", "user_data"],
        "validate_jsonl": True,
    }
    server.configure(max_page_size=2)
    assert server.admin("GET", "config") == {**config, "max_page_size": 2}
    for bad in ({"max_page_size": 0}, {"validate_jsonl": "no"}, {"refuse_downloads": "batch"}, {"nope": 1}):
        assert httpx.put(f"{server.root_url}/_admin/config", json=bad).status_code == 400
    assert server.admin("GET", "config")["max_page_size"] == 2


def test_admin_routes_are_not_counted(server: LocalServer) -> None:
    server.add_file("vision", "a", b"abc")
    server.admin("GET", "faults")
    assert server.requests() == 0


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1", True),
        ("127.5.6.7", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("192.168.1.2", False),
        ("::ffff:10.0.0.1", False),
        ("fe80::1%eth0", False),
        ("0.0.0.0", False),
        ("localhost", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback(host: str | None, ok: bool) -> None:
    assert is_loopback(host) is ok


async def _call(app: FilesApp, method: str, path: str, client: tuple[str, int]) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [],
        "client": client,
        "server": ("127.0.0.1", 1),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
        "raw_path": path.encode(),
    }
    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


async def test_admin_refuses_remote_clients(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    try:
        app = FilesApp(ServerState(storage))
        status, body = await _call(app, "GET", "/_admin/stats", ("10.1.2.3", 5555))
        assert status == 403 and "loopback" in body["error"]["message"]
        status, body = await _call(app, "GET", "/_admin/stats", ("127.0.0.1", 5555))
        assert status == 200 and "requests" in body
        status, body = await _call(app, "GET", "/v1/files", ("10.1.2.3", 5555))
        assert status == 200 and body["data"] == []  # the API itself is not loopback-only
        await trio.lowlevel.checkpoint()
    finally:
        storage.close()
