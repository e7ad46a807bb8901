"""Request checks of the Files/Uploads API, and the streaming JSONL checker.

Pure functions over already-decoded values: each returns the checked value or raises the
``ApiError`` the hosted API would answer (``apierror``). ``JsonlChecker`` validates content line by
line as it streams to disk, in bounded memory, so ``batch`` / ``fine-tune`` uploads can be refused
with the number of the first bad line without ever loading the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from openaifs.server import apierror
from openaifs.server.settings import MAX_EXPIRY_SECONDS, MAX_PAGE_SIZE, MIN_EXPIRY_SECONDS

# POST /files accepts these purposes (FILES_API.md §3.1, §6).
UPLOAD_PURPOSES: frozenset[str] = frozenset(apierror.UPLOAD_PURPOSES_MESSAGE_ORDER)

# Lines longer than this are checked only by their first and last non-blank byte ('{' ... '}'):
# a JSONL line may legitimately be large (base64 images in batch requests), and holding it whole
# would make memory grow with the input.
MAX_PARSED_LINE = 8 * 1024 * 1024
_BLANK = b" \t\r\n"


def check_purpose(value: str) -> str:
    if value not in UPLOAD_PURPOSES:
        raise apierror.bad_purpose(value)
    return value


def check_expiry_seconds(raw: object, param: str) -> int:
    """``expires_after[seconds]``: an integer in 3600..2592000 (FILES_API.md §3.1)."""
    if isinstance(raw, str):
        try:
            raw = int(raw.strip())
        except ValueError:
            raise apierror.invalid_type(param, "an integer", raw) from None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise apierror.invalid_type(param, "an integer", raw)
    if not MIN_EXPIRY_SECONDS <= raw <= MAX_EXPIRY_SECONDS:
        raise apierror.invalid_value(
            param,
            f"expected a value between {MIN_EXPIRY_SECONDS} and {MAX_EXPIRY_SECONDS}, but got {raw} instead.",
        )
    return raw


def check_expiry_anchor(raw: object, param: str) -> None:
    if raw != "created_at":
        raise apierror.invalid_value(param, f"expected 'created_at', but got {raw!r} instead.")


def expiry_from_form(fields: Mapping[str, str]) -> int | None:
    """Seconds from the bracket fields ``expires_after[anchor]`` / ``expires_after[seconds]``."""
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor is None:
        raise apierror.missing_param("expires_after[anchor]")
    if seconds is None:
        raise apierror.missing_param("expires_after[seconds]")
    check_expiry_anchor(anchor, "expires_after[anchor]")
    return check_expiry_seconds(seconds, "expires_after[seconds]")


def expiry_from_json(raw: object) -> int | None:
    """Seconds from a JSON ``expires_after`` object (POST /uploads)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise apierror.invalid_type("expires_after", "an object", raw)
    for key in raw:
        if key not in ("anchor", "seconds"):
            raise apierror.unexpected_field(f"expires_after.{key}")
    if "anchor" not in raw:
        raise apierror.missing_param("expires_after.anchor")
    if "seconds" not in raw:
        raise apierror.missing_param("expires_after.seconds")
    check_expiry_anchor(raw["anchor"], "expires_after.anchor")
    if isinstance(raw["seconds"], str):
        raise apierror.invalid_type("expires_after.seconds", "an integer", raw["seconds"])
    return check_expiry_seconds(raw["seconds"], "expires_after.seconds")


def list_params(query: Mapping[str, str]) -> tuple[str | None, int, bool, str | None]:
    """``purpose``, ``limit`` (1..10000), descending?, ``after`` of GET /files (FILES_API.md §3.2)."""
    for key in query:
        if key not in ("purpose", "limit", "order", "after"):
            raise apierror.bad_request(f"Unrecognized request argument supplied: {key}", param=key)
    limit = MAX_PAGE_SIZE
    if "limit" in query:
        limit = _int_param("limit", query["limit"])
        if limit < 1:
            raise apierror.ApiError(
                400, f"Invalid 'limit': integer below minimum value. Expected a value >= 1, but got {limit} "
                "instead.", param="limit", code="integer_below_min_value")
        if limit > MAX_PAGE_SIZE:
            raise apierror.ApiError(
                400, f"Invalid 'limit': integer above maximum value. Expected a value <= {MAX_PAGE_SIZE}, "
                f"but got {limit} instead.", param="limit", code="integer_above_max_value")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise apierror.invalid_value("order", f"expected one of 'asc' or 'desc', but got '{order}' instead.")
    return query.get("purpose"), limit, order == "desc", query.get("after") or None


def _int_param(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise apierror.invalid_type(name, "an integer", raw) from None


def json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise apierror.invalid_json_body() from None
    if not isinstance(value, dict):
        raise apierror.invalid_type("body", "an object", value)
    return value


def only_keys(body: Mapping[str, Any], allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    """additionalProperties: false plus required keys, checked in the spec's order."""
    for key in body:
        if key not in allowed:
            raise apierror.unexpected_field(key)
    for key in required:
        if key not in body:
            raise apierror.missing_param(key)


def string_param(body: Mapping[str, Any], name: str) -> str:
    value = body[name]
    if not isinstance(value, str):
        raise apierror.invalid_type(name, "a string", value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape such as "\ud800"
        raise apierror.invalid_value(name, "the string is not valid Unicode.") from None
    return value


def int_param(body: Mapping[str, Any], name: str) -> int:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise apierror.invalid_type(name, "an integer", value)
    return value


class JsonlChecker:
    """Feed bytes in order; ``bad_line`` is the 1-based number of the first line that is not a
    JSON object (blank lines are allowed), or None. Stops looking once a bad line is found."""

    def __init__(self) -> None:
        self.bad_line: int | None = None
        self._line_no = 0
        self._buf = bytearray()
        # For a line longer than MAX_PARSED_LINE only its first and last non-blank bytes are kept.
        self._oversized = False
        self._first = b""
        self._last = b""

    def feed(self, data: bytes) -> None:
        if self.bad_line is not None:
            return
        first, *rest = data.split(b"\n")
        self._extend(first)
        for piece in rest:
            self._end_line()
            if self.bad_line is not None:
                return
            self._extend(piece)

    def finish(self) -> int | None:
        """Check the last line (which may lack a newline); returns ``bad_line``."""
        if self.bad_line is None and (self._buf or self._oversized):
            self._end_line()
        return self.bad_line

    def message(self) -> str:
        return f"Invalid file format: line {self.bad_line} is not a JSON object"

    def _extend(self, piece: bytes) -> None:
        if self._oversized:
            self._note_ends(piece)
            return
        self._buf += piece
        if len(self._buf) > MAX_PARSED_LINE:
            self._oversized = True
            self._note_ends(bytes(self._buf))
            self._buf = bytearray()

    def _note_ends(self, piece: bytes) -> None:
        stripped = piece.strip(_BLANK)
        if stripped:
            self._first = self._first or stripped[:1]
            self._last = stripped[-1:]

    def _end_line(self) -> None:
        self._line_no += 1
        if self._oversized:
            ok = self._first == b"{" and self._last == b"}"
        else:
            ok = _is_json_object(bytes(self._buf))
        self._buf = bytearray()
        self._oversized = False
        self._first = self._last = b""
        if not ok:
            self.bad_line = self._line_no


def _is_json_object(line: bytes) -> bool:
    stripped = line.strip(_BLANK)
    if not stripped:
        return True  # blank lines (and a trailing newline) are fine
    if stripped[:1] != b"{":
        return False
    try:
        return isinstance(json.loads(stripped), dict)
    except (ValueError, UnicodeDecodeError):
        return False
