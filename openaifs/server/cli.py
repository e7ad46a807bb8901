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

from openaifs.config import SERVER_KEY_VARIABLE, ConfigError, server_api_key
from openaifs.server.app import FilesApp
from openaifs.server.faults import Faults
from openaifs.server.settings import (
    MAX_FILE_BYTES,
    MAX_PAGE_SIZE,
    MAX_PART_BYTES,
    MAX_UPLOAD_BYTES,
    Settings,
)
from openaifs.server.state import ServerState
from openaifs.server.storage import Storage

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
SHUTDOWN_GRACE = 3  # seconds for in-flight requests (e.g. a long download) before connections are cut

DESCRIPTION = f"""\
Run a local server that speaks the OpenAI Files and Uploads API (/v1/files, /v1/uploads) with
the hosted API's ids, pagination, errors, limits and quirks, storing files under --data.

The hosted API's quirks are on by default: downloads of purposes 'assistants' and 'user_data' are
refused (400), and 'batch' / 'fine-tune' uploads must be JSONL. Loopback clients can inject faults
and read request counters through /_admin/* (see docs/INTERNALS.md).

The API key clients must send is read from ${SERVER_KEY_VARIABLE} or --api-key-file; without one
any bearer (or none) is accepted.
"""

EXAMPLES = """\
examples:
  openaifs serve --port 8080 --data ~/.local/share/openaifs-server
  OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=sk-local openaifs mount ~/openai
  openaifs serve --port 0 --no-range --allow-all-downloads     # prints the URL it listens on
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080,
                        help="TCP port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="data directory (default: a temporary one removed at exit)")
    parser.add_argument("--api-key-file", metavar="FILE",
                        help=f"file holding the API key clients must send (else ${SERVER_KEY_VARIABLE})")
    parser.add_argument("--no-range", action="store_true", help="ignore Range headers (always answer 200)")
    parser.add_argument("--allow-all-downloads", action="store_true",
                        help="serve content of every purpose (the hosted API refuses assistants, user_data)")
    parser.add_argument("--no-validate-jsonl", action="store_true",
                        help="accept non-JSONL content for purposes batch and fine-tune")
    _size_flag(parser, "--max-file-bytes", MAX_FILE_BYTES, "largest POST /files upload")
    _size_flag(parser, "--max-part-bytes", MAX_PART_BYTES, "largest upload part")
    _size_flag(parser, "--max-upload-bytes", MAX_UPLOAD_BYTES, "largest total of one Upload")
    _size_flag(parser, "--max-page-size", MAX_PAGE_SIZE, "most files per list page (caps `limit`)")
    parser.add_argument("--log-level", default="warning",
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="log verbosity on stderr (default: %(default)s)")


def _size_flag(parser: argparse.ArgumentParser, flag: str, default: int, what: str) -> None:
    parser.add_argument(flag, type=_positive_int, default=default, metavar="N",
                        help=f"{what} (default: {default})")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        max_file_bytes=args.max_file_bytes,
        max_part_bytes=args.max_part_bytes,
        max_upload_bytes=args.max_upload_bytes,
        max_page_size=args.max_page_size,
        refuse_downloads=[] if args.allow_all_downloads else list(Settings().refuse_downloads),
        validate_jsonl=not args.no_validate_jsonl,
    )


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
