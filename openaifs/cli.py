"""Command-line entry point: ``openaifs serve | mount | umount | demo``.

Owns argument parsing and turning user mistakes into one line on stderr with a documented exit
code. It holds no policy of its own: each subcommand hands a config to the module that does the work.
"""

from __future__ import annotations

import argparse
import sys

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return EXIT_OK
