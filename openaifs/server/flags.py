"""The flags of ``openaifs serve``, kept apart from uvicorn and the app.

``openaifs mount`` builds the same argument parser as ``serve``; importing only this module keeps
uvicorn, Starlette and the server's own modules out of every mount's start-up (they cost a cold
``ls`` tens of milliseconds). ``cli.run`` is imported only when ``serve`` actually runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from openaifs.config import SERVER_KEY_VARIABLE
from openaifs.server.settings import MAX_FILE_BYTES, MAX_PAGE_SIZE, MAX_PART_BYTES, MAX_UPLOAD_BYTES, Settings

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
