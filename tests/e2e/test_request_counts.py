"""Cheapness, proven with the server's request counters: listings serve metadata; reads fetch lazily."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import blob
from tests.support.mount import Mount
from tests.support.server import LocalServer

pytestmark = pytest.mark.e2e

CONTENT_ROUTES = ("files.content",)
META_ROUTES = ("files.retrieve",)


def seed_many(server: LocalServer, n: int = 30) -> dict[str, bytes]:
    files = {}
    for i in range(n):
        purpose = ("batch", "vision", "fine-tune-results", "evals")[i % 4]
        data = blob(1000 + i, i)
        server.add_file(purpose, f"f{i:03d}.bin", data)
        files[f"{purpose}/f{i:03d}.bin"] = data
    return files


def test_cold_ls_l_and_stat_of_everything_cost_only_listing_requests(
    server: LocalServer, mount_factory: Callable[..., Mount]
) -> None:
    files = seed_many(server)
    server.reset_stats()
    m = mount_factory(server)
    out = subprocess.run(["ls", "-lR", str(m.path)], capture_output=True, text=True, check=True).stdout
    for rel in files:
        os.stat(m.path / rel)
        assert Path(rel).name in out
    stats = server.stats()["requests"]
    assert stats.get("files.list", 0) == 1  # the listing that validated the key filled every directory
    assert all(stats.get(r, 0) == 0 for r in CONTENT_ROUTES + META_ROUTES), stats


def test_missing_name_lookups_cost_no_request(server: LocalServer, mount_factory: Callable[..., Mount]) -> None:
    seed_many(server, 4)
    m = mount_factory(server)
    server.reset_stats()
    for i in range(20):
        assert not (m.path / "batch" / f".probe-{i}").exists()
    assert server.requests() == 0


def test_reading_one_file_fetches_only_that_file_and_a_remount_reads_from_cache(
    server: LocalServer, mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    files = seed_many(server, 8)
    cache = tmp_path / "shared-cache"
    m = mount_factory(server, cache_dir=cache)
    server.reset_stats()
    rel = "vision/f001.bin"
    assert (m.path / rel).read_bytes() == files[rel]
    stats = server.stats()
    assert stats["requests"].get("files.content", 0) >= 1
    assert stats["bytes_sent"].get("files.content", 0) <= len(files[rel]) + 0  # nothing else downloaded
    m.stop()
    m2 = mount_factory(server, cache_dir=cache)
    server.reset_stats()
    assert (m2.path / rel).read_bytes() == files[rel]
    assert server.requests("files.content") == 0


@pytest.mark.parametrize("mode", ["range", "no-range"])
def test_concurrent_readers_of_one_file_share_one_download(
    server_factory: Callable[..., LocalServer], mount_factory: Callable[..., Mount], mode: str
) -> None:
    server = server_factory(*(["--no-range"] if mode == "no-range" else []))
    size = 256 * 1024 * 1024
    data = blob(size, 99)
    server.add_file("batch_output", "big.bin", data)
    want = hashlib.sha256(data).hexdigest()
    m = mount_factory(server)
    server.reset_stats()
    results: list[str] = []

    def reader() -> None:
        results.append(subprocess.run(["sha256sum", str(m.path / "batch_output" / "big.bin")],
                                      capture_output=True, text=True).stdout.split()[0])

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert results == [want] * 8
    sent = server.stats()["bytes_sent"].get("files.content", 0)
    assert sent <= size * 1.1, f"{sent} bytes sent for a {size}-byte file read by 8 readers"


def test_xattrs_when_enabled(server: LocalServer, mount_factory: Callable[..., Mount]) -> None:
    rec = server.add_file("batch", "x.jsonl", b"{}\n")
    m = mount_factory(server, "--xattrs")
    out = subprocess.run(["getfattr", "-d", str(m.path / "batch" / "x.jsonl")], capture_output=True, text=True)
    assert f'user.openai.id="{rec["id"]}"' in out.stdout
    assert 'user.openai.purpose="batch"' in out.stdout
    assert f'user.openai.created_at="{rec["created_at"]}"' in out.stdout
    with pytest.raises(OSError):
        os.getxattr(m.path / "batch" / "x.jsonl", "user.other")
