"""Command-line entry point: ``openaifs serve | mount | umount | demo``.

Owns argument parsing and turning user mistakes into one line on stderr with a documented exit
code. It holds no policy of its own: each subcommand hands a config to the module that does the work.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from openaifs import __version__

# Exit codes (documented in README.md).
EXIT_OK = 0
EXIT_ERROR = 1  # an operation failed (server unreachable, mount failed, ...)
EXIT_USAGE = 2  # a user mistake in flags, arguments or environment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openaifs",
        description="Mount an OpenAI account's files as a directory, or serve a local Files API.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"openaifs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from openaifs.server import cli as server_cli

    serve = sub.add_parser(
        "serve",
        help="run the local OpenAI-compatible Files API server",
        description=server_cli.DESCRIPTION,
        epilog=server_cli.EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    server_cli.add_arguments(serve)
    serve.set_defaults(run=server_cli.run)

    mount = sub.add_parser(
        "mount",
        help="mount the account's files at MOUNTPOINT",
        description="Mount the OpenAI account's files as a directory. Credentials come from "
        "OPENAI_API_KEY (or --api-key-file), the server from OPENAI_BASE_URL, optional "
        "OPENAI_ORG_ID / OPENAI_PROJECT_ID headers.",
        epilog=MOUNT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_mount_arguments(mount)
    mount.set_defaults(run=run_mount)

    umount = sub.add_parser(
        "umount",
        help="unmount MOUNTPOINT",
        description="Unmount an openaifs mount (waits for uploads in flight).",
        epilog="example:\n  openaifs umount ~/openai",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    umount.add_argument("mountpoint", type=Path)
    umount.set_defaults(run=run_umount)

    demo = sub.add_parser(
        "demo",
        help="serve a generated account locally and mount it (no API key needed)",
        description="Start `openaifs serve` on 127.0.0.1 with generated sample files, mount it, and "
        "wait for Ctrl-C, then unmount and stop the server.",
        epilog="examples:\n  openaifs demo            # mounts at ./openai\n  openaifs demo /tmp/openai",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("mountpoint", type=Path, nargs="?", default=Path("openai"))
    demo.add_argument("--no-wait", action="store_true", help="exit right after mounting and listing (for tests)")
    demo.set_defaults(run=run_demo)
    return parser


MOUNT_EXAMPLES = """examples:
  OPENAI_API_KEY=sk-... openaifs mount ~/openai
  openaifs mount --api-key-file ~/.openai-key --xattrs ~/openai
  OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=local openaifs mount -f /mnt/openai
