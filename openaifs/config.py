"""The one configuration of openaifs: frozen dataclasses built from flags and the environment.

This is the only module that reads ``os.environ``. Each component receives its own slice
(``ClientConfig`` for the HTTP client, ``MountConfig`` for the filesystem). Every default says why
it is what it is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from openaifs import __version__

DEFAULT_BASE_URL = "https://api.openai.com/v1"

# The nine purposes the API documents; each is always a directory, even when empty.
KNOWN_PURPOSES: tuple[str, ...] = (
    "assistants",
    "assistants_output",
    "batch",
    "batch_output",
    "evals",
    "fine-tune",
    "fine-tune-results",
    "user_data",
    "vision",
)
# Purposes the server creates itself; uploads into them are refused by the API.
SERVER_ONLY_PURPOSES: frozenset[str] = frozenset({"assistants_output", "batch_output", "fine-tune-results"})

MiB = 1024 * 1024


class ConfigError(Exception):
    """A user mistake in flags, environment or key file; str() is one line for stderr."""


@dataclass(frozen=True)
class ClientConfig:
    base_url: str = DEFAULT_BASE_URL
    # repr=False: the key must never reach a log line or a traceback through a repr.
    api_key: str = field(default="", repr=False)
    organization: str | None = None
    project: str | None = None
    user_agent: str = f"openaifs/{__version__}"
    # 10 s to connect: loopback answers in microseconds, the hosted API in well under a second;
    # longer means the network is gone and the caller should hear about it.
    connect_timeout: float = 10.0
    # 60 s between bytes: the hosted API can pause on large listings, but a read that waits longer
    # than this on a stalled socket should be retried rather than hang a FUSE request.
    read_timeout: float = 60.0
    # 16 connections: enough for several chunk downloads plus parallel upload parts without
    # tripping the hosted API's per-key connection limits.
    max_connections: int = 16
    # 6 attempts spans ~15 s of exponential backoff, which rides out typical 5xx bursts and 429s.
    max_attempts: int = 6
    # No single logical call (all its retries included) may take longer than this: FUSE callers
    # are blocked meanwhile and pyfuse3.terminate() waits for handlers in flight.
    total_deadline: float = 120.0
    # POST /files accepts up to 512 MB; above this the Uploads API is used.
    single_upload_limit: int = 512 * 1000 * 1000
    # The Uploads API accepts parts of up to 64 MB; the SDK sends 64 MiB parts.
    part_size: int = 64 * MiB
    # 4 parts in flight: saturates a fast link without holding more than 4 parts' sockets open.
    part_concurrency: int = 4
    # The largest page the list endpoint serves.
    list_page_size: int = 10000
    # A file written in order starts uploading once it holds this much (uploads.py): below it the
    # overlap saves little, and every stream holds a connection while its file is written.
    stream_upload_from: int = 8 * MiB


@dataclass(frozen=True)
class MountConfig:
    mountpoint: Path
    cache_dir: Path
    # 60 s: a new file made elsewhere shows up within a minute, while `ls`, `find` and file browsers
    # are served from memory; this mount's own uploads and deletes show at once regardless.
    metadata_ttl: float = 60.0
    # 10 GiB of cached content by default: large enough for typical batch/fine-tune sets.
    cache_size: int = 10 * 1024 * MiB
    allow_other: bool = False
    xattrs: bool = False
    read_only: bool = False
    debug: bool = False
    fuse_options: tuple[str, ...] = ()


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "/root")) / ".cache")
    return Path(base) / "openaifs"


def read_key_file(path: str | os.PathLike[str]) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read API key file {path}: {exc.strerror}") from None
    key = text.strip()
    if not key:
        raise ConfigError(f"API key file {path} is empty")
    return key


_ENV_KNOBS: tuple[tuple[str, str, type], ...] = (
    ("OPENAIFS_SINGLE_UPLOAD_LIMIT", "single_upload_limit", int),
    ("OPENAIFS_PART_SIZE", "part_size", int),
    ("OPENAIFS_MAX_ATTEMPTS", "max_attempts", int),
    ("OPENAIFS_TOTAL_DEADLINE", "total_deadline", float),
    ("OPENAIFS_CONNECT_TIMEOUT", "connect_timeout", float),
    ("OPENAIFS_READ_TIMEOUT", "read_timeout", float),
    ("OPENAIFS_STREAM_UPLOAD_FROM", "stream_upload_from", int),
)


def _knob(name: str, raw: str, kind: type) -> int | float:
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"{name} must be greater than 0, got {raw!r}")
    return value  # type: ignore[no-any-return]


def client_config_from_env(
    api_key_file: str | None = None, env: Mapping[str, str] | None = None, base_url: str | None = None,
    **overrides: object,
) -> ClientConfig:
    """Build the client slice from ``OPENAI_*`` variables, an optional key file, and overrides.

    ``base_url`` (``--base-url``) wins over ``OPENAI_BASE_URL``.
    """
    env = os.environ if env is None else env
    key = read_key_file(api_key_file) if api_key_file else env.get("OPENAI_API_KEY", "").strip()
    if not key:
        raise ConfigError("no API key: set OPENAI_API_KEY or pass --api-key-file FILE")
    source = "--base-url" if base_url else "OPENAI_BASE_URL"
    base_url = (base_url or env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{source} must start with http:// or https://, got {base_url!r}")
    # Tuning knobs without flags, for tests and for people on unusual links:
    #   OPENAIFS_SINGLE_UPLOAD_LIMIT, OPENAIFS_PART_SIZE  bytes (tests exercise the Uploads API with
    #       small files);
    #   OPENAIFS_MAX_ATTEMPTS  attempts per logical call (>= 1);
    #   OPENAIFS_TOTAL_DEADLINE, OPENAIFS_CONNECT_TIMEOUT, OPENAIFS_READ_TIMEOUT  seconds (> 0): how long
    #       a caller waits for an unreachable or silent server (the reliability tests lower them so
    #       "server gone" fails in seconds, not minutes);
    #   OPENAIFS_STREAM_UPLOAD_FROM  bytes a file written in order holds before it starts uploading
    #       while still being written; above the single upload limit it never does.
    for name, attr, kind in _ENV_KNOBS:
        raw = env.get(name, "").strip()
        if raw:
            overrides.setdefault(attr, _knob(name, raw, kind))
    return ClientConfig(
        base_url=base_url,
        api_key=key,
        organization=env.get("OPENAI_ORG_ID") or None,
        project=env.get("OPENAI_PROJECT_ID") or None,
        **overrides,  # type: ignore[arg-type]
    )


# The local server's expected key: from this variable or `openaifs serve --api-key-file`, never a
# flag (it would show in `ps`). Unset means the server accepts any bearer, like a dev sandbox.
SERVER_KEY_VARIABLE = "OPENAIFS_SERVER_API_KEY"


def server_api_key(api_key_file: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    if api_key_file:
        return read_key_file(api_key_file)
    return env.get(SERVER_KEY_VARIABLE, "").strip() or None
