"""Shared fixtures: a clean environment, and real ``openaifs serve`` processes on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.server import LocalServer

TEST_KEY = "sk-test-0123456789abcdefSECRET"


@pytest.fixture(autouse=True)
def _clean_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may pick up a developer's real credentials or server."""
    for name in list(os.environ):
        if name.startswith("OPENAI_"):
            monkeypatch.delenv(name)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., LocalServer]]:
    """Start servers with extra ``openaifs serve`` flags; all are stopped (by pid) at teardown."""
    started: list[LocalServer] = []

    def start(*args: str, data_dir: Path | None = None, env: dict[str, str] | None = None) -> LocalServer:
        d = data_dir or tmp_path / f"server-data-{len(started)}"
        srv = LocalServer(d, list(args), env=env)
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def server(server_factory: Callable[..., LocalServer]) -> LocalServer:
    """A fresh local server with default (hosted-API-like) behaviour."""
    return server_factory()