"""

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``10G``, ``512M``, ``1.5GiB``, ``1000`` → bytes (powers of 1024)."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 500M, 10G)")
    scale = 1024 ** "_kmgt".index(m.group(2).lower() or "_")
    return int(float(m.group(1)) * scale)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return value


def add_mount_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", type=Path, help="an existing empty directory")
    p.add_argument("-f", "--foreground", action="store_true", help="stay attached (default: daemonize)")
    p.add_argument("--api-key-file", metavar="FILE", help="read the API key from FILE (not OPENAI_API_KEY)")
    p.add_argument("--metadata-ttl", type=_positive_float, default=60.0, metavar="SECONDS",
                   help="how long a listing is fresh (default 60)")
    p.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                   help="content cache and failed uploads (default ~/.cache/openaifs)")
    p.add_argument("--cache-size", type=parse_size, default=None, metavar="SIZE",
                   help="bound of the content cache, e.g. 10G (default 10G)")
    p.add_argument("--allow-other", action="store_true", help="let other users access the mount")
    p.add_argument("--xattrs", action="store_true", help="expose user.openai.* extended attributes")
    p.add_argument("--read-only", action="store_true", help="refuse every write (EROFS)")
    p.add_argument("--debug", action="store_true", help="verbose logs and tracebacks")
    p.add_argument("--log-file", type=Path, default=None, metavar="FILE",
                   help="log here (default: stderr in the foreground, CACHE_DIR/openaifs.log as a daemon)")
    p.add_argument("-o", dest="fuse_options", action="append", default=[], metavar="OPTS",
                   help="extra FUSE mount options, comma-separated")
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)


def _setup_logging(args: argparse.Namespace, log_file: Path | None) -> None:
    level = logging.DEBUG if args.debug else logging.INFO
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if not args.debug:  # httpx logs every request at INFO: too chatty for a filesystem
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("httpcore").setLevel(logging.WARNING)


def _mount_configs(args: argparse.Namespace) -> tuple[object, object]:
    from openaifs.config import MountConfig, client_config_from_env, default_cache_dir

    ccfg = client_config_from_env(args.api_key_file)
    opts = tuple(o for group in args.fuse_options for o in group.split(",") if o)
    kwargs = {"cache_size": args.cache_size} if args.cache_size is not None else {}
    mcfg = MountConfig(
        mountpoint=args.mountpoint.resolve(),
        cache_dir=(args.cache_dir or default_cache_dir()).resolve(),
        metadata_ttl=args.metadata_ttl,
        allow_other=args.allow_other,
        xattrs=args.xattrs,
        read_only=args.read_only,
        debug=args.debug,
        fuse_options=opts,
        **kwargs,
    )
    return mcfg, ccfg


def run_mount(args: argparse.Namespace) -> int:
    from openaifs.config import ConfigError
    from openaifs.mount import MountError, check_mountpoint

    try:
        mcfg, ccfg = _mount_configs(args)
        check_mountpoint(mcfg.mountpoint)  # type: ignore[attr-defined]
    except (ConfigError, MountError) as exc:
        print(f"openaifs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.foreground:
        return _daemonize(args, mcfg)
    return _run_foreground(args, mcfg, ccfg)


def _run_foreground(args: argparse.Namespace, mcfg: object, ccfg: object) -> int:
    import trio

    from openaifs.mount import serve

    log_file = args.log_file
    if log_file is None and args.ready_fd is not None:
        log_file = mcfg.cache_dir / "openaifs.log"  # type: ignore[attr-defined]
    _setup_logging(args, log_file)
    failure: list[str] = []

    def ready(reason: str | None) -> None:
        if reason is not None:
            failure.append(reason)
            logging.getLogger("openaifs").error("%s", reason)
        if args.ready_fd is not None:
            os.write(args.ready_fd, (f"error: {reason}\n" if reason else "ok\n").encode())
            os.close(args.ready_fd)
            args.ready_fd = None

    code = trio.run(serve, mcfg, ccfg, ready)
    if failure:  # in a daemon child stderr is /dev/null: the parent printed it from the pipe
        print(f"openaifs: {failure[0]}", file=sys.stderr)
    return code


def _daemonize(args: argparse.Namespace, mcfg: object) -> int:
    """Start the mount in a detached child and return once it answers (or say why it did not)."""
    read_end, write_end = os.pipe()
    child_args = [a for a in (args.raw_argv or []) if a not in ("-f", "--foreground")]
    cmd = [sys.executable, "-m", "openaifs", "mount", "--foreground", "--ready-fd", str(write_end), *child_args]
    with open(os.devnull, "rb") as devnull_in, open(os.devnull, "wb") as devnull_out:
        proc = subprocess.Popen(
            cmd, stdin=devnull_in, stdout=devnull_out, stderr=devnull_out,
            pass_fds=(write_end,), start_new_session=True,
        )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.readline().decode(errors="replace").strip()
    if message == "ok":
        return EXIT_OK
    if message.startswith("error: "):
        print(f"openaifs: {message[7:]}", file=sys.stderr)
    else:
        code = proc.wait(timeout=30)
        log_file = args.log_file or mcfg.cache_dir / "openaifs.log"  # type: ignore[attr-defined]
        print(f"openaifs: the mount process exited ({code}) before mounting; see {log_file}", file=sys.stderr)
    return EXIT_ERROR


def run_demo(args: argparse.Namespace) -> int:
    from openaifs import demo

    return demo.run(args.mountpoint, wait=not args.no_wait)


def run_umount(args: argparse.Namespace) -> int:
    from openaifs.mount import mounted_fs_type

    mnt = args.mountpoint.resolve()
    if mounted_fs_type(mnt) is None:
        print(f"openaifs: {mnt} is not mounted", file=sys.stderr)
        return EXIT_USAGE
    done = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"openaifs: unmount failed: {done.stderr.strip()}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    args.raw_argv = raw[raw.index("mount") + 1:] if "mount" in raw else []
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return EXIT_OK
