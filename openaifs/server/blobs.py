"""Blob files: the bytes of files and upload parts, written atomically.

Layout under the data directory: ``blobs/<file id>`` (file contents), ``parts/<part id>`` (upload
parts), ``tmp/`` (blobs being written). A blob is written under ``tmp/``, fsynced, renamed to its
final name, and the directory fsynced; only then may a metadata row point at it. So a crash leaves
at worst an orphan temp file (swept at startup), never a listed file with partial content.

All functions here block (disk I/O): callers on the event loop run them in a worker thread.
A ``BlobWriter`` is used by one task at a time.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

# Writes are batched to at least this much before a thread hop (multipart.py) and reads are served
# in chunks of this size (content.py): large enough that per-chunk overhead vanishes, small enough
# that memory per transfer stays flat.
CHUNK = 1024 * 1024


class BlobStore:
    """Where blobs live; creates its directories and clears leftovers of a crash."""

    def __init__(self, root: Path) -> None:
        self.files = root / "blobs"
        self.parts = root / "parts"
        self.tmp = root / "tmp"
        for d in (self.files, self.parts, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)

    def file_path(self, file_id: str) -> Path:
        return self.files / file_id

    def part_path(self, part_id: str) -> Path:
        return self.parts / part_id

    def writer(self, *, md5: bool = False) -> BlobWriter:
        return BlobWriter(self.tmp, md5=md5)

    def write_small_files(self, blobs: list[tuple[str, bytes]]) -> None:
        """Write many small file blobs at once (the bulk admin route): each through a temp file and a
        rename, but with one directory fsync for all instead of two fsyncs per file."""
        for file_id, data in blobs:
            tmp = self.tmp / f"b-{secrets.token_hex(8)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, self.file_path(file_id))
        _fsync_dir(self.files)

    def remove_file(self, file_id: str) -> None:
        self.file_path(file_id).unlink(missing_ok=True)

    def remove_parts(self, part_ids: list[str]) -> None:
        for part_id in part_ids:
            self.part_path(part_id).unlink(missing_ok=True)

    def sweep_orphans(self, live_file_ids: set[str], live_part_ids: set[str]) -> int:
        """Remove blobs no row points at (a commit lost in a crash); returns how many."""
        removed = 0
        for directory, live in ((self.files, live_file_ids), (self.parts, live_part_ids)):
            for path in directory.iterdir():
                if path.name not in live:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed


class BlobWriter:
    """A temp file that becomes a blob with ``commit`` or disappears with ``discard``."""

    def __init__(self, tmp_dir: Path, *, md5: bool = False) -> None:
        self.path = tmp_dir / f"w-{secrets.token_hex(8)}"
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.size = 0
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 else None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self._fd is not None, "write after commit/discard"
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.size += len(data)
        if self._md5 is not None:
            self._md5.update(data)

    def write_many(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.write(piece)

    def md5_hex(self) -> str:
        assert self._md5 is not None, "writer created without md5"
        return self._md5.hexdigest()

    def commit(self, dest: Path) -> None:
        """fsync, rename to ``dest``, fsync the directory: the blob is durable under its name."""
        assert self._fd is not None, "commit twice"
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.path, dest)
        _fsync_dir(dest.parent)

    def discard(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self.path.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
