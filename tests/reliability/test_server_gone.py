"""The server goes away and comes back: cached bytes still read, stale listings still list, everything
else fails with EIO within the configured deadline (no process stuck), and it all works again when
the server returns on the same port, without remounting.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.reliability.conftest import FAST_FAIL_BOUND, FAST_FAIL_ENV
from tests.reliability.tools import finish, log_problems, payload, proc_state, run, sha256_of, start, wait_until
from tests.reliability.tools import sha256 as sha256_of_bytes
from tests.support.mount import Mount
from tests.support.server import LocalServer

TTL = 2.0
MiB = 1024 * 1024


def _eio(done_err: str) -> bool:
    return os.strerror(errno.EIO) in done_err


def test_server_stopped_then_back(server: LocalServer, mount_factory: Callable[..., Mount], tmp_path: Path) -> None:
    files = {name: payload(size, i) for i, (name, size) in enumerate(
        [("cached.bin", 3 * MiB + 7), ("uncached.bin", 2 * MiB), ("later.bin", 100_000)])}
    for name, data in files.items():
        server.add_file("vision", name, data)
    m = mount_factory(server, "--metadata-ttl", str(TTL), env=FAST_FAIL_ENV)
    d = m.path / "vision"
    assert sha256_of(d / "cached.bin") == sha256_of_bytes(files["cached.bin"])
    assert sorted(os.listdir(d)) == sorted(files)

    server.stop()
    time.sleep(TTL * 1.5)  # the listing is stale now: ls has to try the server

    # Cached content reads as before, without the server.
    done = run(["sha256sum", str(d / "cached.bin")], timeout=30, mountpoint=m.path)
    assert done.code == 0 and done.text.split()[0] == sha256_of_bytes(files["cached.bin"])

    # The directory still lists (stale, and the log says so), bounded by the retry deadline.
    done = run(["ls", "-l", str(d)], timeout=FAST_FAIL_BOUND + 20, mountpoint=m.path)
    assert done.code == 0, done.error
    assert sorted(line.split()[-1] for line in done.text.splitlines()[1:]) == sorted(files)
    assert done.seconds < FAST_FAIL_BOUND + 2, f"ls took {done.seconds:.1f} s"
    print(f"first ls with the server gone: {done.seconds:.2f} s")
    assert "serving the cached listing" in m.log()
    again = run(["ls", str(d)], timeout=FAST_FAIL_BOUND + 20, mountpoint=m.path)
    assert again.code == 0 and again.seconds < 1.0, f"a second ls right after took {again.seconds:.1f} s"

    # Uncached content: EIO within the deadline, and the reader is never stuck.
    readers = [start(["cat", str(d / "uncached.bin")]) for _ in range(3)]
    t0 = time.monotonic()
    states = []
    while any(p.poll() is None for p in readers) and time.monotonic() - t0 < FAST_FAIL_BOUND + 5:
        states.append({proc_state(p.pid) for p in readers if p.poll() is None})
        time.sleep(0.2)
    for p in readers:
        done = finish(p, timeout=FAST_FAIL_BOUND + 20, mountpoint=m.path, started=t0)
        assert done.code != 0 and _eio(done.error), done.error
        assert done.seconds < FAST_FAIL_BOUND + 2, f"cat failed only after {done.seconds:.1f} s"

    # An upload: close() fails with EIO within the deadline; the bytes wait in failed-uploads/.
    src = tmp_path / "new.bin"
    src.write_bytes(payload(50_000, 99))
    done = run(["cp", str(src), str(d / "new.bin")], timeout=FAST_FAIL_BOUND + 20, mountpoint=m.path)
    assert done.code != 0 and _eio(done.error), done.error
    assert done.seconds < FAST_FAIL_BOUND + 2, f"cp failed only after {done.seconds:.1f} s"
    kept = [p for p in (m.cache_dir / "failed-uploads").iterdir() if not p.name.endswith(".json")]
    assert [p.read_bytes() for p in kept] == [src.read_bytes()]
    assert not (d / "new.bin").exists()

    # The server comes back on the same port with the same data: all works, without a remount.
    server.restart()
    server.add_file("vision", "arrived-meanwhile.bin", b"hello")
    time.sleep(TTL * 1.5)
    wait_until(lambda: "arrived-meanwhile.bin" in os.listdir(d), 3 * TTL + FAST_FAIL_BOUND, "a fresh listing")
    assert sha256_of(d / "uncached.bin") == sha256_of_bytes(files["uncached.bin"])
    done = run(["cp", str(src), str(d / "new.bin")], timeout=60, mountpoint=m.path)
    assert done.code == 0, done.error
    assert (d / "new.bin").read_bytes() == src.read_bytes()
    assert m.proc is not None and m.proc.poll() is None
    assert log_problems(m.log()) == []
    print(f"reader states while failing: {states}")


def test_ctrl_c_on_a_blocked_cat(server: LocalServer, mount_factory: Callable[..., Mount]) -> None:
    """A cat waiting on a download that cannot finish (a server that never answers) dies at SIGINT."""
    data = payload(4 * MiB, 7)
    server.add_file("vision", "slow.bin", data)
    # A read timeout longer than the wait before SIGINT, short enough for the rest of the test.
    m = mount_factory(server, env=FAST_FAIL_ENV | {"OPENAIFS_READ_TIMEOUT": "5", "OPENAIFS_TOTAL_DEADLINE": "10"})
    server.set_faults(latency_ms=60_000)  # every request now hangs for a minute
    cat = start(["cat", str(m.path / "vision" / "slow.bin")])
    time.sleep(1.0)
    assert cat.poll() is None
    state = proc_state(cat.pid)
    t0 = time.monotonic()
    cat.send_signal(signal.SIGINT)
    done = finish(cat, timeout=60, mountpoint=m.path, started=t0)
    print(f"cat was {state!r}; it exited {done.code} {done.seconds:.2f} s after SIGINT")
    assert done.code != 0
    assert done.seconds < 2.0, f"cat needed {done.seconds:.1f} s to die after SIGINT (state was {state})"
    # The mount cannot know the cat is gone (pyfuse3 ignores FUSE interrupts): its read handler runs
    # on until the client gives up on the silent request, and holds the kernel's page locks until
    # then, so the next reader of those pages waits for it (bounded by the read timeout).
    server.set_faults()
    t0 = time.monotonic()
    assert sha256_of(m.path / "vision" / "slow.bin") == sha256_of_bytes(data)
    print(f"the next read of the file took {time.monotonic() - t0:.1f} s")
    assert m.proc is not None and m.proc.poll() is None


def test_silent_server(server: LocalServer, mount_factory: Callable[..., Mount], tmp_path: Path) -> None:
    """A server that accepts connections and never answers (stopped with SIGSTOP): each request waits
    out the read timeout, and every logical call still ends within deadline + one read timeout.

    A ``cat`` costs one such call: the kernel retries a failed read at once, and that retry fails at
    once (content.facade.FAILURE_MEMORY). A ``cp`` of a new name costs two (the lookup of the name
    refreshes the stale listing first, then the upload), so it is bounded by twice that.
    """
    data = payload(MiB, 3)
    server.add_file("vision", "a.bin", data)
    env = FAST_FAIL_ENV | {"OPENAIFS_TOTAL_DEADLINE": "2", "OPENAIFS_READ_TIMEOUT": "1.5"}
    bound = 2 + 1.5 + 2  # deadline + read timeout + connect timeout
    m = mount_factory(server, "--metadata-ttl", str(TTL), env=env)
    d = m.path / "vision"
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(TTL * 1.5)
        done = run(["ls", str(d)], timeout=60, mountpoint=m.path)
        assert done.code == 0 and done.text.split() == ["a.bin"]
        assert done.seconds < bound + 1, f"ls took {done.seconds:.1f} s"
        took = {"ls": done.seconds}
        done = run(["cat", str(d / "a.bin")], timeout=60, mountpoint=m.path)
        assert done.code != 0 and _eio(done.error), done.error
        took["cat"] = done.seconds
        assert done.seconds < bound + 1, f"cat took {done.seconds:.1f} s"
        src = tmp_path / "n.bin"
        src.write_bytes(b"n" * 1000)
        done = run(["cp", str(src), str(d / "n.bin")], timeout=60, mountpoint=m.path)
        assert done.code != 0 and _eio(done.error), done.error
        took["cp"] = done.seconds
        assert max(took.values()) < 2 * bound + 1, took
        print(f"with a silent server: {took}")
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    assert sha256_of(d / "a.bin") == sha256_of_bytes(data)
    assert log_problems(m.log()) == []
