"""Runtime limits and hosted-API quirks of the local server, and its adjustable clock.

``Settings`` starts from the ``openaifs serve`` flags and can be changed while the server runs by
``PUT /_admin/config`` (partial updates, validated here). ``Clock`` is the only source of "now"
for timestamps and expiry, so ``POST /_admin/clock`` can move time forward without sleeping.
This module does no I/O.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

# Hosted limits (FILES_API.md §4). "MB"/"GB" are read as 10^6/10^9 bytes, except the part size:
# the SDK's default part is 64 MiB and the contract records that it is accepted in practice, so the
# part limit is 64 MiB; a 64*10^6 limit would break `uploads.upload_file_chunked` with defaults.
MAX_FILE_BYTES = 512 * 1000 * 1000
MAX_PART_BYTES = 64 * 1024 * 1024
MAX_UPLOAD_BYTES = 8 * 1000 * 1000 * 1000
MAX_PAGE_SIZE = 10000

# Purposes whose downloads the hosted API refuses (FILES_API.md §6): only the two with strong
# evidence; `fine-tune` and `evals` rest on one forum table and stay downloadable.
DEFAULT_REFUSE_DOWNLOADS: tuple[str, ...] = ("assistants", "user_data")
# Purposes whose content must be JSONL (FILES_API.md §4: batch and fine-tune accept .jsonl only).
JSONL_PURPOSES: frozenset[str] = frozenset({"batch", "fine-tune"})

# Expiry rules (FILES_API.md §3.1, §4).
BATCH_DEFAULT_EXPIRY = 30 * 24 * 3600  # batch files expire 30 days after creation by default
MIN_EXPIRY_SECONDS = 3600
MAX_EXPIRY_SECONDS = 2592000
UPLOAD_LIFETIME = 3600  # an Upload object expires one hour after creation


class SettingsError(ValueError):
    """An invalid admin configuration update; str() says which key and why."""


@dataclass
class Settings:
    max_file_bytes: int = MAX_FILE_BYTES
    max_part_bytes: int = MAX_PART_BYTES
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    # Caps `limit` silently, so clients see short pages with has_more=true (FILES_API.md §3.2 history).
    max_page_size: int = MAX_PAGE_SIZE
    refuse_downloads: list[str] = field(default_factory=lambda: list(DEFAULT_REFUSE_DOWNLOADS))
    validate_jsonl: bool = True

    _INT_KEYS = ("max_file_bytes", "max_part_bytes", "max_upload_bytes", "max_page_size")

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, changes: object) -> None:
        """Apply a partial update (all keys checked before any is applied)."""
        if not isinstance(changes, dict):
            raise SettingsError("config must be a JSON object")
        staged: dict[str, Any] = {}
        for key, value in changes.items():
            if key in self._INT_KEYS:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise SettingsError(f"{key} must be a positive integer")
            elif key == "refuse_downloads":
                if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                    raise SettingsError("refuse_downloads must be a list of purposes")
                value = list(value)
            elif key == "validate_jsonl":
                if not isinstance(value, bool):
                    raise SettingsError("validate_jsonl must be true or false")
            else:
                raise SettingsError(f"unknown config key {key!r}")
            staged[key] = value
        for key, value in staged.items():
            setattr(self, key, value)

    def must_be_jsonl(self, purpose: str) -> bool:
        return self.validate_jsonl and purpose in JSONL_PURPOSES


class Clock:
    """Wall-clock seconds plus an offset that only ever grows (``advance``)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> int:
        return int(time.time() + self.offset)

    def advance(self, seconds: float) -> int:
        if seconds < 0:
            raise SettingsError("the clock only moves forward")
        self.offset += seconds
        return self.now()


def default_expiry(purpose: str, created_at: int, expires_after: int | None) -> int | None:
    """expires_at for a new file: explicit seconds win; batch files default to 30 days."""
    if expires_after is not None:
        return created_at + expires_after
    if purpose == "batch":
        return created_at + BATCH_DEFAULT_EXPIRY
    return None
