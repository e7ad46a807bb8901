"""Command-line entry point: ``openaifs serve | mount | umount | demo``.

Owns argument parsing and turning user mistakes into one line on stderr with a documented exit
code. It holds no policy of its own: each subcommand hands a config to the module that does the work.
Anything unexpected becomes one line too (the traceback only with ``--debug``).

``openaifs SOURCE MOUNTPOINT -o OPTIONS`` (no subcommand) is how mount.fuse3 runs us for fstab type
``fuse.openaifs``: it goes to ``fstab.helper_main``, like the ``mount.openaifs`` console script.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Callable
from pathlib import Path

from openaifs import __version__, fstab

# Exit codes (documented in README.md).
EXIT_OK = 0
EXIT_ERROR = 1  # an operation failed (server unreachable, mount failed, ...)
EXIT_USAGE = 2  # a user mistake in flags, arguments or environment


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (exit 2), like every other error here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


OVERVIEW_EXAMPLES = """examples:
  openaifs demo                                   # a generated account, mounted at ./openai
  OPENAI_API_KEY=sk-... openaifs mount ~/openai   # your account; returns once mounted
  openaifs umount ~/openai
  openaifs serve --port 8080                      # a local OpenAI-compatible Files API
  openaifs mount --help                           # every mount flag and -o option

In /etc/fstab (type fuse.openaifs; see docs/fstab-and-systemd.md):
  openai  /mnt/openai  fuse.openaifs  _netdev,noauto,api_key_file=/etc/openaifs.key  0 0

Exit codes: 0 success, 1 an operation failed, 2 a usage mistake (mount helpers: 0, 1 usage, 32 failure).
"""

MOUNT_DESCRIPTION = """\
Mount the OpenAI account's files as a directory. The key comes from OPENAI_API_KEY or
--api-key-file (never from the command line), the server from --base-url or OPENAI_BASE_URL,
optional OpenAI-Organization / OpenAI-Project headers from OPENAI_ORG_ID / OPENAI_PROJECT_ID.
Daemonizes and returns once the mount answers, unless -f.
"""

MOUNT_EXAMPLES = f"""-o options (comma-separated, may repeat; later ones win), the same settings as the flags:
  api_key_file=FILE  base_url=URL  cache_dir=DIR  cache_size=SIZE  metadata_ttl=SECONDS
  log_file=FILE  allow_other  xattrs  read_only (or ro)  debug
{textwrap.fill(
    "Ignored (for mount(8) and systemd): " + " ".join([*sorted(fstab.IGNORED), *(p + "*" for p in
    fstab.IGNORED_PREFIXES)]) + ". api_key= is refused. Anything else goes to FUSE as written.",
    width=98, initial_indent="  ", subsequent_indent="  ")}

examples:
  OPENAI_API_KEY=sk-... openaifs mount ~/openai
  openaifs mount --api-key-file ~/.openai-key --xattrs ~/openai
  openaifs mount -o api_key_file=/etc/openaifs.key,cache_size=20G,allow_other /mnt/openai
  OPENAI_API_KEY=local openaifs mount --base-url http://127.0.0.1:8080/v1 -f /mnt/openai

A daemonized mount logs to CACHE_DIR/openaifs.log. Exit codes: 0 mounted (or, with -f, unmounted
cleanly), 1 the mount failed (key refused, server unreachable, ...), 2 a usage mistake.
"""

UMOUNT_EXAMPLES = """examples:
  openaifs umount ~/openai
  fusermount3 -u ~/openai          # the same, without openaifs
  umount /mnt/openai               # as root, e.g. for an fstab mount

Exit codes: 0 unmounted, 1 unmounting failed (e.g. busy), 2 not an openaifs mount.
"""

DEMO_EXAMPLES = """examples:
  openaifs demo                    # mounts at ./openai; Ctrl-C unmounts and stops the server
  openaifs demo /tmp/openai
  openaifs demo /tmp/openai --no-wait   # mount, show the listing, clean up, exit
