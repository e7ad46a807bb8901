"""Start and stop a real ``openaifs serve`` process for tests, and talk to its admin routes."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from tests.support.processes import end

STARTUP_TIMEOUT = 30.0


class LocalServer:
    """A running ``openaifs serve`` on 127.0.0.1; stopped by pid in ``stop()``."""

    def __init__(self, data_dir: Path, args: list[str] | None = None, env: dict[str, str] | None = None,
                 port: int = 0):
        self.data_dir = data_dir
        self.port = port  # 0: the kernel picks one; start() then remembers it, so a restart reuses it
        self.args = list(args or [])
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.root_url = ""
        self.output: list[str] = []

    def start(self) -> LocalServer:
        cmd = [sys.executable, "-m", "openaifs", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data", str(self.data_dir), *self.args]
        env = dict(os.environ if self.env is None else self.env)
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        lines: queue.Queue[str | None] = queue.Queue()

        proc = self.proc

        def pump() -> None:
            assert proc.stdout is not None
            with proc.stdout as out:
                for line in out:
                    self.output.append(line)
                    lines.put(line)
            lines.put(None)

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        while True:
            try:
                line = lines.get(timeout=STARTUP_TIMEOUT)
            except queue.Empty:
                self.stop()
                raise RuntimeError("openaifs serve did not print its URL in time:\n" + "".join(self.output)) from None
            if line is None:
                self.stop()
                raise RuntimeError("openaifs serve exited before listening:\n" + "".join(self.output))
            if "http://127.0.0.1:" in line:
                url = line[line.index("http://127.0.0.1:"):].split()[0]
                self.base_url = url.rstrip("/")
                self.root_url = self.base_url.removesuffix("/v1")
                self.port = int(self.root_url.rsplit(":", 1)[1])
                return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        end(proc)
        pump = getattr(self, "_pump", None)
        if pump is not None:
            pump.join(timeout=10)

    def restart(self) -> LocalServer:
        """Stop, then serve the same --data on the same port again (a server that went away and came back)."""
        self.stop()
        return self.start()

    # -- admin helpers ------------------------------------------------------------------------
    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        r = httpx.request(method, f"{self.root_url}/_admin/{path}", timeout=30, **kwargs)
        r.raise_for_status()
        return r.json() if r.content else None

    def stats(self) -> dict[str, Any]:
        return self.admin("GET", "stats")

    def requests(self, route: str | None = None) -> int:
        counts = self.stats()["requests"]
        return sum(counts.values()) if route is None else counts.get(route, 0)

    def reset_stats(self) -> None:
        self.admin("POST", "stats/reset")

    def set_faults(self, **faults: Any) -> None:
        self.admin("PUT", "faults", json=faults)

    def configure(self, **config: Any) -> None:
        self.admin("PUT", "config", json=config)

    def add_file(self, purpose: str, filename: str, content: bytes, created_at: int | None = None) -> dict:
        params: dict[str, Any] = {"purpose": purpose, "filename": filename}
        if created_at is not None:
            params["created_at"] = created_at
        return self.admin("POST", "files", params=params, content=content)

    def add_files_bulk(self, files: list[dict[str, Any]]) -> list[str]:
        """Many small files in one request (``POST /_admin/files/bulk``); their ids, in order."""
        return self.admin("POST", "files/bulk", json={"files": files})["ids"]
