"""The httpx seam: exception classes, error bodies, the retry budget on a fake clock, headers,
and listing edge cases (a fake /files via httpx.MockTransport)."""

from __future__ import annotations

import logging
import random
from typing import Any

import httpx
import pytest

from openaifs import __version__
from openaifs.client import ClientStats, FilesClient
from openaifs.client.retry import EXC_CONNECT, EXC_DROPPED, EXC_TIMEOUT
from openaifs.client.transport import BrokenBody, Budget, Failure, classify, parse_error_body
from openaifs.config import ClientConfig
from openaifs.errors import NotFoundError, ServerError, TransportError

KEY = "sk-unit-test-key-1111"


@pytest.mark.parametrize(
    ("exc", "kind", "reached"),
    [
        (httpx.ConnectError("refused"), EXC_CONNECT, False),
        (httpx.ConnectTimeout("slow"), EXC_CONNECT, False),
        (httpx.PoolTimeout("busy"), EXC_CONNECT, False),
        (httpx.ReadTimeout("slow"), EXC_TIMEOUT, True),
        (httpx.WriteTimeout("slow"), EXC_TIMEOUT, True),
        (httpx.ReadError("reset"), EXC_DROPPED, True),
        (httpx.WriteError("pipe"), EXC_DROPPED, True),
        (httpx.RemoteProtocolError("cut"), EXC_DROPPED, True),
        (BrokenBody("short"), EXC_DROPPED, True),
        (httpx.UnsupportedProtocol("ftp"), None, False),
        (httpx.LocalProtocolError("bug"), None, False),
        (httpx.InvalidURL("bad"), None, False),
    ],
)
def test_classify(exc: Exception, kind: str | None, reached: bool) -> None:
    assert classify(exc) == (kind, reached)


def test_parse_error_body_shapes() -> None:
    env = b'{"error": {"message": "No such File", "type": "invalid_request_error", "param": "id", '
    env += b'"code": null}}'
    # (message, type, code, param)
    assert parse_error_body(env, 404, "Not Found") == ("No such File", "invalid_request_error", None, "id")
    assert parse_error_body(b'{"error": "plain"}', 502, "Bad Gateway") == ("plain", None, None, None)
    assert parse_error_body(b"", 503, "Service Unavailable") == (
        "HTTP 503 Service Unavailable",
        None,
        None,
        None,
    )
    html = b"<html>\n<body>" + b"x" * 5000 + b"</body></html>"
    message = parse_error_body(html, 502, "")[0]
    assert "\n" not in message and len(message) == 500 and message.endswith("…")
    assert parse_error_body(b"\xff\xfe garbage", 500, "")[0].endswith("garbage")
    assert parse_error_body(b'{"error": {"message": 42, "code": 7}}', 400, "")[:3] == ("42", None, "7")


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


async def test_budget_spends_attempts_then_raises_the_last_error(caplog: pytest.LogCaptureFixture) -> None:
    t = FakeTime()
    stats = ClientStats()
    budget = Budget(ClientConfig(max_attempts=3), stats, random.Random(1), t.sleep, t.clock)
    failure = Failure("files.list", "list", status=503, message="busy", headers={})
    with caplog.at_level(logging.INFO, logger="openaifs.client"):
        await budget.wait_or_raise(failure)
        await budget.wait_or_raise(failure)
        with pytest.raises(ServerError, match="list request failed with HTTP 503: busy"):
            await budget.wait_or_raise(failure)
    assert len(t.sleeps) == 2 and stats.retries["files.list"] == 2
    assert [r.levelname for r in caplog.records] == ["INFO", "INFO", "WARNING"]
    assert "gave up after 3 attempts" in caplog.records[-1].getMessage()


