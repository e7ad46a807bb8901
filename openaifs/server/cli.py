"""``openaifs serve``: flags, the listening socket, uvicorn, the readiness line, clean exit.

Why uvicorn is run this way:

* The socket is bound here (``--port 0`` lets the kernel pick) and handed to uvicorn, so the port
  is known before anything is printed, and no other process can take it in between.
* The line with ``http://HOST:PORT/v1`` is printed (and flushed) from ``Server.startup`` once
  uvicorn accepts connections on that socket: tests and scripts wait for it.
* ``http="httptools"`` and ``loop="uvloop"`` (when installed): the C parser and loop keep the
  server from being the bottleneck of the read benchmarks; access log off for the same reason.
* ``proxy_headers=False``: the admin routes trust the TCP peer address, never a forwarded header.
* ``lifespan="off"``: the app has no startup work; storage is opened here before serving.
* SIGTERM and SIGINT start uvicorn's graceful shutdown (in-flight requests get
  ``SHUTDOWN_GRACE`` seconds) and the command exits 0. uvicorn's own handler would re-raise the
  signal after shutdown, ending the process with 143 instead: ``capture_signals`` is replaced.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from openaifs.config import ConfigError, server_api_key
from openaifs.server.app import FilesApp
from openaifs.server.faults import Faults
from openaifs.server.flags import settings_from_args
from openaifs.server.state import ServerState
from openaifs.server.storage import Storage

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
SHUTDOWN_GRACE = 3  # seconds for in-flight requests (e.g. a long download) before connections are cut


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        key = server_api_key(args.api_key_file)
    except ConfigError as exc:
        print(f"openaifs serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(f"openaifs serve: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    with sock, data_dir(args.data) as root:
        try:
            storage = Storage(root)
        except OSError as exc:
            print(f"openaifs serve: cannot use data directory {root}: {exc}", file=sys.stderr)
            return EXIT_ERROR
        state = ServerState(storage, settings_from_args(args), faults=Faults(default_range=not args.no_range),
                            api_key=key)
        try:
            started = serve(state, sock, args.log_level, root)
        finally:
            storage.close()
    return EXIT_OK if started else EXIT_ERROR


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def data_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="openaifs-serve-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Server(uvicorn.Server):
    """uvicorn's server that announces its URL when ready and exits 0 on SIGTERM/SIGINT."""

    def __init__(self, config: uvicorn.Config, url: str, root: Path) -> None:
        super().__init__(config)
        self.url = url
        self.root = root

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(f"openaifs serve: listening on {self.url} (data: {self.root})", flush=True)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(state: ServerState, sock: socket.socket, log_level: str, root: Path) -> bool:
    """Serve until SIGTERM/SIGINT; False if uvicorn could not start (it logged why)."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(
        FilesApp(state),
        http="httptools",
        loop=_loop(),
        lifespan="off",
        log_level=log_level,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )
    server = _Server(config, f"http://{shown}:{port}/v1", root)
    server.run(sockets=[sock])
    return server.started


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"
