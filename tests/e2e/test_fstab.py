"""fstab, mount(8) and systemd: the helper run exactly the way the system runs it, against a local server.

Verified argv on this Debian 12 (util-linux 2.38.1, fuse3 3.14), see docs/fstab-and-systemd.md:
* fstab type ``openaifs``:      ``/sbin/mount.openaifs SPEC DIR [-sfnv] -o OPTS [-t TYPE]``
* fstab type ``fuse.openaifs``: mount.fuse3 runs ``/bin/sh -c 'openaifs SPEC DIR -o OPTS'`` (PATH unset:
  sh's default path), with ``dev,suid`` added when run as root.
``mount -T FILE`` goes through the same path with the type ``fuse`` and ``/abs/openaifs#SPEC`` (so no
system directory is touched); the two system-wide forms run only where they are installed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.mount import answers, in_proc_mounts, unmount
from tests.support.server import LocalServer

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's bin: openaifs and mount.openaifs live next to python
OPENAIFS = BIN / "openaifs"
HELPER = BIN / "mount.openaifs"
KEY = "sk-fstab-test-KEY-0123456789"
SH_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # what mount.fuse3's sh uses


def run(*argv: str | Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    full.update(env or {})
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=full, timeout=timeout)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def _pids_using(path: Path) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if str(path).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def _wait_gone(pids: list[int], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{p}").exists() for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def account(server: LocalServer, tmp_path: Path, fuse_available: None) -> Iterator[dict[str, object]]:
    """A served file, a key file (0600), a mountpoint; every daemon left on it is unmounted and reaped."""
    record = server.add_file("batch", "a.jsonl", b'{"x": 1}\n')
    key = tmp_path / "openaifs.key"
    key.write_text(KEY + "\n")
    key.chmod(0o600)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    yield {"server": server, "key": key, "mnt": mnt, "cache": tmp_path / "cache", "id": record["id"]}
    pids = _pids_using(mnt)
    unmount(mnt)
    if not _wait_gone(pids):
        for pid in pids:
            os.kill(pid, signal.SIGKILL)


def options(acc: dict[str, object], *extra: str) -> str:
    server = acc["server"]
    assert isinstance(server, LocalServer)
    return ",".join([f"api_key_file={acc['key']}", f"base_url={server.base_url}", f"cache_dir={acc['cache']}",
                     *extra])


def assert_mounted_and_daemonized(acc: dict[str, object]) -> list[int]:
    mnt = acc["mnt"]
    assert isinstance(mnt, Path)
    assert answers(mnt)
    assert os.listdir(mnt / "batch") == ["a.jsonl"]  # answers as soon as the helper returned
    pids = _pids_using(mnt)
    assert pids, "no mount process"
    cmdlines = b" ".join(Path(f"/proc/{p}/cmdline").read_bytes() for p in pids)
    assert KEY.encode() not in cmdlines
    return pids


def assert_unmounts_with_umount8(acc: dict[str, object], pids: list[int]) -> None:
    mnt = acc["mnt"]
    assert isinstance(mnt, Path)
    done = run("umount", mnt)
    assert done.returncode == 0, done.stderr
    assert not in_proc_mounts(mnt)
    assert _wait_gone(pids), "the mount process outlived its mount"


def test_mount_openaifs_with_the_argv_of_mount8(account: dict[str, object]) -> None:
    # what mount(8) runs for `openai /mnt/openai openaifs _netdev,noauto,api_key_file=...,xattrs 0 0`
    r = run(HELPER, "openai", account["mnt"], "-o", "rw," + options(account, "xattrs", "_netdev", "nofail"))
    assert r.returncode == 0 and r.stderr == "" and r.stdout == ""
    pids = assert_mounted_and_daemonized(account)
    mnt = account["mnt"]
    assert isinstance(mnt, Path)
    assert os.getxattr(mnt / "batch" / "a.jsonl", "user.openai.id").decode() == account["id"]
    assert_unmounts_with_umount8(account, pids)


def test_openaifs_with_the_argv_of_mount_fuse3(account: dict[str, object]) -> None:
    # what mount.fuse3 runs (via sh) for type fuse.openaifs, as root: dev,suid appended
    r = run(OPENAIFS, "openai", account["mnt"], "-o", "rw," + options(account) + ",dev,suid")
    assert r.returncode == 0, r.stderr
    pids = assert_mounted_and_daemonized(account)
    r = run(OPENAIFS, "umount", account["mnt"])
    assert r.returncode == 0, r.stderr
    assert _wait_gone(pids)


def _needs_mount_T() -> None:
    if "--fstab" not in subprocess.run(["mount", "--help"], capture_output=True, text=True).stdout:
        pytest.skip("this mount(8) has no -T/--fstab")


def test_mount_T_with_the_documented_fstab_line(account: dict[str, object], tmp_path: Path) -> None:
    """README's fstab line, mounted by mount(8) from a private fstab file.

    Only the type changes: ``fuse`` with ``/abs/openaifs#SPEC`` reaches openaifs through mount.fuse3
    exactly like ``fuse.openaifs`` does, without installing anything into /usr/local/bin.
    """
    _needs_mount_T()
    spec, target, fstype, opts = documented_fstab_line()
    assert (spec, target, fstype) == ("openai", "/mnt/openai", "fuse.openaifs")
    opts = opts.replace("/etc/openaifs.key", str(account["key"]))
    line = f"{OPENAIFS}#{spec} {account['mnt']} fuse {opts},{options(account)} 0 0"
    mount_and_unmount_with_fstab(account, tmp_path, line)


def mount_and_unmount_with_fstab(account: dict[str, object], tmp_path: Path, line: str) -> None:
    """``mount -T`` of a one-line fstab mounts and daemonizes; ``umount`` then ends it all."""
    fstab = tmp_path / "fstab"
    fstab.write_text(line + "\n")
    r = run("mount", "-T", fstab, account["mnt"])
    assert r.returncode == 0, r.stderr
    pids = assert_mounted_and_daemonized(account)
    assert_unmounts_with_umount8(account, pids)


def test_mount_T_reports_the_helpers_one_line_and_code(account: dict[str, object], tmp_path: Path) -> None:
    _needs_mount_T()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{OPENAIFS}#openai {account['mnt']} fuse noauto,api_key=sk-INLINE-SECRET 0 0\n")
    r = run("mount", "-T", fstab, account["mnt"])
    assert r.returncode == 1
    assert "api_key=... refused" in one_line(r) and "INLINE-SECRET" not in r.stderr
    assert not in_proc_mounts(account["mnt"])  # type: ignore[arg-type]


@pytest.mark.parametrize("fstype", ["openaifs", "fuse.openaifs"])
def test_mount_T_with_the_system_wide_helpers(account: dict[str, object], tmp_path: Path, fstype: str) -> None:
    """Runs where /sbin/mount.openaifs and an openaifs in sh's default PATH are installed (README)."""
    _needs_mount_T()
    program = "/sbin/mount.openaifs" if fstype == "openaifs" else shutil.which("openaifs", path=SH_DEFAULT_PATH)
    if program is None or not os.access(program, os.X_OK):
        pytest.skip(f"fstab type {fstype} needs {'/sbin/mount.openaifs' if fstype == 'openaifs' else 'openaifs'} "
                    "installed system-wide (docs/fstab-and-systemd.md)")
    line = f"openai {account['mnt']} {fstype} _netdev,noauto,{options(account)} 0 0"
    mount_and_unmount_with_fstab(account, tmp_path, line)


