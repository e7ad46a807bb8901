"""Security: the API key in no log (at any level), argv, environment (with --api-key-file), error or
cache file; a private cache dir; other users kept out unless --allow-other (and then mode bits rule);
a server on loopback that checks its key; and names that try to leave the cache directory.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import FAST_FAIL_ENV
from tests.reliability.test_hostile_server import CACHE_NAME
from tests.reliability.tools import log_problems, payload, run
from tests.support.mount import Mount
from tests.support.server import LocalServer

KEY = "sk-proj-SECRET0123456789abcdefKEYTAIL"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _fragments(key: str) -> list[str]:
    """The key, and long enough pieces of it to count as a leak (the hosted API echoes sk-…last4)."""
    return [key, key[:16], key[-12:], key[8:24]]


def _leaks(text: str | bytes, key: str = KEY) -> list[str]:
    blob = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    return [f for f in _fragments(key) if f.encode() in blob]


def _tree_leaks(root: Path, key: str = KEY) -> list[str]:
    found = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            found += [f"{p}: {f}" for f in _leaks(p.read_bytes(), key)]
        found += [f"name {p}: {f}" for f in _leaks(p.name, key)]
    return found


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp dirs are 0700), removed afterwards."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another user (uid 65534)")
    d = Path(tempfile.mkdtemp(prefix="openaifs-sec-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_key_never_leaks(server_factory: Callable[..., LocalServer], tmp_path: Path) -> None:
    server = server_factory(env={**os.environ, "OPENAIFS_SERVER_API_KEY": KEY})
    server.add_file("vision", "a.bin", payload(300_000, 1))
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    m = Mount(server, tmp_path / "mnt", tmp_path / "cache", ["--debug", "--api-key-file", str(key_file)],
              api_key=None, env=FAST_FAIL_ENV, stderr_path=tmp_path / "stderr").start()
    try:
        assert m.proc is not None
        pid = m.proc.pid
        # With --api-key-file the key is in neither the command line nor the environment.
        for what in ("cmdline", "environ"):
            assert _leaks(Path(f"/proc/{pid}/{what}").read_bytes()) == [], what
        d = m.path / "vision"
        assert len((d / "a.bin").read_bytes()) == 300_000
        src = tmp_path / "up.bin"
        src.write_bytes(b"up" * 1000)
        assert run(["cp", str(src), str(d / "up.bin")], mountpoint=m.path).code == 0
        assert run(["rm", str(d / "up.bin")], mountpoint=m.path).code == 0
        bad = run(["cp", str(src), str(m.path / "batch" / "bad.jsonl")], mountpoint=m.path)  # not JSONL: EINVAL
        assert bad.code != 0
        # The server now wants another key: every request of the mount is refused (401, whose message
        # quotes part of the key it got). Errors, logs and failed uploads must not carry it.
        server.stop()
        server.env = {**os.environ, "OPENAIFS_SERVER_API_KEY": "sk-other-0000000000000000000"}
        server.start()
        time.sleep(1.0)
        refused = run(["cp", str(src), str(d / "refused.bin")], timeout=60, mountpoint=m.path)
        assert refused.code != 0 and "Permission denied" in refused.error, refused.error
        assert _leaks(refused.error) == []
    finally:
        m.stop()
    log = m.log()
    assert "401" in log or "refused" in log.lower()
    assert "DEBUG" in log, "the mount was not logging at debug level"
    assert _leaks(log) == [], "the API key is in the log"
    assert _leaks((tmp_path / "stderr").read_bytes()) == [], "the API key is on stderr (FUSE debug output)"
    assert _tree_leaks(m.cache_dir) == []
    assert log_problems(log) == []


def test_key_in_the_environment_stays_out_of_argv_and_logs(server: LocalServer,
                                                          mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(server, "--debug", api_key=KEY)
    assert m.proc is not None
    assert _leaks(Path(f"/proc/{m.proc.pid}/cmdline").read_bytes()) == []
    assert KEY.encode() in Path(f"/proc/{m.proc.pid}/environ").read_bytes()  # expected: OPENAI_API_KEY
    os.listdir(m.path / "vision")
    m.stop()
    assert _leaks(m.log()) == []


def test_cache_dir_is_private(server: LocalServer, mount_factory: Callable[..., Mount], tmp_path: Path) -> None:
    server.add_file("vision", "a.bin", payload(200_000, 2))
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o777)
    os.chmod(cache, 0o777)  # even a cache dir that was too open is made private
    old = os.umask(0)
    try:
        m = mount_factory(server, cache_dir=cache, env=FAST_FAIL_ENV)
    finally:
        os.umask(old)
    (m.path / "vision" / "a.bin").read_bytes()
    src = tmp_path / "x.jsonl"
    src.write_text("not json\n")
    assert run(["cp", str(src), str(m.path / "batch" / "x.jsonl")], mountpoint=m.path).code != 0
    m.stop()
    wrong = []
    for p in [cache, *cache.rglob("*")]:
        mode = stat.S_IMODE(os.lstat(p).st_mode)
        if p.is_dir() and mode != 0o700 or p.is_file() and mode & 0o077:
            wrong.append(f"{oct(mode)} {p}")
    assert wrong == []
    assert any((cache / "failed-uploads").iterdir()) and any((cache / "content").glob("*.data"))


def test_other_users_are_kept_out_without_allow_other(server: LocalServer, open_dir: Path, tmp_path: Path) -> None:
    server.add_file("vision", "a.txt", b"hello\n")
    m = Mount(server, open_dir / "mnt", tmp_path / "cache").start()
    try:
        done = run([*NOBODY, "ls", str(m.path)], mountpoint=m.path)
        assert done.code != 0 and "Permission denied" in done.error, done.error
        done = run([*NOBODY, "cat", str(m.path / "vision" / "a.txt")], mountpoint=m.path)
        assert done.code != 0 and "Permission denied" in done.error, done.error
    finally:
        m.stop()


def test_allow_other_lets_them_list_and_read_but_mode_bits_rule(server: LocalServer, open_dir: Path,
                                                                 tmp_path: Path) -> None:
    server.add_file("vision", "a.txt", b"hello\n")
    m = Mount(server, open_dir / "mnt", tmp_path / "cache", ["--allow-other"]).start()
    try:
        done = run([*NOBODY, "ls", "-l", str(m.path / "vision")], mountpoint=m.path)
        assert done.code == 0 and "a.txt" in done.text, done.error
        done = run([*NOBODY, "cat", str(m.path / "vision" / "a.txt")], mountpoint=m.path)
        assert done.code == 0 and done.out == b"hello\n", done.error
        for cmd in (["touch", str(m.path / "vision" / "theirs.txt")], ["rm", "-f", str(m.path / "vision" / "a.txt")]):
            done = run([*NOBODY, *cmd], mountpoint=m.path)
            assert done.code != 0 and "Permission denied" in done.error, (cmd, done.error)
        assert os.listdir(m.path / "vision") == ["a.txt"]
    finally:
        m.stop()


def _serve(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "openaifs", "serve", "--port", "0", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_server_binds_loopback_and_checks_its_key(tmp_path: Path) -> None:
    env = {**os.environ, "OPENAIFS_SERVER_API_KEY": KEY}
    proc, line = _serve("--data", str(tmp_path / "data"), env=env)
    try:
        assert "http://127.0.0.1:" in line, line
        url = line[line.index("http://"):].split()[0]
        port = int(url.split(":")[2].split("/")[0])
        assert httpx.get(f"{url}/files").status_code == 401
        wrong = httpx.get(f"{url}/files", headers={"Authorization": "Bearer sk-wrong-000000000000000"})
        assert wrong.status_code == 401 and "sk-wrong-000000000000000" not in wrong.text
        assert httpx.get(f"{url}/files", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        other = _non_loopback_address()
        if other is not None:  # not reachable from another interface at all
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://{other}:{port}/v1/files", timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()


def test_admin_routes_refuse_other_hosts(tmp_path: Path) -> None:
    other = _non_loopback_address()
    if other is None:
        pytest.skip("no non-loopback address on this machine")
    proc, line = _serve("--host", "0.0.0.0", "--data", str(tmp_path / "data"))
    try:
        port = int(line.split("http://")[1].split("/")[0].rsplit(":", 1)[1])
        assert httpx.get(f"http://{other}:{port}/_admin/stats", timeout=5).status_code == 403
        assert httpx.get(f"http://127.0.0.1:{port}/_admin/stats", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()


def test_names_cannot_leave_the_cache_dir(server: LocalServer, mount_factory: Callable[..., Mount],
                                          tmp_path: Path) -> None:
    """A filename, an id and a purpose of ../../…: reading, uploading and failing stay in the cache dir."""
    victim = tmp_path / "victim"
    victim.mkdir()
    m = mount_factory(server, "--metadata-ttl", "0.2", env=FAST_FAIL_ENV)
    rel = os.path.relpath(victim, m.cache_dir / "content")  # what a naive path join would reach
    server.add_file("vision", f"{rel}/x", b"by filename\n")
    server.add_file("vision", "../../etc/passwd", b"not the passwd\n")
    listing = {"object": "list", "has_more": False, "data": [
        # An id with "/" cannot even be routed by the server (404: ENOENT); one with "\\" can.
        {"id": f"{rel}/by-id", "object": "file", "filename": "evil-slash.txt", "purpose": "vision", "bytes": 10,
         "created_at": 1_700_000_000},
        {"id": rel.replace("/", "\\"), "object": "file", "filename": "evil-id.txt", "purpose": "vision",
         "bytes": 10, "created_at": 1_700_000_000},
        {"id": "file-evilpurpose0000000000", "object": "file", "filename": "p.txt", "purpose": f"{rel}/p",
         "bytes": 1, "created_at": 1_700_000_000},
    ]}
    time.sleep(0.4)
    names = os.listdir(m.path / "vision")
    assert len(names) == 2
    for name in names:
        (m.path / "vision" / name).read_bytes()
    server.set_faults(crafted={"files.list": {"json": listing},
                               "files.content": {"body": "by evil id", "content_type": "text/plain"}})
    time.sleep(0.4)
    assert (m.path / "vision" / "evil-id.txt").read_bytes() == b"by evil id"
    with pytest.raises(FileNotFoundError):
        (m.path / "vision" / "evil-slash.txt").read_bytes()
    by_id = os.listdir(m.path / ".by-id")
    assert len(by_id) == 3 and all("/" not in n for n in by_id)
    purpose_dirs = [d for d in os.listdir(m.path) if "\uff0f" in d]  # the ../ purpose, made one safe name
    assert len(purpose_dirs) == 1
    # An upload into that purpose fails (the server knows no such purpose): kept in failed-uploads/.
    server.set_faults()
    src = tmp_path / "up.txt"
    src.write_text("keep me\n")
    done = run(["cp", str(src), str(m.path / purpose_dirs[0] / "..\\..\\up.txt")], mountpoint=m.path)
    assert done.code != 0
    m.stop()
    assert list(victim.iterdir()) == [], "something was written outside the cache dir"
    failed = list((m.cache_dir / "failed-uploads").iterdir())
    assert sorted(p.suffix for p in failed) == [".json", ".txt"]
    data = next(p for p in failed if p.suffix == ".txt")
    assert data.read_bytes() == b"keep me\n" and data.parent == m.cache_dir / "failed-uploads"
    assert json.loads(data.with_name(data.name + ".json").read_text())["purpose"] == f"{rel}/p"
    for p in (m.cache_dir / "content").iterdir():
        assert p.name in (".lock", "trash") or CACHE_NAME.fullmatch(p.name), p.name
    assert sorted(os.listdir(tmp_path)) == ["cache0", "mnt0", "mnt0.log", "server-data-0", "up.txt", "victim"]
    assert log_problems(m.log()) == []
