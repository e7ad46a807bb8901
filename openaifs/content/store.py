"""The on-disk content cache: one sparse data file and one sidecar per file id. No network.

Layout, in the directory given (``<cache dir>/content/`` in a mount; mode 0700, every file 0600):

    <key>.json               sidecar: {"v", "id", "size", "data", "ranges"}; written atomically
    <key>.<nonce>.data       the bytes, at their own offsets, in a sparse file of exactly ``size`` bytes
    trash/                   data files evicted or discarded, deleted by a worker thread (see _trash)
    .lock                    flock'ed by the one process using this directory

``key`` is the hex SHA-256 of the file id. Ids are opaque strings from the server, so none of their
characters ever reaches a path: ``../../etc/passwd`` maps to 64 hex digits like any other id. (A
readable "safe id or fallback" scheme was rejected: OpenAI ids are mixed-case, and a cache directory on
a case-insensitive filesystem would then silently merge ``file-aB`` and ``file-Ab``.)

Crash safety rests on one invariant: **every range a sidecar lists is durably in the data file it
names.** It holds because

- data is written first (``pwrite``); the ranges the sidecar will list are snapshotted *before*
  ``fdatasync`` of the data file, so everything in the snapshot was written before the sync began;
- the sidecar is written to ``<key>.json.tmp``, fsynced, and renamed over ``<key>.json``. A crash
  leaves either the old sidecar (a subset: ranges only grow) or the new one, never a torn one;
- a data file starts sparse with no sidecar at all, and at startup any data file no sidecar names is
  deleted. So a kill -9 (or power loss) in the middle of a download costs the unrecorded bytes, and can
  never make zeros of a hole look like content;
- each data file's name carries a random nonce recorded in its sidecar. If a sidecar ever resurrected
  after its file was evicted and re-created (an unlink and a create reordered by a crash), it would
  name a file that does not exist, and be dropped, instead of vouching for the new file's holes.

Recording is coalesced (see ``Content``): a sidecar is rewritten when a file goes idle, when a file
completes, and every ``commit_every`` bytes of a long download, not per chunk, because each commit
costs an ``fdatasync``. Losing the unrecorded tail on a crash only costs a re-download.

The store keeps, per entry, the present ranges (in memory, authoritative while mounted), a pin count
(open handles, running downloads and commits; an entry with pins is never evicted and keeps its fd
open), and an LRU order. Eviction removes whole files, least recently used first, skipping pinned ones,
until the present bytes of all entries fit ``max_bytes``.

Everything here runs on the event loop and is quick (open, pread of cached pages, unlink, small
JSON) except ``write_sidecar`` (fdatasync + fsync), which callers run in a worker thread via
``commit``, and ``pread`` of pages not in the page cache, which ``pread_cached`` refuses so that the
caller can read them in a worker thread.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import stat
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from openaifs.content.ranges import RangeSet
from openaifs.errors import OpenAIFSError

log = logging.getLogger(__name__)

SIDECAR_VERSION = 1
# preadv2 flag: fail with EAGAIN instead of waiting for the disk (0 where the platform lacks it).
_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
_KEY_RE = re.compile(r"[0-9a-f]{64}")
_DATA_RE = re.compile(r"([0-9a-f]{64})\.[0-9a-f]{16}\.data")
_OPEN_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW


class CacheError(OpenAIFSError):
    """The local content cache could not be used (disk full, permissions, in use elsewhere)."""


class CacheBusyError(CacheError):
    """Another openaifs process holds this cache directory."""


def cache_key(file_id: str) -> str:
    """The only name a file id ever contributes to the cache directory: hex SHA-256 of the id."""
    return hashlib.sha256(file_id.encode("utf-8", "surrogatepass")).hexdigest()


class CacheEntry:
    """One cached file id. Mutated only on the event loop; threads see copies of what they need."""

    __slots__ = (
        "file_id", "key", "size", "data_name", "ranges", "committed_total", "pins", "fd",
        "gone", "open_handles", "downloader", "commit_lock", "commit_scheduled", "has_sidecar",
    )

    def __init__(self, file_id: str, key: str, size: int, data_name: str, ranges: RangeSet) -> None:
        self.file_id = file_id
        self.key = key
        self.size = size
        self.data_name = data_name
        self.ranges = ranges
        self.committed_total = ranges.total  # present bytes the sidecar on disk vouches for
        self.has_sidecar = False
        self.pins = 0  # open handles + running downloads + running commits
        self.fd: int | None = None
        self.gone = False  # evicted or discarded: files unlinked, no longer in the index
        # Owned by Content (facade): kept here so a discarded-but-open entry carries its own state.
        self.open_handles = 0
        self.downloader: Any = None
        self.commit_lock = trio.Lock()
        self.commit_scheduled = False

    @property
    def complete(self) -> bool:
        return self.ranges.contains(0, self.size)

    @property
    def dirty(self) -> bool:
        return self.ranges.total != self.committed_total

    def __repr__(self) -> str:
        return (f"CacheEntry({self.file_id!r}, size={self.size}, present={self.ranges.total}, "
                f"pins={self.pins})")


@dataclass
class StoreStats:
    evicted_files: int = 0
    evicted_bytes: int = 0
    adopted_files: int = 0
    dropped_on_load: int = 0  # sidecars or data files found invalid or orphaned at startup


class ContentStore:
    """On-disk cache keyed by file id; see the module docstring for the layout and its invariants."""

    def __init__(self, cache_dir: Path, max_bytes: int) -> None:
        self.dir = Path(cache_dir)
        self.trash = self.dir / "trash"
        # Called when a data file was moved to trash/; the owner (Content) deletes it in a worker
        # thread. None: delete at once (a store used without an event loop).
        self.on_trash: Callable[[], None] | None = None
        self.max_bytes = max_bytes
        self.stats = StoreStats()
        self._index: OrderedDict[str, CacheEntry] = OrderedDict()  # LRU order: oldest first
        self._total = 0  # present bytes over all indexed entries
        self._nowait = _NOWAIT  # 0 once the cache's filesystem refused RWF_NOWAIT
        self._lock_fd: int | None = None
        try:
            self._make_dirs()
            self._lock()
            self._load()
            self.purge_trash()
        except OSError as exc:
            self.close()
            raise CacheError(f"cannot use cache directory {self.dir}: {exc.strerror or exc}") from exc

    # -- setup --------------------------------------------------------------------------------
    def _make_dirs(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.dir.is_dir():
            raise CacheError(f"{self.dir} is not a directory")
        # Exactly 0700, whatever the umask or an earlier run left: the cached bytes are the user's files.
        os.chmod(self.dir, 0o700)
        self.trash.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.trash, 0o700)

    def _lock(self) -> None:
        self._lock_fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise CacheBusyError(
                f"cache directory {self.dir} is in use by another openaifs process; "
                "unmount it first or pass a different --cache-dir"
            ) from None

    def _load(self) -> None:
        """Rebuild the index from sidecars; delete temp files, orphans and anything inconsistent."""
        names = os.listdir(self.dir)
        loaded: list[tuple[float, CacheEntry]] = []
        referenced: set[str] = set()
        for name in names:
            if name.endswith(".tmp"):
                self._unlink(name)
            elif name.endswith(".json"):
                entry, mtime = self._load_sidecar(name)
                if entry is None:
                    self.stats.dropped_on_load += 1
                    self._unlink(name)
                else:
                    referenced.add(entry.data_name)
                    loaded.append((mtime, entry))
        for name in names:
            if _DATA_RE.fullmatch(name) and name not in referenced:
                self.stats.dropped_on_load += 1
                self._unlink(name)
        for _, entry in sorted(loaded, key=lambda pair: pair[0]):
            self._index[entry.file_id] = entry
            self._total += entry.ranges.total
        log.debug("content cache %s: %d files, %d bytes", self.dir, len(self._index), self._total)

    def _load_sidecar(self, name: str) -> tuple[CacheEntry | None, float]:
        try:
            st = os.lstat(self.dir / name)
            with open(self.dir / name, "rb") as f:
                # 16 MiB: room for ~800k ranges (a heavily fragmented file); anything longer is
                # not a sidecar we wrote, and is dropped unread.
                doc = json.loads(f.read(16 * 1024 * 1024))
            file_id, size, data_name = doc["id"], doc["size"], doc["data"]
            raw_ranges = doc["ranges"]
            ok = (
                doc.get("v") == SIDECAR_VERSION
                and isinstance(file_id, str) and isinstance(size, int) and size > 0
                and f"{cache_key(file_id)}.json" == name
                and isinstance(data_name, str) and _DATA_RE.fullmatch(data_name) is not None
                and data_name.startswith(cache_key(file_id))
                and isinstance(raw_ranges, list)
            )
            if not ok:
                return None, 0.0
            ranges = RangeSet()
            for pair in raw_ranges:
                s, e = pair
                if not (isinstance(s, int) and isinstance(e, int) and 0 <= s < e <= size):
                    return None, 0.0
                ranges.add(s, e)
            dst = os.lstat(self.dir / data_name)
            if not stat.S_ISREG(dst.st_mode) or dst.st_size != size:
                return None, 0.0
        except (OSError, ValueError, KeyError, TypeError):
            return None, 0.0
        entry = CacheEntry(file_id, cache_key(file_id), size, data_name, ranges)
        entry.has_sidecar = True
        return entry, st.st_mtime

    # -- queries ------------------------------------------------------------------------------
    @property
    def total_bytes(self) -> int:
        """Present bytes of all indexed entries (what ``max_bytes`` bounds)."""
        return self._total

    def __len__(self) -> int:
        return len(self._index)

    def get(self, file_id: str) -> CacheEntry | None:
        return self._index.get(file_id)

    def is_complete(self, file_id: str) -> bool:
        entry = self._index.get(file_id)
        return entry is not None and entry.complete

    def data_path(self, entry: CacheEntry) -> Path:
        return self.dir / entry.data_name

    # -- pins and fds -------------------------------------------------------------------------
    def acquire(self, file_id: str, size: int) -> CacheEntry:
        """The entry for ``file_id`` (created, with an empty sparse data file, if new), pinned."""
        entry = self._index.get(file_id)
        if entry is not None and entry.size != size:
            # Files are immutable, so this means the index and the API disagree; trust the API.
            if entry.pins:
                log.warning("cache of %s has size %d, API says %d; using the open copy", file_id,
                            entry.size, size)
            else:
                log.warning("cache of %s has size %d, API says %d; dropping it", file_id, entry.size, size)
                self._remove(entry)
                entry = None
        if entry is None:
            key = cache_key(file_id)
            data_name = f"{key}.{secrets.token_hex(8)}.data"
            fd = os.open(self.dir / data_name, os.O_RDWR | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o600)
            try:
                os.ftruncate(fd, size)
            except OSError:
                os.close(fd)
                os.unlink(self.dir / data_name)
                raise
            entry = CacheEntry(file_id, key, size, data_name, RangeSet())
            entry.fd = fd
            self._index[file_id] = entry
        self.pin(entry)
        self._index.move_to_end(file_id)
        return entry

    def pin(self, entry: CacheEntry) -> None:
        if entry.fd is None:
            if entry.gone:
                raise CacheError(f"cache entry of {entry.file_id} was removed")
            entry.fd = os.open(self.data_path(entry), os.O_RDWR | _OPEN_FLAGS)
        entry.pins += 1

    def unpin(self, entry: CacheEntry) -> bool:
        """Drop one pin. True means: the entry is idle and has unrecorded ranges; commit it."""
        entry.pins -= 1
        assert entry.pins >= 0, entry
        if entry.pins:
            return False
        if not entry.gone and entry.dirty:
            return True  # keep the fd for the commit
        self._close_fd(entry)
        if not entry.gone:
            if entry.has_sidecar:
                self._touch(entry)
            self.evict_over_budget()
        return False

    def _close_fd(self, entry: CacheEntry) -> None:
        if entry.fd is not None:
            fd, entry.fd = entry.fd, None
            try:
                os.close(fd)
            except OSError as exc:  # the fd is gone either way; nothing to do but say so
                log.warning("closing the cache file of %s: %s", entry.file_id, exc)

    def _touch(self, entry: CacheEntry) -> None:
        """Sidecar mtime = last use: it orders the LRU of the next mount."""
        try:
            os.utime(self.dir / f"{entry.key}.json")
        except OSError:
            pass  # nothing worse than a stale LRU position

    # -- data ---------------------------------------------------------------------------------
    def pread(self, entry: CacheEntry, offset: int, length: int) -> bytes:
        """The cached bytes ``[offset, offset+length)``; the caller has checked they are present."""
        assert entry.fd is not None, entry
        data = os.pread(entry.fd, length, offset)
        if len(data) == length:
            return data
        parts = [data]
        got = len(data)
        while got < length:
            more = os.pread(entry.fd, length - got, offset + got)
            if not more:
                raise CacheError(f"cache file of {entry.file_id} is shorter than recorded")
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def pread_cached(self, entry: CacheEntry, offset: int, length: int) -> bytes | bytearray | None:
        """The bytes ``[offset, offset+length)`` if the page cache holds all of them, else None.

        Never waits for the disk (``RWF_NOWAIT``), so it is safe on the event loop; a None means
        "read it in a worker thread". Without RWF_NOWAIT support it is a plain ``pread``.
        """
        if not self._nowait:
            return self.pread(entry, offset, length)
        assert entry.fd is not None, entry
        buf = bytearray(length)
        try:
            got = os.preadv(entry.fd, [buf], offset, self._nowait)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without it (NFS, FUSE)
                log.debug("%s does not support RWF_NOWAIT reads: plain pread from now on", self.dir)
                self._nowait = 0
                return self.pread(entry, offset, length)
            raise
        return buf if got == length else None  # a short read: the rest is not cached

    @staticmethod
    def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (blocking: run it in a worker thread)."""
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    def mark_present(self, entry: CacheEntry, start: int, end: int) -> int:
        """Record that ``[start, end)`` is written (not yet durable). Returns the new byte count."""
        new = entry.ranges.add(start, end)
        if not entry.gone:
            self._total += new
            if new:
                self._index.move_to_end(entry.file_id)
                self.evict_over_budget()
        return new

    # -- commit -------------------------------------------------------------------------------
    async def commit(self, entry: CacheEntry) -> None:
        """Make the sidecar vouch for what is present now. Caller holds a pin (the fd stays open)."""
        async with entry.commit_lock:
            if entry.gone or not entry.dirty:
                return
            snapshot = entry.ranges.as_list()  # taken before fdatasync starts: see module docstring
            total = entry.ranges.total
            fd = entry.fd
            assert fd is not None, entry
            try:
                await trio.to_thread.run_sync(self.write_sidecar, entry.file_id, entry.key, entry.size,
                                              entry.data_name, snapshot, fd)
            except OSError as exc:
                self._commit_failed(entry, total, exc)
                return
            self._committed(entry, total)

    async def commit_many(self, entries: list[CacheEntry]) -> None:
        """``commit`` for several entries in one worker thread: one thread hop, not one per file.

        Reading many small files at once completes (and commits) them at nearly the same time: one
        hop (and one thread) per file cost 8 parallel readers of 200 files of 1 MiB ~10 % of their
        throughput and CPU (bench.py). Each entry still gets its own fdatasync and sidecar, in order.
        The caller holds a pin on each and is the only one committing them (Content's committer).
        """
        jobs = [(entry, entry.ranges.as_list(), entry.ranges.total) for entry in entries
                if not entry.gone and entry.dirty and entry.fd is not None]  # snapshots before any sync
        if not jobs:
            return

        def write_all() -> list[OSError | None]:
            errors: list[OSError | None] = []
            for entry, snapshot, _ in jobs:
                assert entry.fd is not None
                try:
                    self.write_sidecar(entry.file_id, entry.key, entry.size, entry.data_name, snapshot, entry.fd)
                except OSError as exc:
                    errors.append(exc)
                else:
                    errors.append(None)
            return errors

        for (entry, _, total), error in zip(jobs, await trio.to_thread.run_sync(write_all), strict=True):
            if error is not None:
                self._commit_failed(entry, total, error)
            else:
                self._committed(entry, total)

    def commit_sync(self, entry: CacheEntry) -> None:
        """Blocking commit, for shutdown and tests."""
        if entry.gone or not entry.dirty or entry.fd is None:
            return
        total = entry.ranges.total
        try:
            self.write_sidecar(entry.file_id, entry.key, entry.size, entry.data_name,
                               entry.ranges.as_list(), entry.fd)
        except OSError as exc:
            self._commit_failed(entry, total, exc)
            return
        self._committed(entry, total)

    def _commit_failed(self, entry: CacheEntry, total: int, exc: OSError) -> None:
        # The sidecar on disk still lists a subset of the truth, so this is safe; the next mount just
        # re-downloads what could not be recorded. Stop retrying until more bytes arrive.
        log.warning("could not record the cached ranges of %s: %s", entry.file_id, exc)
        entry.committed_total = total

    def _committed(self, entry: CacheEntry, total: int) -> None:
        entry.committed_total = total
        entry.has_sidecar = True
        if entry.gone:  # discarded or evicted while the sidecar was being written
            self._unlink(f"{entry.key}.json")

    def write_sidecar(self, file_id: str, key: str, size: int, data_name: str,
                      ranges: list[tuple[int, int]], fd: int) -> None:
        """Blocking: fdatasync the data, then atomically replace the sidecar. Touches no shared state."""
        os.fdatasync(fd)
        doc = {"v": SIDECAR_VERSION, "id": file_id, "size": size, "data": data_name,
               "ranges": [[s, e] for s, e in ranges]}
        body = json.dumps(doc, separators=(",", ":")).encode()
        final = self.dir / f"{key}.json"
        tmp = self.dir / f"{key}.json.tmp"
        tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _OPEN_FLAGS, 0o600)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(tfd, view):]
            os.fsync(tfd)
        finally:
            os.close(tfd)
        os.replace(tmp, final)
        # No fsync of the directory: if the rename is lost, the old sidecar (a subset) is still true.

    # -- adopt, discard, evict ----------------------------------------------------------------
    def adopt(self, file_id: str, spool_path: Path, size: int) -> CacheEntry | None:
        """Move an uploaded spool file into the cache as the complete content of ``file_id``.

        Returns the (unpinned, dirty: not yet recorded) entry, or None when not adopted; then the
        spool is left where it was. Raises OSError(EXDEV) if the spool is on another filesystem.
        """
        if size <= 0 or size > self.max_bytes:
            return None
        old = self._index.get(file_id)
        if old is not None and old.pins:
            return None  # someone is reading a copy already; keep theirs
        try:
            st = os.lstat(spool_path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            log.warning("not caching upload of %s: spool %s has %d bytes, expected %d", file_id,
                        spool_path, st.st_size, size)
            return None
        key = cache_key(file_id)
        data_name = f"{key}.{secrets.token_hex(8)}.data"
        os.rename(spool_path, self.dir / data_name)
        os.chmod(self.dir / data_name, 0o600)
        if old is not None:
            self._remove(old)
        self.stats.adopted_files += 1
        return self.register_complete(file_id, data_name, size)

    def register_complete(self, file_id: str, data_name: str, size: int) -> CacheEntry:
        """Index a data file already inside the cache directory as complete (unrecorded yet)."""
        entry = CacheEntry(file_id, cache_key(file_id), size, data_name, RangeSet())
        entry.committed_total = 0
        entry.ranges.add(0, size)
        self._index[file_id] = entry
        self._total += size
        return entry

    def new_data_name(self, file_id: str) -> str:
        return f"{cache_key(file_id)}.{secrets.token_hex(8)}.data"

    def discard(self, file_id: str) -> CacheEntry | None:
        """The file is gone remotely: unlink its cache files now. Open fds keep reading the bytes."""
        entry = self._index.get(file_id)
        if entry is not None:
            self._remove(entry)
        return entry

    def evict_over_budget(self) -> None:
        if self._total <= self.max_bytes:
            return
        for entry in list(self._index.values()):
            if self._total <= self.max_bytes:
                break
            if entry.pins == 0:
                log.debug("evicting %s (%d bytes)", entry.file_id, entry.ranges.total)
                self.stats.evicted_files += 1
                self.stats.evicted_bytes += entry.ranges.total
                self._remove(entry)

    def _remove(self, entry: CacheEntry) -> None:
        """Drop an entry from the index and unlink its files (sidecar first, then data)."""
        if entry.gone:
            return
        entry.gone = True
        del self._index[entry.file_id]
        self._total -= entry.ranges.total
        if entry.pins == 0:
            self._close_fd(entry)
        self._unlink(f"{entry.key}.json")
        self._trash(entry.data_name)

    def _trash(self, name: str) -> None:
        """Move a data file to trash/ (O(1)); its blocks are freed later, off the event loop.

        Deleting a large file is not quick: unlinking 1 GiB took 200 ms here (256 MiB: 50 ms), and
        so does the last close() of an already unlinked one. Either would stall every FUSE request.
        """
        try:
            os.rename(self.dir / name, self.trash / name)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("could not move %s to the trash: %s", name, exc)
            self._unlink(name)
            return
        if self.on_trash is not None:
            self.on_trash()
        else:
            self.purge_trash()

    def purge_trash(self) -> None:
        """Delete everything in trash/ (blocking: run it in a worker thread while mounted)."""
        try:
            names = os.listdir(self.trash)
        except OSError as exc:
            log.warning("could not list %s: %s", self.trash, exc)
            return
        for name in names:
            try:
                os.unlink(self.trash / name)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove %s: %s", self.trash / name, exc)

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(self.dir / name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("could not remove %s: %s", self.dir / name, exc)

    # -- shutdown -----------------------------------------------------------------------------
    def close(self) -> None:
        """Record every entry's ranges (blocking), close all fds, release the directory lock."""
        for entry in list(self._index.values()):
            if entry.fd is not None:
                self.commit_sync(entry)
                self._close_fd(entry)
        self.purge_trash()
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)  # releases the flock