def test_helper_failures_are_one_line_with_mount8_codes(account: dict[str, object],
                                                         server_factory: Callable[..., LocalServer]) -> None:
    mnt = account["mnt"]
    assert isinstance(mnt, Path)
    r = run(HELPER, "openai", mnt, "-o", options(account).replace(str(account["key"]), "/nonexistent/key"))
    assert r.returncode == 1 and "cannot read API key file /nonexistent/key" in one_line(r)
    r = run(HELPER, "openai", mnt.parent / "missing", "-o", options(account))
    assert r.returncode == 1 and "does not exist" in one_line(r)
    r = run(HELPER, "openai", mnt, "-o", options(account, "cache_size=10X"))
    assert r.returncode == 1 and one_line(r) == "mount.openaifs: -o cache_size: not a size: '10X' (examples: 500M, 10G)"
    # the server refuses the key: the mount itself failed → 32, like mount(8)
    strict = server_factory(env={**os.environ, "OPENAIFS_SERVER_API_KEY": "sk-another-key"})
    refused = options(account).replace(f"base_url={account['server'].base_url}",  # type: ignore[attr-defined]
                                       f"base_url={strict.base_url}")
    r = run(HELPER, "openai", mnt, "-o", refused)
    assert r.returncode == 32 and "refused the API key" in one_line(r) and KEY not in r.stderr
    assert not in_proc_mounts(mnt)


def test_helper_fake_and_verbose(account: dict[str, object]) -> None:
    mnt = account["mnt"]
    assert isinstance(mnt, Path)
    r = run(HELPER, "openai", mnt, "-f", "-v", "-o", "rw," + options(account, "xattrs", "_netdev"))
    assert r.returncode == 0
    expected = shlex.join(["mount", str(mnt), "-o", options(account, "xattrs")])
    assert one_line(r) == f"mount.openaifs: running openaifs {expected}"
    assert not in_proc_mounts(mnt)


