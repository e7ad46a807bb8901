"""Helpers of the reliability suite: hang-proof commands, /proc probes, FUSE connection abort."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

FUSECTL = Path("/sys/fs/fuse/connections")


def _fuse_minor(mountpoint: Path) -> int | None:
    """The FUSE connection number of the mount at ``mountpoint``, from mountinfo (never stat: it may hang)."""
    target = os.path.realpath(mountpoint)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4].replace("\\040", " ") == target:
                found = int(parts[2].split(":")[1])
    return found


def abort_fuse(mountpoint: Path) -> bool:
    """Abort the FUSE connection of ``mountpoint``: every process blocked on it gets ENOTCONN.

    The last resort against a hung filesystem (PYFUSE3_NOTES §3.2): a process in D state on a FUSE
    request ignores SIGKILL until the request is answered or the connection aborted.
    """
    minor = _fuse_minor(mountpoint)
    if minor is None:
        return False
    if not (FUSECTL / str(minor)).exists():
        subprocess.run(["mount", "-t", "fusectl", "none", str(FUSECTL)], capture_output=True, timeout=10)
    try:
        (FUSECTL / str(minor) / "abort").write_text("1")
    except OSError:
        return False
    return True


@dataclass
class Done:
    """A finished command: exit code, output, and how long it took."""

    code: int
    out: bytes
    err: bytes
    seconds: float

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")

    @property
    def error(self) -> str:
        return self.err.decode(errors="replace")


class Hung(AssertionError):
    """A command against the mount did not finish in time (its FUSE connection was aborted)."""


def start(cmd: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]


def finish(proc: subprocess.Popen[bytes], timeout: float, mountpoint: Path | None = None,
           started: float | None = None) -> Done:
    """Wait for ``proc``; if it hangs past ``timeout``, abort the mount's FUSE connection, reap it and
    raise ``Hung`` (a plain SIGKILL would not free a process stuck in a FUSE request)."""
    t0 = time.monotonic() if started is None else started
    try:
        out, err = proc.communicate(timeout=max(0.0, t0 + timeout - time.monotonic()))
    except subprocess.TimeoutExpired:
        state = proc_state(proc.pid)
        if mountpoint is not None:
            abort_fuse(mountpoint)
        proc.kill()
        out, err = proc.communicate(timeout=30)
        raise Hung(f"{proc.args!r} still running after {timeout:.0f} s (state {state}); "
                   f"output so far: {out[-500:]!r} {err[-500:]!r}") from None
    return Done(proc.returncode, out, err, time.monotonic() - t0)


def run(cmd: Sequence[str], timeout: float = 60, mountpoint: Path | None = None, **kwargs: object) -> Done:
    """Run a command (against a mount), hang-proof: see ``finish``."""
    t0 = time.monotonic()
    return finish(start(cmd, **kwargs), timeout, mountpoint, t0)


def proc_state(pid: int) -> str:
    """The one-letter state of ``pid`` (R, S, D, Z, ...), or "gone"."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat[stat.rindex(")") + 2]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int) -> tuple[int, int]:
    """(sockets, everything else) among the open descriptors of ``pid``."""
    sockets = other = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            sockets += 1
        else:
            other += 1
    return sockets, other


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def payload(size: int, seed: int) -> bytes:
    """Deterministic, distinct bytes of any size (fast: a repeated sha256 block with a counter)."""
    block = hashlib.sha256(f"payload-{seed}".encode()).digest() * 64  # 2 KiB
    out = bytearray()
    i = 0
    while len(out) < size:
        out += i.to_bytes(8, "little") + block
        i += 1
    return bytes(out[:size])


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")


def log_problems(log: str) -> list[str]:
    """Lines of a mount log that mean a bug rather than a handled failure.

    Only the log's own markers count: a traceback starts a line of its own, and the other markers
    are looked for in the logger's part of a record (before any server-provided text). A hostile
    server's filename or id quoted in a warning — Hypothesis draws strings from the code's own
    literals, "unexpected error" among them — is not a bug of ours.
    """
    bad_prefixes = ("Traceback (most recent call last)", "RuntimeError", "AssertionError")
    problems = []
    for line in log.splitlines():
        if _TIMESTAMP.match(line):
            head = line.split(": ", 1)[0]  # "<time> LEVEL logger"
            message = line[len(head) + 2:]
            if message.startswith(("unexpected error in ", "Exception in ")) or "CRITICAL" in head:
                problems.append(line)
        elif line.startswith(bad_prefixes):
            problems.append(line)
    return problems
