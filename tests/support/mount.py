"""Mount a real openaifs over a real local server for e2e tests; always unmount and stop by pid."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.processes import end
from tests.support.server import LocalServer

MOUNT_TIMEOUT = 30.0


def in_proc_mounts(mountpoint: Path) -> bool:
    """True while anything (a dead FUSE mount too) is mounted at ``mountpoint``."""
    target = os.path.realpath(mountpoint)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == target for line in f)


def answers(mountpoint: Path) -> bool:
    """True once our filesystem answers at ``mountpoint`` (its root is FUSE's inode 1)."""
    try:
        # statvfs first: stat of a dead mount may still be answered from the kernel's attribute cache.
        return in_proc_mounts(mountpoint) and os.statvfs(mountpoint) is not None and os.stat(mountpoint).st_ino == 1
    except OSError:  # a dead mount left by a crashed process answers ENOTCONN
        return False


def unmount(mountpoint: Path) -> None:
    """fusermount3 -u, then lazy -uz as a last resort."""
    if not in_proc_mounts(mountpoint):
        return
    subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, timeout=30)
    deadline = time.monotonic() + 5
    while in_proc_mounts(mountpoint) and time.monotonic() < deadline:
        time.sleep(0.05)
    if in_proc_mounts(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, timeout=30)


class Mount:
    """``openaifs mount -f`` as a child process, with its log captured to a file."""

    def __init__(
        self,
        server: LocalServer,
        mountpoint: Path,
        cache_dir: Path,
        args: list[str] | None = None,
        api_key: str | None = "sk-test-mount-key",
        env: dict[str, str] | None = None,
        stderr_path: Path | None = None,
    ) -> None:
        self.server = server
        self.path = mountpoint
        self.cache_dir = cache_dir
        self.args = list(args or [])
        self.api_key = api_key
        self.extra_env = env or {}
        self.log_path = cache_dir.parent / f"{mountpoint.name}.log"
        # None: stderr is a pipe, read only if the mount fails to start. A file instead for mounts
        # that write much there (--debug prints every FUSE request): a full pipe would block them.
        self.stderr_path = stderr_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mount:
        self.path.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        env.update(OPENAI_BASE_URL=self.server.base_url, **self.extra_env)
        if self.api_key is not None:  # None: the key comes another way (--api-key-file)
            env["OPENAI_API_KEY"] = self.api_key
        cmd = [sys.executable, "-m", "openaifs", "mount", "-f", str(self.path), "--cache-dir",
               str(self.cache_dir), "--log-file", str(self.log_path), *self.args]
        if self.stderr_path is None:
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         start_new_session=True)
        else:
            with open(self.stderr_path, "ab") as err_file:
                self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err_file,
                                             start_new_session=True)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not answers(self.path):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"openaifs mount exited with {self.proc.returncode}: {err}\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("openaifs mount did not come up in time\n" + self.log())
            time.sleep(0.05)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the mount process (a crash); the mount itself is left as the kernel leaves it."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait(timeout=30)
            if proc.stderr is not None:
                proc.stderr.close()

    def stop(self) -> int | None:
        """Unmount and wait for the process; returns its exit code (None if it was not running)."""
        proc, self.proc = self.proc, None
        try:
            unmount(self.path)
        finally:
            code = _reap(proc) if proc is not None else None
        return code


def _reap(proc: subprocess.Popen[bytes]) -> int:
    """Wait for an unmounted mount process to exit; SIGTERM, then SIGKILL, if it does not."""
    if proc.stderr is not None:
        proc.stderr.close()
    return end(proc, wait=60)