"""

SUBCOMMANDS = ("serve", "mount", "umount", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="openaifs",
        description="Mount an OpenAI account's files as a directory, or serve a local Files API.",
        epilog=OVERVIEW_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"openaifs {__version__}")
    parser.add_argument("--debug", dest="trace", action="store_true",
                        help="print the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from openaifs.server import flags as server_flags

    serve = sub.add_parser(
        "serve",
        help="run the local OpenAI-compatible Files API server",
        description=server_flags.DESCRIPTION,
        epilog=server_flags.EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    server_flags.add_arguments(serve)
    serve.set_defaults(run=run_serve)

    mount = sub.add_parser(
        "mount",
        help="mount the account's files at MOUNTPOINT",
        description=MOUNT_DESCRIPTION,
        epilog=MOUNT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_mount_arguments(mount)
    mount.set_defaults(run=run_mount)

    umount = sub.add_parser(
        "umount",
        help="unmount MOUNTPOINT",
        description="Unmount an openaifs mount; its process then exits. Files still open keep it busy.",
        epilog=UMOUNT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    umount.add_argument("mountpoint", type=Path)
    umount.set_defaults(run=run_umount)

    demo = sub.add_parser(
        "demo",
        help="serve a generated account locally and mount it (no API key needed)",
        description="Start `openaifs serve` on 127.0.0.1 with generated sample files, mount it, show "
        "what is there, and wait for Ctrl-C; then unmount and stop the server.",
        epilog=DEMO_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("mountpoint", type=Path, nargs="?", default=Path("openai"),
                      help="where to mount (default: ./openai, created if missing)")
    demo.add_argument("--no-wait", action="store_true",
                      help="unmount and stop right after showing the listing (for scripts and tests)")
    demo.set_defaults(run=run_demo)
    return parser


def _arg(convert: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse ``type=`` from a converter that raises ValueError with a readable message."""

    def parse(text: str) -> object:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = convert.__name__
    return parse


def add_mount_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", type=Path, help="an existing empty directory")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay attached, log to stderr (default: daemonize, return once mounted)")
    p.add_argument("--api-key-file", metavar="FILE", help="read the API key from FILE (instead of OPENAI_API_KEY)")
    p.add_argument("--base-url", metavar="URL", default=None,
                   help="the API server (default: OPENAI_BASE_URL, else https://api.openai.com/v1)")
    p.add_argument("--metadata-ttl", type=_arg(fstab.parse_seconds), default=60.0, metavar="SECONDS",
                   help="how long a listing is fresh (default 60)")
    p.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                   help="content cache, upload spool and failed-uploads/ (default ~/.cache/openaifs)")
    p.add_argument("--cache-size", type=_arg(fstab.parse_size), default=None, metavar="SIZE",
                   help="bound of the content cache, e.g. 500M, 10G (default 10G)")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users access the mount (non-root: needs user_allow_other in /etc/fuse.conf)")
    p.add_argument("--xattrs", action="store_true", help="expose user.openai.* extended attributes")
    p.add_argument("--read-only", action="store_true", help="refuse every write (EROFS)")
    p.add_argument("--debug", action="store_true", help="verbose logs, FUSE debug output, tracebacks")
    p.add_argument("--log-file", type=Path, default=None, metavar="FILE",
                   help="log here (default: stderr with -f, CACHE_DIR/openaifs.log as a daemon)")
    p.add_argument("-o", dest="fuse_options", action="append", default=[], metavar="OPTIONS",
                   help="mount options, comma-separated: the settings above by name (see below) or FUSE options")
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)


def _setup_logging(args: argparse.Namespace, log_file: Path | None) -> None:
    level = logging.DEBUG if args.debug else logging.INFO
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        # 0600 before the first line: logs name the user's files (never the key, but still theirs).
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
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


class UsageError(Exception):
    """A user mistake found after parsing; str() is the one line to print."""


