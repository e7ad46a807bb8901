"""A fault storm: 10% 5xx, 5% 429 with retry-after, 5% connections dropped mid-body, 5% of uploads
answered by a dropped connection after the server stored them, and latency spikes, on every route.
Reads give byte-identical content, every upload lands exactly once, and ``ls`` never fails.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.reliability.tools import log_problems, payload, run, sha256
from tests.support.mount import Mount
from tests.support.server import LocalServer

KiB = 1024
STORM = {
    "error_rate": {"*": 0.10},
    "error_status": 503,
    "rate_limit_rate": {"*": 0.05},
    "retry_after": 0.05,
    "drop_rate": {"*": 0.05},
    "drop_after_request_rate": {"files.create": 0.05},
    "latency_jitter_ms": 150,
    "seed": 8,
}
# ~20% of attempts fail. With the default 6 attempts a call fails for good with probability
# 0.2^6 = 6e-5, i.e. a few percent per run of a few hundred calls: a flaky test. 10 attempts make it
# 1e-7, so any failure here is a bug, not bad luck. (The deadline stays the default 120 s.)
STORM_ENV = {"OPENAIFS_MAX_ATTEMPTS": "10"}
WORKERS = 8


def _sizes(n: int) -> list[int]:
    """Mostly small files, every tenth one of a few MiB (several chunks, read-ahead, resumes)."""
    return [(1 + i % 7) * 3 * KiB * (1 + i % 5) if i % 10 else (1 + i % 3) * 1024 * KiB + i for i in range(n)]


def test_storm(server: LocalServer, mount_factory: Callable[..., Mount], tmp_path: Path, scale: float) -> None:
    n_read, n_write = int(100 * scale), int(50 * scale)
    files = {}
    for i, size in enumerate(_sizes(n_read)):
        purpose = ("vision", "evals")[i % 2]
        files[f"{purpose}/r{i:04d}.bin"] = payload(size, i)
        server.add_file(purpose, f"r{i:04d}.bin", files[f"{purpose}/r{i:04d}.bin"])
    m = mount_factory(server, "--metadata-ttl", "0.5", env=STORM_ENV)
    server.set_faults(**STORM)
    server.reset_stats()

    stop = threading.Event()
    listings: list[tuple[int, float, str]] = []

    def keep_listing() -> None:  # ls -l of both directories, over and over, during the whole storm
        while not stop.is_set():
            for d in ("vision", "evals"):
                done = run(["ls", "-l", str(m.path / d)], timeout=180, mountpoint=m.path)
                listings.append((done.code, done.seconds, done.error))
                names = {line.split()[-1] for line in done.text.splitlines()[1:]}
                missing = {p.split("/")[1] for p in files if p.startswith(d + "/")} - names
                assert not missing, f"ls -l {d} lost {sorted(missing)[:5]}"
            time.sleep(0.2)

    def read(rel: str) -> None:
        done = run(["sha256sum", str(m.path / rel)], timeout=180, mountpoint=m.path)
        assert done.code == 0, f"{rel}: {done.error}"
        assert done.text.split()[0] == sha256(files[rel]), f"{rel}: wrong content"

    sources = []
    for i in range(n_write):
        src = tmp_path / f"up{i:04d}.bin"
        src.write_bytes(payload(2 * KiB + 97 * i, 10_000 + i))
        sources.append(src)

    def upload(src: Path) -> None:
        done = run(["cp", str(src), str(m.path / "vision" / src.name)], timeout=180, mountpoint=m.path)
        assert done.code == 0, f"{src.name}: {done.error}"

    lister = threading.Thread(target=_guard(keep_listing, stop), daemon=True)
    lister.start()
    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(read, sorted(files)))
            list(pool.map(upload, sources))
    finally:
        stop.set()
        lister.join(timeout=200)
    assert not lister.is_alive()
    stats = server.stats()["requests"]
    server.set_faults()

    assert listings and all(code == 0 for code, _, _ in listings), [e for c, _, e in listings if c]
    assert not getattr(lister, "failure", None), lister.failure  # type: ignore[attr-defined]
    # Every upload is on the server exactly once, with its bytes.
    listed = httpx.get(f"{server.base_url}/files", params={"purpose": "vision", "limit": 10000}, timeout=60).json()
    uploaded = [f for f in listed["data"] if f["filename"].startswith("up")]
    assert sorted(f["filename"] for f in uploaded) == sorted(s.name for s in sources), "lost or duplicated uploads"
    for f in uploaded:
        body = httpx.get(f"{server.base_url}/files/{f['id']}/content", timeout=60).content
        assert body == (tmp_path / f["filename"]).read_bytes(), f["filename"]
    # And the mount shows them, readable, byte for byte.
    for src in sources:
        assert (m.path / "vision" / src.name).read_bytes() == src.read_bytes()
    assert m.proc is not None and m.proc.poll() is None
    assert log_problems(m.log()) == []
    slowest = max(s for _, s, _ in listings)
    print(f"storm: {sum(stats.values())} requests {stats}; {len(listings)} listings, slowest {slowest:.2f} s")


def _guard(fn: Callable[[], None], stop: threading.Event) -> Callable[[], None]:
    """Run ``fn`` in a thread, keeping its failure on the thread object for the test to raise."""

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            threading.current_thread().failure = exc  # type: ignore[attr-defined]
            stop.set()

    return target


def test_a_listing_request_storm_never_fails_ls(server: LocalServer, mount_factory: Callable[..., Mount],
                                                scale: float) -> None:
    """Only listings fail, half of the time: every ls answers, stale at worst, and new files show up."""
    m = mount_factory(server, "--metadata-ttl", "0.2", env=STORM_ENV)
    server.set_faults(error_rate={"files.list": 0.5}, drop_rate={"files.list": 0.2}, seed=3)
    deadline = time.monotonic() + 6 * scale
    i = 0
    while time.monotonic() < deadline:
        server.add_file("batch", f"n{i}.jsonl", b"{}\n")
        done = run(["ls", str(m.path / "batch")], timeout=180, mountpoint=m.path)
        assert done.code == 0, done.error
        i += 1
    server.set_faults()
    time.sleep(0.3)
    assert sorted(os.listdir(m.path / "batch")) == sorted(f"n{j}.jsonl" for j in range(i))
    assert log_problems(m.log()) == []
