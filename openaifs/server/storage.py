"""Metadata of files, uploads and parts in SQLite (WAL), next to the blob files of ``blobs``.

Owns the database schema and every query. Rules it keeps:

* A file row is inserted only after its blob was committed (``BlobWriter.commit``), so a listed
  file always has complete content. ``synchronous=NORMAL`` under WAL may lose the last commits on
  power loss but never corrupts; a lost commit leaves an orphan blob, removed at the next start.
* Deleted and expired files keep their row as a tombstone (``deleted=1`` / ``expires_at`` past),
  so a pagination cursor naming them still has a place in the order; they are never shown.
* Order is ``created_at`` then ``seq`` (insertion order): a stable total order for cursors even
  when many files share a second.

One connection, guarded by a lock: every method is short and blocking, and callers on the event
loop run them in a worker thread. Nothing here knows about HTTP.
"""

from __future__ import annotations

import enum
import secrets
import sqlite3
import string
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openaifs.server.blobs import BlobStore

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    """``file-`` / ``upload_`` / ``part_`` + a base62 token (FILES_API.md §5)."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    status TEXT NOT NULL,
    status_details TEXT,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS files_order ON files (created_at, seq);
CREATE INDEX IF NOT EXISTS files_purpose_order ON files (purpose, created_at, seq);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    mime_type TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    file_expires_after INTEGER,
    file_id TEXT
);
CREATE TABLE IF NOT EXISTS parts (
    id TEXT PRIMARY KEY,
    upload_id TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS parts_upload ON parts (upload_id);
"""

_FILE_COLUMNS = "id, filename, purpose, bytes, created_at, expires_at, status, status_details"
_UPLOAD_COLUMNS = "id, filename, purpose, bytes, mime_type, created_at, expires_at, status, " \
                  "file_expires_after, file_id"
_LIVE_FILE = (f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ? AND deleted = 0 "
              "AND (expires_at IS NULL OR expires_at > ?)")


class Busy(enum.Enum):
    BUSY = "busy"


BUSY = Busy.BUSY


@dataclass(frozen=True, slots=True)
class FileRow:
    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None = None
    status: str = "processed"
    status_details: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The File object (FILES_API.md §2.1); optional fields are sent as null, like the hosted API."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": self.status,
            "status_details": self.status_details,
        }


@dataclass(frozen=True, slots=True)
class UploadRow:
    id: str
    filename: str
    purpose: str
    bytes: int
    mime_type: str
    created_at: int
    expires_at: int
    status: str = "pending"
    file_expires_after: int | None = None
    file_id: str | None = None

    def effective_status(self, now: int) -> str:
        """A pending Upload past its hour reports (and behaves as) ``expired``."""
        if self.status == "pending" and now >= self.expires_at:
            return "expired"
        return self.status

    def to_json(self, now: int, file: FileRow | None = None) -> dict[str, Any]:
        """The Upload object (FILES_API.md §2.4); ``file`` is the File once completed, else null."""
        return {
            "id": self.id,
            "object": "upload",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": self.effective_status(now),
            "file": file.to_json() if file is not None else None,
        }


@dataclass(frozen=True, slots=True)
class PartRow:
    id: str
    upload_id: str
    bytes: int
    created_at: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "upload.part", "created_at": self.created_at,
                "upload_id": self.upload_id}


class UnknownCursor(LookupError):
    """``after`` names an id this server never issued."""


