"""`openaifs mount` / `umount` as a user runs them: one-line errors, daemon mode, clean signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.mount import Mount, in_proc_mounts, unmount
from tests.support.server import LocalServer

pytestmark = pytest.mark.e2e
KEY = "sk-cli-test-KEY-0123456789"


def openaifs(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "openaifs", *args], capture_output=True, text=True,
                          env=full, timeout=timeout)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def daemon_mounts() -> Iterator[list[Path]]:
    """Mountpoints of daemonized mounts: unmounted (and their processes waited for) at teardown."""
    paths: list[Path] = []
    yield paths
    for p in paths:
        pids = [pid for pid in os.listdir("/proc") if pid.isdigit() and _cmdline_has(pid, str(p))]
        unmount(p)
        for pid in pids:
            _wait_gone(int(pid))


def _cmdline_has(pid: str, text: str) -> bool:
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)


def env_for(server: LocalServer, key: str = KEY) -> dict[str, str]:
    return {"OPENAI_API_KEY": key, "OPENAI_BASE_URL": server.base_url}


def test_missing_and_non_directory_mountpoints(server: LocalServer, tmp_path: Path) -> None:
    r = openaifs("mount", str(tmp_path / "nope"), env=env_for(server))
    assert r.returncode == 2 and "does not exist" in one_line(r)
    f = tmp_path / "file"
    f.write_text("x")
    r = openaifs("mount", str(f), env=env_for(server))
    assert r.returncode == 2 and "not a directory" in one_line(r)


def test_no_key(tmp_path: Path) -> None:
    r = openaifs("mount", str(tmp_path))
    assert r.returncode == 2 and "OPENAI_API_KEY" in one_line(r)


def test_bad_key_is_refused_with_one_line_and_no_secret(server_factory: Callable[..., LocalServer],
                                                        tmp_path: Path, fuse_available: None) -> None:
    server = server_factory(env={**os.environ, "OPENAIFS_SERVER_API_KEY": KEY})
    wrong = "sk-wrong-SECRET-abcdef0123456789"
    r = openaifs("mount", str(tmp_path), "--cache-dir", str(tmp_path / "c"), env=env_for(server, wrong))
    assert r.returncode == 1
    line = one_line(r)
    assert "refused the API key" in line
    assert wrong not in r.stderr + r.stdout
    assert not in_proc_mounts(tmp_path)


def test_unreachable_server(tmp_path: Path, fuse_available: None) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    r = openaifs("mount", str(tmp_path), "--cache-dir", str(tmp_path / "c"),
                 env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}, timeout=120)
    assert r.returncode == 1
    assert "cannot list files" in one_line(r)


def test_daemon_mount_answers_then_umount(server: LocalServer, tmp_path: Path, daemon_mounts: list[Path],
                                          fuse_available: None) -> None:
    server.add_file("batch", "a.jsonl", b"{}\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    daemon_mounts.append(mnt)
    r = openaifs("mount", str(mnt), "--cache-dir", str(tmp_path / "c"), env=env_for(server))
    assert r.returncode == 0, r.stderr
    assert os.listdir(mnt / "batch") == ["a.jsonl"]  # it answers as soon as the command returns
    again = openaifs("mount", str(mnt), "--cache-dir", str(tmp_path / "c2"), env=env_for(server))
    assert again.returncode == 2 and "already mounted" in one_line(again)
    assert KEY not in " ".join(Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
                               for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(p, str(mnt)))
    log_file = tmp_path / "c" / "openaifs.log"  # a daemon's default log: private like the cache
    assert log_file.exists() and oct(log_file.stat().st_mode & 0o777) == "0o600"
    r = openaifs("umount", str(mnt))
    assert r.returncode == 0, r.stderr
    assert not in_proc_mounts(mnt)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly_with_exit_0(server: LocalServer, mount_factory: Callable[..., Mount],
                                             sig: signal.Signals) -> None:
    m = mount_factory(server)
    assert m.proc is not None
    proc = m.proc
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 0
    assert not in_proc_mounts(m.path)


def test_stale_mount_is_cleared(server: LocalServer, mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(server)
    m.kill()
    # auto_unmount normally clears it; either way the next mount must come up
    m2 = Mount(server, m.path, m.cache_dir).start()
    try:
        assert "batch" in os.listdir(m2.path)
    finally:
        m2.stop()
