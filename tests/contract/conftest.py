"""Fixtures for the server contract tests: SDK clients whose every JSON answer is checked.

Each client built here carries a response hook that validates every JSON body of a /v1 route
against the OpenAPI extract and the FILES_API.md §2 tables (``openapi_check``) and checks the
``x-request-id`` header. Violations are collected and fail the test at teardown (raising inside
the hook would only surface as the SDK's APIConnectionError).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import openai
import pytest

from tests.conftest import TEST_KEY
from tests.contract import openapi_check
from tests.support.server import LocalServer


@dataclass
class ContractLog:
    """Every checked response (method, path, status, schema ref) and every violation."""

    checked: list[tuple[str, str, int, str]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def check(self, method: str, url_path: str, status: int, headers: Any, body_text: str | None) -> None:
        where = f"{method} {url_path} -> {status}"
        if not openapi_check.REQUEST_ID.match(headers.get("x-request-id", "")):
            self.violations.append(f"{where}: bad x-request-id {headers.get('x-request-id')!r}")
        if body_text is None or "/_admin/" in url_path:
            return
        try:
            ref = openapi_check.check_response(method, url_path, status, json.loads(body_text))
        except (AssertionError, ValueError) as exc:
            self.violations.append(f"{where}: {exc}")
        else:
            self.checked.append((method, url_path, status, ref))

    def refs(self) -> set[str]:
        return {ref for *_, ref in self.checked}


def _is_json(response: Any) -> bool:
    return response.headers.get("content-type", "").startswith("application/json")


@pytest.fixture
def contract_log() -> Iterator[ContractLog]:
    log = ContractLog()
    yield log
    assert not log.violations, "contract violations:\n" + "\n".join(log.violations)


def sync_hook(log: ContractLog) -> Callable[[Any], None]:
    def hook(response: Any) -> None:
        if "/_admin/" in response.request.url.path:
            return
        text = response.read().decode() if _is_json(response) else None
        log.check(
            response.request.method, response.request.url.path, response.status_code, response.headers, text
        )

    return hook


def async_hook(log: ContractLog) -> Callable[[Any], Any]:
    async def hook(response: Any) -> None:
        if "/_admin/" in response.request.url.path:
            return
        text = (await response.aread()).decode() if _is_json(response) else None
        log.check(
            response.request.method, response.request.url.path, response.status_code, response.headers, text
        )

    return hook


@pytest.fixture
def make_sdk(contract_log: ContractLog) -> Iterator[Callable[..., openai.OpenAI]]:
    """Sync SDK clients for any server: ``make_sdk(server, api_key=..., max_retries=0)``."""
    clients: list[openai.OpenAI] = []

    def make(srv: LocalServer, api_key: str = TEST_KEY, max_retries: int = 0) -> openai.OpenAI:
        http = httpx2.Client(event_hooks={"response": [sync_hook(contract_log)]}, timeout=60)
        client = openai.OpenAI(
            base_url=srv.base_url, api_key=api_key, max_retries=max_retries, http_client=http
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def sdk(server: LocalServer, make_sdk: Callable[..., openai.OpenAI]) -> openai.OpenAI:
    return make_sdk(server)


@pytest.fixture
def make_async_sdk(contract_log: ContractLog) -> Callable[..., openai.AsyncOpenAI]:
    """Async SDK clients (use them in ``async with``; they run under trio)."""

    def make(srv: LocalServer, api_key: str = TEST_KEY, max_retries: int = 0) -> openai.AsyncOpenAI:
        http = httpx2.AsyncClient(event_hooks={"response": [async_hook(contract_log)]}, timeout=60)
        return openai.AsyncOpenAI(
            base_url=srv.base_url, api_key=api_key, max_retries=max_retries, http_client=http
        )

    return make


@pytest.fixture
def raw(server: LocalServer, contract_log: ContractLog) -> Iterator[httpx.Client]:
    """Plain httpx against the server's /v1 (for requests the SDK cannot make), also checked."""
    with httpx.Client(
        base_url=server.base_url, timeout=60, event_hooks={"response": [sync_hook(contract_log)]}
    ) as client:
        yield client


# -- helpers shared by the test modules -----------------------------------------------------------


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    """The inner ``error`` object the SDK parsed from an error answer."""
    body = exc.body
    assert isinstance(body, dict), f"error body is not an object: {body!r}"
    return body


def multipart(
    parts: list[tuple[str, str | None, bytes]], boundary: str = "b0und4ry-openaifs"
) -> tuple[bytes, str]:
    """A multipart/form-data body with fields in exactly this order: (name, filename|None, data)."""
    out = bytearray()
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")
