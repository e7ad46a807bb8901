"""Shared fixtures: a clean environment, and real ``openaifs serve`` processes on 127.0.0.1."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.mount import Mount
from tests.support.server import LocalServer

TEST_KEY = "sk-test-0123456789abcdefSECRET"


@pytest.fixture(autouse=True)
def _clean_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may pick up a developer's real credentials or server."""
    for name in list(os.environ):
        if name.startswith("OPENAI_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _leaks_fail_their_own_test() -> Iterator[None]:
    """Collect garbage after each test, so an unclosed socket or file warns (an error here) in the test
    that leaked it, not in whichever later test the collector happens to run in."""
    yield
    gc.collect()


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


@pytest.fixture
def fuse_available() -> None:
    """Skip e2e tests where FUSE cannot work; under CI=true that is a failure, never a skip."""
    import shutil

    missing = [what for what, ok in (("/dev/fuse", os.path.exists("/dev/fuse")),
                                     ("fusermount3", shutil.which("fusermount3") is not None)) if not ok]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"FUSE is not usable here (missing {', '.join(missing)}); CI must not skip e2e tests")
        pytest.skip(f"FUSE is not usable here (missing {', '.join(missing)})")


@pytest.fixture
def mount_factory(tmp_path: Path, fuse_available: None) -> Iterator[Callable[..., Mount]]:
    """Mount openaifs over a server; every mount is unmounted and its process stopped at teardown."""
    mounts: list[Mount] = []

    def start(server: LocalServer, *args: str, name: str = "mnt", cache_dir: Path | None = None,
              **kwargs: object) -> Mount:
        m = Mount(server, tmp_path / f"{name}{len(mounts)}", cache_dir or tmp_path / f"cache{len(mounts)}",
                  list(args), **kwargs)  # type: ignore[arg-type]
        mounts.append(m)
        return m.start()

    yield start
    for m in mounts:
        m.stop()
