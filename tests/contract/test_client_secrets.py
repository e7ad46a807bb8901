"""The API key never shows: not in any log line (ours, httpx's, httpcore's, at DEBUG), not in any
error's str/repr/traceback, not in any repr of the client's objects, for right and wrong keys alike.
The server checks keys (OPENAIFS_SERVER_API_KEY), so a wrong key really gets 401s."""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from openaifs.client import FilesClient
from openaifs.config import ClientConfig
from openaifs.errors import AuthenticationError, OpenAIFSError
from tests.conftest import TEST_KEY
from tests.contract.test_client_api import MiB, fetch, jsonl, open_client, write_file
from tests.support.server import LocalServer

WRONG_KEY = "sk-wrong-9876543210fedcbaWRONGSECRET"


def needles(key: str) -> list[str]:
    # the whole key, and long pieces of it (a partial echo is a leak too); the hosted API's own
    # "sk-…last4" mask is the one shape allowed, so the last four characters alone are not searched
    return [key, key[:12], key[3:15], key[-12:]]


async def no_sleep(seconds: float) -> None:
    await trio.lowlevel.checkpoint()


def texts_of(exc: BaseException) -> str:
    return "\n".join([str(exc), repr(exc), "".join(traceback.format_exception(exc))])


@pytest.fixture
def keyed_server(server_factory: Callable[..., LocalServer]) -> LocalServer:
    return server_factory(env={**os.environ, "OPENAIFS_SERVER_API_KEY": TEST_KEY})


async def test_key_never_in_logs_or_errors(
    keyed_server: LocalServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # root: our loggers, httpx and httpcore all at DEBUG
    server = keyed_server
    small, big = tmp_path / "small.jsonl", tmp_path / "big.bin"
    small.write_bytes(jsonl(10))
    write_file(big, 3 * MiB)
    fid = server.add_file("vision", "v.bin", os.urandom(100_000))["id"]
    errors: list[BaseException] = []

    async def expect_failure(call) -> None:  # type: ignore[no-untyped-def]
        try:
            await call()
        except OpenAIFSError as exc:
            errors.append(exc)
        else:
            raise AssertionError("expected a failure")

    # 1. wrong key: 401 on every kind of call
    async with open_client(server, key=WRONG_KEY, single_upload_limit=MiB, part_size=MiB) as client:
        for call in (
            client.list_all,
            lambda: client.retrieve(fid),
            lambda: client.delete(fid),
            lambda: fetch(client, fid, 0, 10),
            lambda: client.upload(small, "s.jsonl", "batch"),
            lambda: client.upload(big, "b.bin", "vision"),
        ):
            await expect_failure(call)
        assert all(isinstance(e, AuthenticationError) for e in errors)
        reprs = [repr(client), repr(client._config), repr(client.stats), repr(client._http)]

    # 2. right key, server failing: retries exhausted, 5xx, dropped answers, cut bodies
    server.set_faults(
        error_rate={"files.list": 1.0, "files.retrieve": 1.0},
        error_status=503,
        retry_after=0.01,
        drop_rate={"files.content": 1.0},
        drop_after_request_rate={"files.create": 1.0},
    )
    async with open_client(server, max_attempts=2) as client:
        await expect_failure(client.list_all)
        await expect_failure(lambda: client.retrieve(fid))
        await expect_failure(lambda: fetch(client, fid, 0, 100_000))
        # the answer is lost, and the listing that would find the file fails too
        await expect_failure(lambda: client.upload(small, "lost.jsonl", "batch"))
    server.set_faults(drop_after_request_rate={"files.create": 1.0})
    async with open_client(server, max_attempts=2) as client:
        await client.upload(small, "adopted.jsonl", "batch")  # answer lost, file found and adopted
        assert client.stats.adopted_uploads == 1
    server.set_faults()

    # 3. right key, nobody listening
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ClientConfig(base_url=f"http://127.0.0.1:{port}/v1", api_key=TEST_KEY, max_attempts=2)
    async with FilesClient.make_http(cfg) as http:
        await expect_failure(FilesClient(cfg, http, sleep=no_sleep).list_all)

    assert len(errors) >= 10
    assert any(r.name.startswith("httpcore") for r in caplog.records), "httpcore DEBUG logs were not captured"
    assert any(r.name == "openaifs.client" and r.levelno >= logging.INFO for r in caplog.records)
    haystack = "\n".join(
        [caplog.text, *reprs, *(texts_of(e) for e in errors)]
        + [f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records]
    )
    for key in (TEST_KEY, WRONG_KEY):
        for needle in needles(key):
            assert needle not in haystack, f"a piece of an API key ({needle[:5]}…) leaked"


async def test_echoed_key_is_scrubbed_from_messages(keyed_server: LocalServer) -> None:
    """The server quotes only sk-…last4 of a wrong key; our error keeps that shape, no more."""
    async with open_client(keyed_server, key=WRONG_KEY) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.list_all()
    assert info.value.code == "invalid_api_key"
    assert "Incorrect API key provided" in str(info.value)
    assert WRONG_KEY not in texts_of(info.value)
