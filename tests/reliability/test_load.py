"""Load: 16 workers at once (ls, stat, reads, writes, rm) with no error, no deadlock, and the mount's
memory and file descriptors back where they were; and 100,000 files in one directory.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.reliability.tools import (
    fd_count,
    fd_kinds,
    finish,
    log_problems,
    payload,
    rss_kib,
    run,
    sha256,
    start,
    wait_until,
)
from tests.support.mount import Mount
from tests.support.server import LocalServer

WORKERS = 16
SECONDS = 20
MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


def test_sixteen_workers(server: LocalServer, mount_factory: Callable[..., Mount], tmp_path: Path,
                         scale: float) -> None:
    spec = {}
    for i in range(40):
        purpose = ("vision", "evals")[i % 2]
        data = payload(int(3 * MiB * (i % 4 == 0)) + 1000 * i, i)
        server.add_file(purpose, f"f{i}.bin", data)
        spec[f"{purpose}/f{i}.bin"] = sha256(data)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    m = mount_factory(server, "--metadata-ttl", "1")
    assert m.proc is not None
    pid = m.proc.pid
    os.listdir(m.path / "vision")
    (sockets_before, files_before), rss_before = fd_kinds(pid), rss_kib(pid)

    seconds = SECONDS * scale
    workers = [start([sys.executable, "-m", "tests.reliability.load_worker", str(m.path), str(tmp_path / "spec.json"),
                      str(seconds), str(n)], cwd=ROOT) for n in range(WORKERS)]
    t0 = time.monotonic()
    peak_rss = peak_fds = 0
    while any(w.poll() is None for w in workers) and time.monotonic() - t0 < seconds + 120:
        peak_rss, peak_fds = max(peak_rss, rss_kib(pid)), max(peak_fds, fd_count(pid))
        time.sleep(0.5)
    results = [finish(w, timeout=seconds + 180, mountpoint=m.path, started=t0) for w in workers]
    for r in results:
        assert r.code == 0, r.error
    reports = [json.loads(r.text) for r in results]
    errors = [e for rep in reports for e in rep["errors"]]
    counts: dict[str, int] = {}
    for rep in reports:
        for op, n in rep["counts"].items():
            counts[op] = counts.get(op, 0) + n
    assert errors == [], errors[:20]
    assert all(counts.get(op, 0) > 0 for op in ("ls", "stat", "read", "write", "rm")), counts

    # Quiet again: file descriptors back to where they were (the cache files of idle files and the
    # spools of uploaded files are closed); sockets at most the client's pool (16 kept-alive
    # connections); memory bounded (files are streamed to disk, never held).
    wait_until(lambda: fd_kinds(pid)[1] <= files_before, 30, f"the mount's file descriptors to drop to {files_before}")
    sockets_after = fd_kinds(pid)[0]
    assert sockets_after <= sockets_before + 16, f"{sockets_after} sockets open (pool of 16)"
    rss_after = rss_kib(pid)
    print(f"load: {counts}; mount fds: files {files_before} -> {fd_kinds(pid)[1]}, sockets {sockets_before} -> "
          f"{sockets_after}, peak of all {peak_fds}; RSS {rss_before // 1024} -> peak {peak_rss // 1024} -> "
          f"{rss_after // 1024} MiB")
    assert peak_rss < rss_before + 200 * 1024, "the mount's memory grew by more than 200 MiB"
    assert rss_after < rss_before + 100 * 1024
    leftovers = [n for n in os.listdir(m.path / "vision") if n.startswith("w")]
    assert leftovers == [], leftovers[:10]
    assert m.proc.poll() is None
    assert log_problems(m.log()) == []


def test_a_hundred_thousand_files(server: LocalServer, mount_factory: Callable[..., Mount]) -> None:
    n = 100_000
    t0 = time.monotonic()
    for chunk in range(0, n, 10_000):
        server.add_files_bulk([{"purpose": "batch", "filename": f"req-{i:06d}.jsonl", "size": i % 100}
                               for i in range(chunk, chunk + 10_000)])
    seeded = time.monotonic() - t0
    t0 = time.monotonic()
    m = mount_factory(server)
    mounted = time.monotonic() - t0
    done = run(["ls", "-l", str(m.path / "batch")], timeout=300, mountpoint=m.path)
    assert done.code == 0, done.error
    lines = done.text.splitlines()[1:]
    assert len(lines) == n
    assert {line.split()[-1] for line in lines} == {f"req-{i:06d}.jsonl" for i in range(n)}
    for i in (0, 1, 4242, 99_999):
        assert os.stat(m.path / "batch" / f"req-{i:06d}.jsonl").st_size == i % 100
    assert len(os.listdir(m.path / ".by-id")) == n
    again = run(["ls", "-l", str(m.path / "batch")], timeout=300, mountpoint=m.path)
    assert m.proc is not None
    rss = rss_kib(m.proc.pid) // 1024
    print(f"100k files: seeded in {seeded:.1f} s, mounted in {mounted:.1f} s, ls -l {done.seconds:.1f} s "
          f"(again {again.seconds:.1f} s), mount RSS {rss} MiB")
    assert log_problems(m.log()) == []


RM_MV_WHILE_LISTING = r"""
import os, sys
root = sys.argv[1]
bad = []
for i in range(int(sys.argv[2])):
    p = os.path.join(root, "vision", f"x{i}.bin")
    with open(p, "wb") as f:
        f.write(b"abc" * i)
    if i % 2:
        os.unlink(p)
    else:
        os.rename(p, os.path.join(root, "evals", f"x{i}.bin"))
    if os.path.exists(p):
        bad.append(i)
print(bad)
"""


def test_rm_and_mv_while_others_list(server: LocalServer, mount_factory: Callable[..., Mount], scale: float) -> None:
    """A name removed by rm or mv stays gone even while other processes list the directory: an ls that
    began before must not put it back into the kernel's cache (found by the 16 workers: 143 of 200
    `rm f; stat f` pairs saw the file still there while two `ls` loops ran)."""
    m = mount_factory(server, "--metadata-ttl", "1")
    listers = [start(["sh", "-c", f"while :; do ls -l {m.path / 'vision'} >/dev/null; done"]) for _ in range(2)]
    try:
        done = run([sys.executable, "-c", RM_MV_WHILE_LISTING, str(m.path), str(int(100 * scale))], timeout=300,
                   mountpoint=m.path)
    finally:
        for lister in listers:
            lister.kill()
            finish(lister, timeout=30, mountpoint=m.path)
    assert done.code == 0, done.error
    assert done.text.strip() == "[]", f"names still there after rm/mv: {done.text.strip()}"