class Storage:
    """SQLite metadata plus the blob store, under one data directory."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.blobs = BlobStore(root)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(root / "meta.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._sweep()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _sweep(self) -> None:
        files = {r[0] for r in self._db.execute("SELECT id FROM files WHERE deleted = 0")}
        parts = {r[0] for r in self._db.execute("SELECT id FROM parts")}
        self.blobs.sweep_orphans(files, parts)

    # -- files ---------------------------------------------------------------------------------------

    def insert_file(self, row: FileRow) -> None:
        with self._lock:
            self._db.execute(
                f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _file_values(row)
            )

    def insert_files(self, rows: list[FileRow]) -> None:
        """Many rows in one transaction (the bulk admin route: 100,000 files in seconds)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [_file_values(r) for r in rows],
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def get_file(self, file_id: str, now: int) -> FileRow | None:
        """The live file (not deleted, not expired), or None."""
        with self._lock:
            found = self._db.execute(_LIVE_FILE, (file_id, now)).fetchone()
        return FileRow(*found) if found else None

    def try_get_file(self, file_id: str, now: int) -> FileRow | None | Busy:
        """``get_file`` if the connection is free right now, else ``BUSY`` (never waits): lets the
        event loop serve the download hot path without a thread hop when nobody else is querying."""
        if not self._lock.acquire(blocking=False):
            return BUSY
        try:
            found = self._db.execute(_LIVE_FILE, (file_id, now)).fetchone()
        finally:
            self._lock.release()
        return FileRow(*found) if found else None

    def delete_file(self, file_id: str, now: int) -> bool:
        """Tombstone a live file and remove its blob; False if there was no such live file."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE files SET deleted = 1 WHERE id = ? AND deleted = 0 "
                "AND (expires_at IS NULL OR expires_at > ?)",
                (file_id, now),
            )
            changed = cur.rowcount == 1
        if changed:
            self.blobs.remove_file(file_id)
        return changed

    def list_files(
        self, now: int, *, purpose: str | None, descending: bool, limit: int, after: str | None
    ) -> tuple[list[FileRow], bool]:
        """One page of live files in order, and whether more follow it."""
        where = ["deleted = 0", "(expires_at IS NULL OR expires_at > ?)"]
        args: list[Any] = [now]
        if purpose is not None:
            where.append("purpose = ?")
            args.append(purpose)
        with self._lock:
            if after is not None:
                cursor = self._db.execute(
                    "SELECT created_at, seq FROM files WHERE id = ?", (after,)).fetchone()
                if cursor is None:
                    raise UnknownCursor(after)
                where.append(f"(created_at, seq) {'<' if descending else '>'} (?, ?)")
                args.extend(cursor)
            direction = "DESC" if descending else "ASC"
            rows = self._db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE {' AND '.join(where)} "
                f"ORDER BY created_at {direction}, seq {direction} LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
        return [FileRow(*r) for r in rows[:limit]], len(rows) > limit

    # -- uploads and parts ---------------------------------------------------------------------------

    def insert_upload(self, row: UploadRow) -> None:
        with self._lock:
            self._db.execute(
                f"INSERT INTO uploads ({_UPLOAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.id, row.filename, row.purpose, row.bytes, row.mime_type, row.created_at,
                 row.expires_at, row.status, row.file_expires_after, row.file_id),
            )

    def get_upload(self, upload_id: str) -> UploadRow | None:
        with self._lock:
            found = self._db.execute(
                f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE id = ?", (upload_id,)
            ).fetchone()
        return UploadRow(*found) if found else None

    def get_file_any(self, file_id: str) -> FileRow | None:
        """A file row whatever its state (for an Upload's ``file`` after completion)."""
        with self._lock:
            found = self._db.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ?", (file_id,)).fetchone()
        return FileRow(*found) if found else None

    def upload_received_bytes(self, upload_id: str) -> int:
        with self._lock:
            total = self._db.execute(
                "SELECT COALESCE(SUM(bytes), 0) FROM parts WHERE upload_id = ?", (upload_id,)
            ).fetchone()[0]
        return int(total)

    def insert_part(self, row: PartRow, now: int) -> bool:
        """Record a committed part blob if its Upload is still pending; False otherwise."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                ok = self._db.execute(
                    "SELECT 1 FROM uploads WHERE id = ? AND status = 'pending' AND expires_at > ?",
                    (row.upload_id, now),
                ).fetchone() is not None
                if ok:
                    self._db.execute(
                        "INSERT INTO parts (id, upload_id, bytes, created_at) VALUES (?, ?, ?, ?)",
                        (row.id, row.upload_id, row.bytes, row.created_at),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return ok

    def parts_of(self, upload_id: str) -> dict[str, PartRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, upload_id, bytes, created_at FROM parts WHERE upload_id = ?", (upload_id,)
            ).fetchall()
        return {r[0]: PartRow(*r) for r in rows}

    def finish_upload(self, upload_id: str, status: str, file: FileRow | None = None) -> None:
        """Move a pending Upload to completed (inserting its File) or cancelled; drop its parts."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if file is not None:
                    self._db.execute(
                        f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        _file_values(file),
                    )
                self._db.execute(
                    "UPDATE uploads SET status = ?, file_id = ? WHERE id = ?",
                    (status, file.id if file else None, upload_id),
                )
                part_ids = [r[0] for r in self._db.execute(
                    "SELECT id FROM parts WHERE upload_id = ?", (upload_id,))]
                self._db.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self.blobs.remove_parts(part_ids)


def _file_values(row: FileRow) -> tuple[Any, ...]:
    return (row.id, row.filename, row.purpose, row.bytes, row.created_at, row.expires_at, row.status,
            row.status_details)
