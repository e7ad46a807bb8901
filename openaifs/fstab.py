"""How openaifs plugs into the system: ``-o`` mount options, the mount(8) helper, systemd readiness.

mount(8) starts a filesystem from ``/etc/fstab`` in one of two ways (argv verified on Debian 12 with
util-linux 2.38.1 and fuse3 3.14, see docs/fstab-and-systemd.md):

* type ``openaifs``: ``/sbin/mount.openaifs SPEC DIR [-s] [-f] [-n] [-v] -o OPTS [-t TYPE]``
  (the ``mount.openaifs`` console script, ``main`` below);
* type ``fuse.openaifs``: ``mount.fuse3`` runs ``/bin/sh -c "openaifs SPEC DIR -o OPTS"``, so the
  ``openaifs`` command itself accepts that form (``cli.main`` hands it to ``helper_main``).

Both become ``openaifs mount DIR -o OPTS``, which daemonizes and returns once the mount answers, as
mount(8) expects of a helper. ``parse_options`` is the one table that turns ``-o`` options into the
settings of ``openaifs mount`` (the same names as its flags), drops the generic options that only
mean something to mount(8) or systemd, refuses ``api_key=`` (``-o`` shows in ``ps`` and in
``/proc/mounts``: the key only ever comes from ``api_key_file=``), and passes every other option to
FUSE unchanged. This module never reads a key, only the path to one.

``sd_notify`` tells systemd a ``Type=notify`` service is ready once the mount answers.
"""

from __future__ import annotations

import getopt
import os
import re
import shlex
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Exit codes of a mount helper: mount(8) passes them on as its own (see mount(8), "RETURN CODES").
HELPER_OK = 0
HELPER_USAGE = 1  # incorrect invocation: a bad option, a bad mountpoint, no key
HELPER_MOUNT_FAILED = 32  # the mount itself failed: the server refused the key, was unreachable, ...

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``10G``, ``512M``, ``1.5GiB``, ``1000`` → bytes (powers of 1024); ValueError otherwise."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 500M, 10G)")
    scale = 1024 ** "_kmgt".index(m.group(2).lower() or "_")
    return int(float(m.group(1)) * scale)


