"""Typed values the client hands out: ``FileRecord`` (one File object) and ``ClientStats``.

Parsing is strict about types and lenient about presence: a missing optional field is None, an extra
field is ignored, and a field of the wrong type (or a missing required one) raises
``TransportError("malformed …")``, never a KeyError or TypeError. The server is not trusted to send
well-formed JSON; the FUSE layer must still never crash on it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from openaifs.errors import TransportError


def _malformed(what: str, detail: str) -> TransportError:
    return TransportError(f"malformed {what} from the server: {detail}")


def _req(obj: dict[str, Any], key: str, kind: type, what: str) -> Any:
    if key not in obj:
        raise _malformed(what, f"field {key!r} is missing")
    return _check(obj[key], key, kind, what)


def _opt(obj: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = obj.get(key)
    return None if value is None else _check(value, key, kind, what)


def _check(value: Any, key: str, kind: type, what: str) -> Any:
    # bool is an int in Python; a JSON true where a number belongs is still malformed.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _malformed(what, f"field {key!r} should be {kind.__name__}, got {type(value).__name__}")
    return value


def expect_object(obj: Any, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _malformed(what, f"expected a JSON object, got {type(obj).__name__}")
    return obj


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One File object from the API, typed."""

    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None = None
    status: str | None = None
    status_details: str | None = None

    @classmethod
    def from_json(cls, obj: Any) -> FileRecord:
        # Fast path for a well-formed object, which is every entry of a listing: one pass of exact
        # type checks (``type(x) is int`` also refuses a JSON true): 10,000 records in ~12 ms instead
        # of ~20 ms, time a cold mount waits for. Anything unusual takes the careful path below,
        # which says what is wrong.
        if type(obj) is dict:
            fid, name, purpose = obj.get("id"), obj.get("filename"), obj.get("purpose")
            size, created = obj.get("bytes"), obj.get("created_at")
            expires, status, details = obj.get("expires_at"), obj.get("status"), obj.get("status_details")
            if (type(fid) is str and type(name) is str and type(purpose) is str and type(size) is int
                    and 0 <= size < 2**63 and type(created) is int and (expires is None or type(expires) is int)
                    and (status is None or type(status) is str)
                    and (details is None or type(details) is str)):
                return cls(fid, name, purpose, size, created, expires, status, details)
        return cls._from_json_checked(obj)

    @classmethod
    def _from_json_checked(cls, obj: Any) -> FileRecord:
        what = "file object"
        obj = expect_object(obj, what)
        size = _req(obj, "bytes", int, what)
        if not 0 <= size < 2**63:  # a size no file can have (and no file offset can hold)
            raise _malformed(what, f"impossible size {size}")
        return cls(
            id=_req(obj, "id", str, what),
            filename=_req(obj, "filename", str, what),
            purpose=_req(obj, "purpose", str, what),
            bytes=size,
            created_at=_req(obj, "created_at", int, what),
            expires_at=_opt(obj, "expires_at", int, what),
            status=_opt(obj, "status", str, what),
            status_details=_opt(obj, "status_details", str, what),
        )


@dataclass(frozen=True, slots=True)
class FilePage:
    """One page of ``GET /files``: its records and whether the server says more follow.

    A malformed file object is skipped (``skipped`` says why), so one odd file cannot hide every
    other file of the account, nor keep a mount from starting. A page whose file objects are *all*
    malformed raises instead: the format changed or the body is not a listing, and skipping them all
    would read as "every file was deleted".
    """

    records: list[FileRecord]
    # None when the server omitted ``has_more``; the caller then pages on while pages are non-empty,
    # as the SDK's cursor pager does.
    has_more: bool | None
    # The id of the page's last item as sent, the cursor for the next page even if it was skipped.
    last_id: str | None = None
    skipped: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: Any) -> FilePage:
        what = "file list"
        obj = expect_object(obj, what)
        data = _req(obj, "data", list, what)
        has_more = _opt(obj, "has_more", bool, what)
        records: list[FileRecord] = []
        skipped: list[str] = []
        first_error: TransportError | None = None
        for item in data:
            try:
                records.append(FileRecord.from_json(item))
            except TransportError as exc:
                first_error = first_error or exc
                fid = item.get("id") if isinstance(item, dict) else None
                skipped.append(f"{fid!r}: {exc.message}" if isinstance(fid, str) else exc.message)
        if first_error is not None and not records:
            raise first_error
        last = data[-1].get("id") if data and isinstance(data[-1], dict) else None
        return cls(records, has_more, last if isinstance(last, str) else None, tuple(skipped))


def upload_id_from_json(obj: Any) -> str:
    return _req(expect_object(obj, "upload object"), "id", str, "upload object")


def part_id_from_json(obj: Any) -> str:
    return _req(expect_object(obj, "upload part"), "id", str, "upload part")


def completed_file_from_json(obj: Any) -> FileRecord:
    """The File inside a completed Upload object."""
    what = "upload object"
    obj = expect_object(obj, what)
    status = _opt(obj, "status", str, what)
    if status is not None and status != "completed":
        raise _malformed(what, f"upload status is {status!r} after complete")
    if obj.get("file") is None:
        raise _malformed(what, "a completed upload has no file")
    return FileRecord.from_json(obj["file"])


@dataclass
class ClientStats:
    """What the client did, for the unmount summary. Kinds are the server's route names
    (``files.list``, ``files.content``, ``uploads.parts`` …). Attempts count, including retries."""

    requests: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    bytes_down: int = 0
    bytes_up: int = 0
    # Uploads whose retry found the file an earlier attempt had already created.
    adopted_uploads: int = 0

    def summary(self) -> str:
        reqs = ", ".join(f"{k} {v}" for k, v in sorted(self.requests.items())) or "none"
        line = (
            f"{sum(self.requests.values())} requests ({reqs}); {sum(self.retries.values())} retries; "
            f"{_mib(self.bytes_down)} down, {_mib(self.bytes_up)} up"
        )
        if self.adopted_uploads:
            line += f"; {self.adopted_uploads} uploads found already done after a lost answer"
        return line


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"