def apply_mount_options(args: argparse.Namespace) -> None:
    """Fold ``-o`` options into the flags they name; what is left goes to FUSE."""
    try:
        parsed = fstab.parse_options(args.fuse_options)
    except fstab.OptionError as exc:
        raise UsageError(str(exc)) from None
    for dest, value in parsed.settings.items():
        setattr(args, dest, value)
    args.fuse_options = parsed.fuse


def _mount_configs(args: argparse.Namespace) -> tuple[object, object]:
    from openaifs.config import ConfigError, MountConfig, client_config_from_env, default_cache_dir

    try:
        ccfg = client_config_from_env(args.api_key_file, base_url=args.base_url)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    kwargs = {"cache_size": args.cache_size} if args.cache_size is not None else {}
    mcfg = MountConfig(
        mountpoint=args.mountpoint.resolve(),
        cache_dir=(args.cache_dir or default_cache_dir()).resolve(),
        metadata_ttl=args.metadata_ttl,
        allow_other=args.allow_other,
        xattrs=args.xattrs,
        read_only=args.read_only,
        debug=args.debug,
        fuse_options=tuple(args.fuse_options),
        **kwargs,
    )
    return mcfg, ccfg


def run_serve(args: argparse.Namespace) -> int:
    from openaifs.server import cli as server_cli  # uvicorn and the app: only when serving

    return server_cli.run(args)


def run_mount(args: argparse.Namespace) -> int:
    from openaifs.mount import MountError, check_mountpoint

    try:
        apply_mount_options(args)
        mcfg, ccfg = _mount_configs(args)
        check_mountpoint(mcfg.mountpoint)  # type: ignore[attr-defined]
    except (UsageError, MountError) as exc:
        print(f"openaifs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "check_only", False):  # mount.openaifs -f: everything but the mount itself
        return EXIT_OK
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
    notify_systemd = args.ready_fd is None  # a daemon child is not the process systemd watches

    def ready(reason: str | None) -> None:
        if reason is not None:
            failure.append(reason)
            logging.getLogger("openaifs").error("%s", reason)
        elif notify_systemd:
            fstab.sd_notify(f"READY=1\nSTATUS=mounted at {mcfg.mountpoint}")  # type: ignore[attr-defined]
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
    fstype = mounted_fs_type(mnt)
    if fstype is None:
        print(f"openaifs: {mnt} is not mounted", file=sys.stderr)
        return EXIT_USAGE
    if fstype != "fuse.openaifs":
        print(f"openaifs: {mnt} is not an openaifs mount (it is {fstype}); use umount(8)", file=sys.stderr)
        return EXIT_USAGE
    done = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        hint = f" (a process still uses it: see fuser -vm {mnt})" if "busy" in reason.lower() else ""
        print(f"openaifs: unmounting {mnt} failed: {reason}{hint}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def main(argv: list[str] | None = None, *, check_only: bool = False) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if fstab.looks_like_helper_call(raw, SUBCOMMANDS):  # mount.fuse3, for fstab type fuse.openaifs
        return fstab.helper_main(raw, prog="openaifs")
    parser = build_parser()
    args = parser.parse_args(raw)
    args.raw_argv = raw[raw.index("mount") + 1:] if "mount" in raw else []
    args.check_only = check_only
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # the last line of defence: one line, never a traceback by surprise
        return _unexpected(exc, args.trace or getattr(args, "debug", False))


def _unexpected(exc: Exception, debug: bool) -> int:
    if logging.getLogger().handlers:  # a mount logs to a file: keep the whole story there
        logging.getLogger("openaifs").error("unexpected error", exc_info=exc)
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    text = " ".join(str(exc).split())  # one line, whatever the message holds
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    hint = "" if debug else "; run with --debug for details"
    print(f"openaifs: unexpected error: {detail}{hint}", file=sys.stderr)
    return EXIT_ERROR