def parse_seconds(text: str) -> float:
    """A positive number of seconds; ValueError otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):  # `not >` also catches nan
        raise ValueError(f"must be a number of seconds greater than 0: {text!r}")
    return value


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise ValueError(f"must start with http:// or https://, got {text!r}")
    return text


class OptionError(Exception):
    """A ``-o`` option openaifs cannot take; str() is one line (it never repeats a secret value)."""


SWITCH = None  # a converter of None marks an option that takes no value

# -o name → (the `openaifs mount` setting it sets, how its value is read). Same names as the flags.
OPTIONS: dict[str, tuple[str, Callable[[str], object] | None]] = {
    "api_key_file": ("api_key_file", str),
    "base_url": ("base_url", _url),
    "cache_dir": ("cache_dir", Path),
    "cache_size": ("cache_size", parse_size),
    "metadata_ttl": ("metadata_ttl", parse_seconds),
    "log_file": ("log_file", Path),
    "allow_other": ("allow_other", SWITCH),
    "xattrs": ("xattrs", SWITCH),
    "read_only": ("read_only", SWITCH),
    "ro": ("read_only", SWITCH),
    "debug": ("debug", SWITCH),
}

# Options that mean something to mount(8), systemd or the fstab reader, never to the filesystem.
# `rw` is the default; `dev`/`suid`/`exec` are what mount.fuse3 adds as root and pass through to
# FUSE harmlessly (auto_unmount makes the mount nodev,nosuid anyway).
IGNORED = frozenset({"defaults", "rw", "auto", "noauto", "_netdev", "nofail", "user", "users", "nouser",
                     "owner", "group"})
IGNORED_PREFIXES = ("x-", "comment=", "user=", "helper=")

# Spellings of an inline key we refuse outright, whatever follows the `=`.
_KEY_OPTIONS = frozenset({"api_key", "openai_api_key", "key"})


@dataclass
class ParsedOptions:
    settings: dict[str, object] = field(default_factory=dict)  # `openaifs mount` setting → value
    fuse: list[str] = field(default_factory=list)  # passed to FUSE as written
    ignored: list[str] = field(default_factory=list)


def split_options(text: str) -> list[str]:
    """Split ``a,b="x,y",c`` on commas outside double quotes (mount(8) quotes values that way)."""
    out, current, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append("".join(current))
            current = []
            continue
        current.append(ch)
    out.append("".join(current))
    return [o for o in (s.strip() for s in out) if o]


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def parse_options(groups: Iterable[str], sloppy: bool = False) -> ParsedOptions:
    """Turn ``-o`` arguments (each comma-separated) into settings, FUSE options and ignored ones.

    ``sloppy`` (mount(8)'s ``-s``) drops unknown options instead of passing them to FUSE.
    Later options win over earlier ones, as with mount(8).
    """
    parsed = ParsedOptions()
    for option in (o for group in groups for o in split_options(group)):
        name, separator, raw_value = option.partition("=")
        key = name.strip().replace("-", "_").lower()
        if key in _KEY_OPTIONS:
            raise OptionError(f"-o {name}=... refused: a key in mount options shows in ps and /proc/mounts; "
                              "put it in a file readable only by root and use -o api_key_file=FILE")
        if key in OPTIONS:
            dest, convert = OPTIONS[key]
            parsed.settings[dest] = _convert(name, convert, separator, _unquote(raw_value))
        elif option in IGNORED or option.startswith(IGNORED_PREFIXES):
            parsed.ignored.append(option)
        elif sloppy:
            parsed.ignored.append(option)
        else:
            parsed.fuse.append(option)
    return parsed


def _convert(name: str, convert: Callable[[str], object] | None, separator: str, value: str) -> object:
    if convert is None:  # SWITCH
        if separator:
            raise OptionError(f"-o {name} takes no value (write just {name})")
        return True
    if not value:  # `cache_dir` or `cache_dir=`
        raise OptionError(f"-o {name} needs a value ({name}=...)")
    try:
        return convert(value)
    except ValueError as exc:
        raise OptionError(f"-o {name}: {exc}") from None


# -- the mount(8) helper ------------------------------------------------------------------------

@dataclass(frozen=True)
class HelperCall:
    """One invocation of the helper, as mount(8) or mount.fuse3 makes it."""

    source: str  # the fstab "device" field: a free label, e.g. `openai` (not used to mount)
    mountpoint: str
    options: tuple[str, ...] = ()  # the -o arguments, unsplit
    fake: bool = False  # -f: check everything, mount nothing
    sloppy: bool = False  # -s: drop unknown options
    verbose: bool = False  # -v: say what is being run


HELPER_USAGE_TEXT = "usage: mount.openaifs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]  (see docs/fstab-and-systemd.md)"


def parse_helper_argv(argv: Sequence[str]) -> HelperCall:
    """Parse ``SPEC DIR [-sfnvrw] [-o OPTS] [-t TYPE]`` in any order (mount(8) puts flags after DIR)."""
    try:
        opts, positional = getopt.gnu_getopt(list(argv), "sfnvrwo:t:N:h", ["help"])
    except getopt.GetoptError as exc:
        raise OptionError(f"{exc}; {HELPER_USAGE_TEXT}") from None
    options: list[str] = []
    flags = {"fake": False, "sloppy": False, "verbose": False}
    for flag, value in opts:
        if flag in ("-h", "--help"):
            raise OptionError(HELPER_USAGE_TEXT)
        if flag == "-o":
            options.append(value)
        elif flag == "-r":
            options.append("ro")
        elif flag == "-N":
            raise OptionError("-N (mount in another namespace) is not supported")
        elif flag in ("-f", "-s", "-v"):
            flags[{"-f": "fake", "-s": "sloppy", "-v": "verbose"}[flag]] = True
        # -n (no mtab), -w (read-write, the default) and -t TYPE[.SUBTYPE] change nothing here
    if len(positional) != 2:
        raise OptionError(f"expected SOURCE and MOUNTPOINT, got {len(positional)} argument(s); {HELPER_USAGE_TEXT}")
    return HelperCall(positional[0], positional[1], tuple(options), **flags)


def looks_like_helper_call(argv: Sequence[str], subcommands: Iterable[str]) -> bool:
    """``openaifs SOURCE DIR -o OPTS`` as mount.fuse3 runs it (type ``fuse.openaifs``).

    Needs ``-o``: mount.fuse3 always passes it when run by mount(8) (at least ``rw``), and
    requiring it keeps a mistyped subcommand (``openaifs mout DIR``) an error instead of a mount.
    """
    if len(argv) < 3 or argv[0].startswith("-") or argv[0] in set(subcommands) or argv[1].startswith("-"):
        return False
    return any(a == "-o" or a.startswith("-o") for a in argv[2:])


def join_options(options: Iterable[str]) -> str:
    """The inverse of ``split_options``: quote a value that holds a comma."""
    out = []
    for option in options:
        name, eq, value = option.partition("=")
        if "," in value and not value.startswith('"'):
            value = f'"{value}"'
        out.append(f"{name}{eq}{value}")
    return ",".join(out)


def helper_mount_argv(call: HelperCall) -> list[str]:
    """The ``openaifs mount`` arguments a helper call stands for.

    Raises OptionError for an option openaifs refuses. The options mount(8) alone cares about
    (and, with ``-s``, unknown ones) are left out; the rest stay as written.
    """
    parsed = parse_options(call.options, sloppy=call.sloppy)
    kept = [o for group in call.options for o in split_options(group) if o not in parsed.ignored]
    argv = ["mount", os.path.abspath(call.mountpoint)]
    return argv + ["-o", join_options(kept)] if kept else argv


def helper_main(argv: Sequence[str], prog: str = "mount.openaifs") -> int:
    """Run a helper call: one line on stderr and a mount(8) exit code on failure."""
    from openaifs import cli  # cli imports this module: import at call time

    try:
        call = parse_helper_argv(argv)
        mount_argv = helper_mount_argv(call)
    except OptionError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return HELPER_USAGE
    if call.verbose:
        print(f"{prog}: running openaifs {shlex.join(mount_argv)}", file=sys.stderr)
    code = cli.main(mount_argv, check_only=call.fake)
    return {cli.EXIT_OK: HELPER_OK, cli.EXIT_USAGE: HELPER_USAGE}.get(code, HELPER_MOUNT_FAILED)


def main() -> int:
    """Console script ``mount.openaifs``: what mount(8) runs for fstab type ``openaifs``."""
    return helper_main(sys.argv[1:])


# -- systemd -----------------------------------------------------------------------------------

def sd_notify(message: str) -> bool:
    """Send ``message`` (e.g. ``READY=1``) to systemd's notify socket, if this runs under one.

    NOTIFY_SOCKET is the service manager's channel to this process, not configuration, so it is
    read here rather than in config.py. Returns False when there is no socket or sending failed.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):
        return False
    target = "\0" + address[1:] if address.startswith("@") else address  # "@": abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), target)
    except OSError:
        return False
    return True
