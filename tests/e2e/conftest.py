"""Module-scoped accounts for the read-side e2e tests: one server + one mount per module and mode."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.mount import Mount
from tests.support.server import LocalServer

pytestmark = pytest.mark.e2e


def blob(size: int, seed: int) -> bytes:
    """Deterministic incompressible-looking bytes of any size, fast."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(block[:64] + i.to_bytes(8, "little")).digest() + block[32:]
        i += 1
    return bytes(out[:size])


@dataclass
class Account:
    server: LocalServer
    mount: Mount
    files: dict[str, bytes] = field(default_factory=dict)  # path relative to the mount -> bytes

    @property
    def root(self) -> Path:
        return self.mount.path


# Recent enough that batch files (30-day default expiry on the server) have not expired.
T0 = int(time.time()) - 86400


def seed(server: LocalServer) -> dict[str, bytes]:
    files: dict[str, bytes] = {}

    def add(purpose: str, name: str, data: bytes, created_at: int | None = None, path: str | None = None) -> None:
        fid = server.add_file(purpose, name, data, created_at=created_at)["id"]
        files[(path or f"{purpose}/{name}").replace("ID", fid)] = data

    add("batch", "requests.jsonl", b'{"custom_id": "1"}\n' * 100, created_at=T0)
    add("batch", "requests.jsonl", b'{"custom_id": "2"}\n' * 50, created_at=T0 + 100,
        path="batch/requests (ID).jsonl")
    add("batch", "empty.jsonl", b"", created_at=T0 + 200)
    add("batch_output", "out.jsonl", b'{"id": "batch_req_1", "response": {}}\n' * 10)
    add("fine-tune-results", "step_metrics.csv", b"step,loss\n1,0.5\n2,0.25\n")
    add("vision", "cat.png", blob(300_000, 1))
    add("vision", "odd/name\n.png", blob(10, 2), path="vision/odd\uff0fname\u240a.png")
    add("user_data", "notes.txt", b"private notes\n")
    add("assistants", "manual.pdf", blob(5000, 3))
    add("fine-tune", "train.jsonl", b'{"messages": []}\n' * 1000)
    add("evals", "big.bin", blob(20 * 1024 * 1024 + 12345, 4))
    return files


def make_account(tmp: Path, server_args: list[str], mount_args: list[str]) -> Iterator[Account]:
    server = LocalServer(tmp / "data", server_args).start()
    mount = None
    try:
        files = seed(server)
        mount = Mount(server, tmp / "mnt", tmp / "cache", mount_args).start()
        yield Account(server, mount, files)
    finally:
        if mount is not None:
            mount.stop()
        server.stop()


@pytest.fixture(scope="module", params=["range", "no-range"])
def account(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Account]:
    if not (os.path.exists("/dev/fuse")):
        pytest.fail("no /dev/fuse") if os.environ.get("CI") == "true" else pytest.skip("no /dev/fuse")
    args = ["--no-range"] if request.param == "no-range" else []
    yield from make_account(tmp_path_factory.mktemp(request.param), args, [])