async def test_budget_deadline_on_fake_clock() -> None:
    t = FakeTime()
    budget = Budget(
        ClientConfig(max_attempts=100, total_deadline=5.0), ClientStats(), random.Random(1), t.sleep, t.clock
    )
    failure = Failure("files.content", "download", "file-1", exc_kind=EXC_DROPPED, exc=httpx.ReadError("x"))
    with pytest.raises(
        TransportError, match=r"download request of file-1 failed: the connection broke.*deadline"
    ):
        while True:
            await budget.wait_or_raise(failure)
    assert t.now - 100.0 <= 5.0
    budget.reset()
    assert budget.attempts == 0 and budget.started == t.now


def test_make_http_headers_timeouts_and_pool() -> None:
    cfg = ClientConfig(
        base_url="https://example.test/v1",
        api_key=KEY,
        organization="org-1",
        project="proj-2",
        connect_timeout=3,
        read_timeout=7,
        max_connections=5,
    )
    http = FilesClient.make_http(cfg)
    assert http.headers["authorization"] == f"Bearer {KEY}"
    assert http.headers["openai-organization"] == "org-1" and http.headers["openai-project"] == "proj-2"
    assert http.headers["user-agent"] == f"openaifs/{__version__}"
    assert http.timeout.connect == 3 and http.timeout.read == 7 and http.timeout.write == 7
    assert http._transport._pool._max_connections == 5  # type: ignore[attr-defined]
    assert KEY not in repr(http) + repr(cfg) + repr(http.headers)
    bare = FilesClient.make_http(ClientConfig())
    assert "authorization" not in bare.headers and "openai-organization" not in bare.headers


def page(ids: list[str], has_more: Any = None) -> dict[str, Any]:
    data = [
        {"id": i, "object": "file", "bytes": 1, "created_at": 1, "filename": i, "purpose": "batch"}
        for i in ids
    ]
    out: dict[str, Any] = {"object": "list", "data": data}
    if has_more is not None:
        out["has_more"] = has_more
    return out


def lister(pages: dict[str | None, Any], seen: list[dict[str, str]]) -> FilesClient:
    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        seen.append(params)
        body = pages[params.get("after")]
        return body if isinstance(body, httpx.Response) else httpx.Response(200, json=body)

    cfg = ClientConfig(base_url="http://fake.test/v1", api_key=KEY, list_page_size=3)
    return FilesClient(cfg, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


async def test_listing_follows_after_until_has_more_false() -> None:
    seen: list[dict[str, str]] = []
    client = lister({None: page(["a", "b"], True), "b": page(["c"], True), "c": page(["d"], False)}, seen)
    assert [r.id for r in await client.list_all("batch")] == ["a", "b", "c", "d"]
    assert seen == [
        {"limit": "3", "purpose": "batch"},
        {"limit": "3", "purpose": "batch", "after": "b"},
        {"limit": "3", "purpose": "batch", "after": "c"},
    ]


async def test_listing_without_has_more_stops_on_empty_page() -> None:
    seen: list[dict[str, str]] = []
    client = lister({None: page(["a"]), "a": page(["b"]), "b": page([])}, seen)
    assert [r.id for r in await client.list_all()] == ["a", "b"]
    assert len(seen) == 3


async def test_listing_with_has_more_but_empty_page_stops() -> None:
    client = lister({None: page([], True)}, [])
    assert await client.list_all() == []


async def test_listing_a_repeating_server_is_an_error_not_a_loop() -> None:
    client = lister({None: page(["a"], True), "a": page(["a"], True)}, [])
    with pytest.raises(TransportError, match="repeated the page"):
        await client.list_all()


async def test_listing_malformed_page_and_typed_errors() -> None:
    client = lister({None: page(["a"], True), "a": {"data": "nope"}}, [])
    with pytest.raises(TransportError, match="malformed file list"):
        await client.list_all()
    client = lister({None: httpx.Response(200, text="<html>")}, [])
    with pytest.raises(TransportError, match="not JSON"):
        await client.list_all()
    client = lister({None: httpx.Response(404, json={"error": {"message": "gone"}})}, [])
    with pytest.raises(NotFoundError, match="list request failed with HTTP 404: gone"):
        await client.list_all()
