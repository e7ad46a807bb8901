"""``kill -9`` of the mount: the next mount clears the dead mount, unacknowledged uploads are kept in
``failed-uploads/`` (and the log says so), and a half-downloaded file is never served as whole.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.tools import finish, log_problems, payload, proc_state, sha256, sha256_of, start, wait_until
from tests.support.mount import Mount, in_proc_mounts
from tests.support.server import LocalServer

MiB = 1024 * 1024


def _failed_uploads(cache_dir: Path) -> dict[str, tuple[bytes, dict]]:
    """failed-uploads/ as {data file name: (bytes, sidecar)}."""
    d = cache_dir / "failed-uploads"
    out = {}
    for p in sorted(d.iterdir()) if d.exists() else []:
        if not p.name.endswith(".json"):
            out[p.name] = (p.read_bytes(), json.loads(p.with_name(p.name + ".json").read_text()))
    return out


def _auto_unmount_helpers(mountpoint: Path) -> list[int]:
    """Pids of the fusermount3 processes that watch ``mountpoint`` for auto_unmount."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"fusermount3") and os.fsencode(mountpoint) in argv:
                pids.append(int(entry))
    return pids


# One request (POST /files), or the Uploads API in 64 KiB parts (files above 100 kB here).
UPLOAD_WAYS = {
    "files.create": {},
    "uploads.parts": {"OPENAIFS_SINGLE_UPLOAD_LIMIT": "100000", "OPENAIFS_PART_SIZE": "65536"},
}


@pytest.mark.parametrize("route", list(UPLOAD_WAYS))
def test_kill_during_upload_keeps_the_bytes(server: LocalServer, mount_factory: Callable[..., Mount],
                                            tmp_path: Path, route: str) -> None:
    m = mount_factory(server, env=UPLOAD_WAYS[route])
    data = payload(300_000, 1)
    src = tmp_path / "precious.bin"
    src.write_bytes(data)
    # The server sits on every request: the upload hangs in close().
    server.set_faults(route_latency_ms={route: 30_000})
    cp = start(["cp", str(src), str(m.path / "vision" / "precious.bin")])
    wait_until(lambda: server.requests(route) >= 1, 20, "the upload to start")
    time.sleep(0.3)
    assert cp.poll() is None, "cp finished although the server never answered"
    assert m.proc is not None
    m.kill()  # SIGKILL while close() waits for the upload
    done = finish(cp, timeout=30)
    assert done.code != 0, "cp reported success for bytes the server never acknowledged"
    server.set_faults()

    # The same mountpoint and cache dir again: the dead mount is cleared, the bytes are found.
    m2 = Mount(server, m.path, m.cache_dir).start()
    try:
        kept = _failed_uploads(m.cache_dir)
        assert len(kept) == 1, kept
        (name, (raw, info)), = kept.items()
        assert raw == data
        assert info["filename"] == "precious.bin" and info["purpose"] == "vision"
        assert "never confirmed uploaded" in m2.log() and name in m2.log()
        # The spool of the dead mount is gone; nothing else was left behind.
        assert [p.name for p in (m.cache_dir / "spool").iterdir() if not os.listdir(p) == [".lock"]] == []
        assert log_problems(m2.log()) == []
    finally:
        m2.stop()


def test_dead_mount_whose_helper_died_too_is_cleared(server: LocalServer, mount_factory: Callable[..., Mount]) -> None:
    """kill -9 of the mount and of auto_unmount's helper: the mount stays behind, dead (ENOTCONN);
    the next ``openaifs mount`` there clears it by itself and says so."""
    m = mount_factory(server)
    helpers = _auto_unmount_helpers(m.path)
    assert len(helpers) == 1, helpers
    os.kill(helpers[0], signal.SIGKILL)
    wait_until(lambda: proc_state(helpers[0]) in ("gone", "Z"), 10, "the helper to die")
    os.listdir(m.path / "batch")  # cached attributes: stat alone would not notice the death
    m.kill()
    assert in_proc_mounts(m.path), "the dead mount went away although nothing was left to unmount it"
    m2 = Mount(server, m.path, m.cache_dir).start()
    try:
        assert "batch" in os.listdir(m2.path)
        assert m2.proc is not None and m2.proc.stderr is not None
        os.set_blocking(m2.proc.stderr.fileno(), False)
        said = (m2.proc.stderr.read() or b"").decode()  # before logging is set up, warnings go to stderr
        assert "clearing a stale mount" in said
    finally:
        m2.stop()
    assert not in_proc_mounts(m.path)


def test_kill_during_download_never_serves_a_partial_file(server: LocalServer, mount_factory: Callable[..., Mount],
                                                          tmp_path: Path) -> None:
    size = 160 * MiB + 12345
    data = payload(size, 5)
    server.add_file("vision", "big.bin", data)
    cache = tmp_path / "cache-shared"
    m = mount_factory(server, cache_dir=cache)
    server.set_faults(latency_ms=150)  # a few requests per second: the download takes seconds
    server.reset_stats()
    reader = subprocess.Popen(["cat", str(m.path / "vision" / "big.bin")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    # Kill once the cache recorded part of the file (a commit every 64 MiB) and before it has it all.
    sidecars = cache / "content"

    def partly_recorded() -> bool:
        for p in sidecars.glob("*.json"):
            try:
                ranges = json.loads(p.read_text())["ranges"]
            except (OSError, ValueError):
                continue
            return bool(ranges) and ranges != [[0, size]]
        return False

    wait_until(partly_recorded, 60, "a partial download to be recorded", step=0.01)
    m.kill()
    done = finish(reader, timeout=30)
    assert done.code != 0, "cat read the whole file although the mount died under it"
    server.set_faults()
    recorded = [json.loads(p.read_text())["ranges"] for p in (cache / "content").glob("*.json")]
    print(f"the dead mount's cache records {recorded}")

    m2 = mount_factory(server, cache_dir=cache)
    server.reset_stats()
    assert sha256_of(m2.path / "vision" / "big.bin") == sha256(data)
    fetched = server.stats()["bytes_sent"]["files.content"]
    print(f"after the crash, {fetched / MiB:.1f} MiB of {size / MiB:.1f} MiB were fetched again")
    assert fetched < size, "nothing the dead mount recorded was reused"
    assert log_problems(m2.log()) == []