def test_helper_refuses_a_mountpoint_already_mounted(account: dict[str, object]) -> None:
    assert run(HELPER, "openai", account["mnt"], "-o", options(account)).returncode == 0
    pids = assert_mounted_and_daemonized(account)
    r = run(HELPER, "openai", account["mnt"], "-o", options(account))
    assert r.returncode == 1 and "already mounted" in one_line(r)
    assert_unmounts_with_umount8(account, pids)


# -- systemd ----------------------------------------------------------------------------------------

class NotifySocket:
    """A stand-in for systemd's NOTIFY_SOCKET: a datagram socket collecting what the service says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def wait_for(self, text: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(0.1)
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                assert proc.poll() is None, f"the service exited with {proc.returncode}"
                continue
            if text in message:
                return message
        raise AssertionError(f"no {text!r} from the service")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(tmp_path / "notify")
    yield s
    s.sock.close()


def test_foreground_mount_tells_systemd_when_it_is_ready(account: dict[str, object],
                                                         notify_socket: NotifySocket) -> None:
    mnt = account["mnt"]
    assert isinstance(mnt, Path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["NOTIFY_SOCKET"] = str(notify_socket.path)
    proc = subprocess.Popen([OPENAIFS, "mount", "-f", mnt, "-o", options(account)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        message = notify_socket.wait_for("READY=1", proc)
        assert answers(mnt)  # ready means the mount answers
        assert f"STATUS=mounted at {mnt}" in message
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not in_proc_mounts(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_documented_unit_verifies() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (ROOT / "docs" / "openaifs.service").read_text().replace("/usr/local/bin/openaifs", str(OPENAIFS))
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"openaifs-verify-{os.getpid()}.service"
    tmp.write_text(unit)
    try:
        r = subprocess.run(["systemd-analyze", "verify", str(tmp)], capture_output=True, text=True, timeout=60)
    finally:
        tmp.unlink()
    assert r.stdout + r.stderr == ""


def test_the_documented_units_commands_start_and_stop_cleanly(account: dict[str, object], tmp_path: Path,
                                                              notify_socket: NotifySocket) -> None:
    """systemd is not PID 1 in every test environment: run the unit's commands the way it would.

    Specifiers: %d (credentials directory, holding LoadCredential's copy of the key), %C (cache root).
    """
    unit = unit_settings(ROOT / "docs" / "openaifs.service")
    assert unit["Type"] == ["notify"]
    name, _, source = unit["LoadCredential"][0].partition(":")
    assert source == "/etc/openaifs.key"
    creds = tmp_path / "credentials"
    creds.mkdir()
    shutil.copy(account["key"], creds / name)  # type: ignore[arg-type]
    mnt = account["mnt"]
    assert isinstance(mnt, Path)
    mnt.rmdir()  # ExecStartPre creates it

    def command(line: str) -> list[str]:
        line = line.replace("%d", str(creds)).replace("%C", str(tmp_path / "cache-root"))
        line = line.replace("/mnt/openai", str(mnt)).replace("/usr/local/bin/openaifs", str(OPENAIFS))
        return shlex.split(line)

    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(dict(e.split("=", 1) for e in unit["Environment"]))
    assert env["OPENAI_BASE_URL"] == "https://api.openai.com/v1"
    env["OPENAI_BASE_URL"] = account["server"].base_url  # type: ignore[attr-defined]
    (tmp_path / "cache-root" / "openaifs").mkdir(parents=True)  # CacheDirectory=
    for pre in unit.get("ExecStartPre", []):
        assert subprocess.run(command(pre), env=env, timeout=30).returncode == 0
    env["NOTIFY_SOCKET"] = str(notify_socket.path)
    proc = subprocess.Popen(command(unit["ExecStart"][0]), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        notify_socket.wait_for("READY=1", proc)
        assert os.listdir(mnt / "batch") == ["a.jsonl"]
        stop = subprocess.run(command(unit["ExecStop"][0]), env=env, capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0, stop.stderr
        assert proc.wait(timeout=90) == 0  # what systemd calls a clean stop
        assert not in_proc_mounts(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


# -- the docs ---------------------------------------------------------------------------------------

FSTAB_LINE = re.compile(r"^(\S+)\s+(/\S+)\s+((?:fuse\.)?openaifs)\s+(\S+)\s+0\s+0\s*$")


def documented_fstab_line() -> tuple[str, str, str, str]:
    """The fstab line in README's fstab section (the same one docs/fstab-and-systemd.md uses)."""
    readme = [m.groups() for m in map(FSTAB_LINE.match, (ROOT / "README.md").read_text().splitlines()) if m]
    guide = [m.groups() for m in map(FSTAB_LINE.match,
                                     (ROOT / "docs" / "fstab-and-systemd.md").read_text().splitlines()) if m]
    assert readme, "README.md shows no fstab line"
    assert readme[0] in guide
    spec, target, fstype, opts = readme[0]
    return spec, target, fstype, opts
