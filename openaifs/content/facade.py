"""``Content``: the content cache as ``fs.py`` sees it (open, read, release, adopt, discard).

The algorithm is described in the package docstring (``openaifs/content/__init__.py``).
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import trio

from openaifs.content.downloader import ContentStats, DownloadClient, Downloader, FetchSettings, ReadState
from openaifs.content.store import CacheEntry, CacheError, ContentStore
from openaifs.errors import APIError, DownloadForbiddenError, RateLimitError, ServerError, TransportError

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB

# The first fetch of an open file, and of every read that does not follow the previous one. It covers a
# file manager's type sniff (4-16 KiB) and one whole kernel read request (128 KiB by default), so opening
# a folder of big JSONL files costs at most this much per file, not a download each.
FIRST_CHUNK = 128 * KiB
# The first read-ahead chunk once a handle reads sequentially: large enough that a request's latency
# (~100-300 ms on the hosted API, per DESIGN) is no longer paid per 128 KiB kernel read.
CHUNK_MIN = 1 * MiB
# The largest single request. Chunks double from CHUNK_MIN while reads stay sequential; at 50-100 MB/s a
# 16 MiB response takes 0.2-0.3 s, which amortises request latency, while a failed chunk costs at most
# 16 MiB to fetch again and every chunk boundary is a point where a cancel stops cleanly.
CHUNK_MAX = 16 * MiB
# Read-ahead keeps this many chunks ahead of a sequential reader: one arriving while the other is read.
READAHEAD_CHUNKS = 2
# Read-ahead fetches in flight per file (fetches a reader needs now are never held back): 4 x 16 MiB =
# 64 MiB ahead at most, on 4 of the client's 16 connections, leaving room for other files.
MAX_INFLIGHT = 4
# Bytes a fetch buffers before a worker thread writes them to disk (while the next buffer fills). The
# thread hop costs ~0.2 ms (measured), amortised over 1 MiB; a running fetch holds at most two
# buffers (~2 MiB) whatever the file size.
WRITE_BATCH = 1 * MiB
# A long download records its ranges (fdatasync + sidecar) every this many new bytes, besides when the
# file completes and when it goes idle: one sync per 64 MiB is cheap, and a crash loses at most that
# much to re-download.
COMMIT_EVERY = 64 * MiB
# The kernel keeps up to two read-ahead requests (up to 1 MiB each) in flight and they may arrive out
# of order; a read starting this close to where the previous one ended still counts as sequential.
SEQ_SLACK = 1 * MiB
# A read that failed because the server could not be reached or kept failing (after the client's own
# retries) makes further reads through the same open file fail at once for this long: the kernel
# retries a failed read straight away on the same handle, and without this a `cat` against a silent
# server waited out every timeout twice. A new open tries again at once.
FAILURE_MEMORY = 2.0


class ContentHandle:
    """One open of one file. ``fs.py`` keeps it as the FUSE file handle's state."""

    __slots__ = ("file_id", "size", "purpose", "entry", "state", "released", "failed")

    def __init__(self, file_id: str, size: int, purpose: str, entry: CacheEntry | None, first_chunk: int):
        self.file_id = file_id
        self.size = size
        self.purpose = purpose
        self.entry = entry  # None for an empty file: nothing to cache, nothing to fetch
        self.state = ReadState(first_chunk)
        self.released = False
        # The last failed read through this handle, and when (see FAILURE_MEMORY).
        self.failed: tuple[float, APIError | TransportError] | None = None

    def __repr__(self) -> str:
        return f"ContentHandle({self.file_id!r}, size={self.size}, purpose={self.purpose!r})"


class Content:
    """Lazy, shared, cached access to file contents. All methods run on the trio event loop."""

    def __init__(
        self,
        client: DownloadClient,
        store: ContentStore,
        nursery: trio.Nursery,
        *,
        first_chunk: int = FIRST_CHUNK,
        chunk_min: int = CHUNK_MIN,
        chunk_max: int = CHUNK_MAX,
        readahead_chunks: int = READAHEAD_CHUNKS,
        max_inflight: int = MAX_INFLIGHT,
        write_batch: int = WRITE_BATCH,
        commit_every: int = COMMIT_EVERY,
        seq_slack: int = SEQ_SLACK,
    ) -> None:
        if not 0 < first_chunk <= chunk_max or not 0 < chunk_min <= chunk_max:
            raise ValueError("chunk sizes must satisfy 0 < first_chunk, chunk_min <= chunk_max")
        self.client = client
        self.store = store
        self.nursery = nursery
        self.settings = FetchSettings(first_chunk=first_chunk, chunk_min=chunk_min, chunk_max=chunk_max,
                                      max_inflight=max(1, max_inflight),
                                      readahead_chunks=max(1, readahead_chunks),
                                      write_batch=write_batch, commit_every=commit_every, seq_slack=seq_slack)
        self.stats = ContentStats()
        self._refused: dict[str, DownloadForbiddenError] = {}
        self._range: bool | None = None  # what the client learnt: does the server honour Range?
        self._downloaders: set[Downloader] = set()
        self._materialized: dict[str, CacheEntry] = {}  # pinned for a re-upload; see materialize()
        self._tasks = 0
        self._tasks_idle: trio.Event | None = None
        self._closed = False
        self._purging = False
        self._purge_again = False
        self._commit_queue: list[CacheEntry] = []  # entries to record, for the one committer task
        self._committing = False
        store.on_trash = self._schedule_purge

    # -- the FUSE-facing calls ----------------------------------------------------------------
    async def open(self, file_id: str, size: int, purpose: str) -> ContentHandle:
        """A handle for reading ``file_id``. No network; fails fast for a refused purpose."""
        if self._closed:
            raise CacheError("the content cache is closed")
        if size <= 0:
            return ContentHandle(file_id, 0, purpose, None, self.settings.first_chunk)
        if purpose in self._refused and not self.store.is_complete(file_id):
            raise self._forbidden(file_id, purpose)
        try:
            entry = self.store.acquire(file_id, size)
        except OSError as exc:
            raise CacheError(f"cannot open the cache file of {file_id}: {exc.strerror or exc}") from exc
        entry.open_handles += 1
        return ContentHandle(file_id, entry.size, purpose, entry, self.settings.first_chunk)

    async def read(self, handle: ContentHandle, offset: int, length: int) -> bytes | bytearray | memoryview:
        """Exactly the bytes ``[offset, offset+length)`` clipped to the size; b"" at or past EOF.

        A read that waited for a download is answered with a view of the buffer just written to
        the cache file (no copy, no read-back); pyfuse3 takes any buffer.
        """
        if handle.released:
            raise ValueError(f"read on a released handle of {handle.file_id}")
        entry = handle.entry
        end = min(offset + length, handle.size)
        if entry is None or offset >= end or offset < 0:
            return b""
        if entry.complete:
            self.stats.hits += 1  # the fast path: no thread hop, one pread of cached pages
        else:
            view = await self._make_present(handle, entry, offset, end)
            if view is None and entry.downloader is not None:
                view = entry.downloader.view(offset, end)  # a wait ended with the write landing
            if view is not None:
                self.stats.from_memory += 1
                self.stats.bytes_served += len(view)
                return view
        try:
            # Pages in the page cache are read right here (a thread hop would halve the throughput
            # of cached reads); pages on disk only in a worker thread, so a cold cache file (after a
            # remount, or evicted by memory pressure) never stalls every other FUSE request.
            data = self.store.pread_cached(entry, offset, end - offset)
            if data is None:
                self.stats.disk_reads += 1
                data = await trio.to_thread.run_sync(self.store.pread, entry, offset, end - offset)
        except OSError as exc:
            msg = f"cannot read the cache file of {handle.file_id}: {exc.strerror or exc}"
            raise CacheError(msg) from exc
        self.stats.bytes_served += len(data)
        return data

    async def _make_present(self, handle: ContentHandle, entry: CacheEntry, start: int, end: int,
                            on_disk: bool = False) -> memoryview | None:
        """Make ``[start, end)`` present, or (unless ``on_disk``) return it from a buffer still being
        written."""
        if self._range is None:
            self._range = await self.client.range_supported()
        ranged = self._range is not False  # unknown: try ranged requests; the client copes either way
        present = entry.ranges.contains(start, end)
        if not present and handle.purpose in self._refused:
            raise self._forbidden(handle.file_id, handle.purpose)
        if not present and handle.failed is not None:
            when, exc = handle.failed
            if trio.current_time() - when < FAILURE_MEMORY:
                raise exc.with_traceback(None)
            handle.failed = None
        downloader = self._downloader(entry)
        # Plan on hits too: a sequential reader's read-ahead must be topped up before it runs dry.
        downloader.plan(handle.state, start, end, handle.purpose, ranged)
        if present:
            self.stats.hits += 1
            return None
        view = None if on_disk else downloader.view(start, end)  # arrived, and being written
        if view is not None:
            self.stats.hits += 1
            return view
        self.stats.misses += 1
        try:
            return await downloader.wait_for(handle.state, start, end, handle.purpose, ranged, on_disk)
        except (TransportError, ServerError, RateLimitError) as exc:
            handle.failed = (trio.current_time(), exc)
            raise

    async def release(self, handle: ContentHandle) -> None:
        """The handle is closed. When it was the file's last, its running downloads stop."""
        if handle.released:
            return
        handle.released = True
        entry = handle.entry
        if entry is None:
            return
        entry.open_handles -= 1
        if entry.open_handles == 0 and entry.downloader is not None:
            entry.downloader.cancel_all()
        self._unpin(entry)

    def adopt(self, file_id: str, spool_path: Path, size: int) -> bool:
        """Seed the cache with a just-uploaded file's bytes by moving its spool file in.

        True: the spool file now belongs to the cache (it was renamed away). False: not adopted
        (size mismatch, too big for the cache, a copy already open, or the spool is on another
        filesystem); the spool is left where it was, and the caller deletes it as usual.
        """
        try:
            entry = self.store.adopt(file_id, spool_path, size)
        except OSError as exc:
            level = logging.DEBUG if exc.errno == errno.EXDEV else logging.WARNING
            log.log(level, "not caching the upload of %s from %s: %s", file_id, spool_path, exc)
            return False
        if entry is None:
            return False
        self._schedule_commit(entry)  # fdatasync the spool's bytes, then record them
        return True

    def discard(self, file_id: str) -> None:
        """The file was deleted remotely: drop its cached bytes (open handles keep reading them)."""
        self._unpin_materialized(file_id)
        self.store.discard(file_id)

    async def materialize(self, file_id: str, size: int, purpose: str) -> Path:
        """Fetch the whole file into the cache and return the path of its cache file (to re-upload it).

        The file stays pinned (never evicted) until ``link(..., file_id)``, ``discard(file_id)`` or
        ``aclose()``, so the path stays valid while an upload reads it.
        """
        if size <= 0:
            return self._empty_file()
        handle = await self.open(file_id, size, purpose)
        entry = handle.entry
        assert entry is not None
        try:
            for start in range(0, entry.size, self.settings.chunk_max):
                end = min(entry.size, start + self.settings.chunk_max)
                if not entry.ranges.contains(start, end):
                    await self._make_present(handle, entry, start, end, on_disk=True)
            if file_id not in self._materialized:
                self.store.pin(entry)
                self._materialized[file_id] = entry
        finally:
            await self.release(handle)
        return self.store.data_path(entry)

    def link(self, new_id: str, old_id: str) -> bool:
        """``new_id`` has the same bytes as the cached ``old_id`` (a re-upload): cache them under both.

        A hard link, so no bytes are copied and the new id survives ``discard(old_id)``. Also ends
        the pin ``materialize(old_id)`` took. False when ``old_id`` is not completely cached.
        """
        old = self.store.get(old_id)
        linked = False
        if old is not None and old.complete and self.store.get(new_id) is None:
            name = self.store.new_data_name(new_id)
            try:
                os.link(self.store.data_path(old), self.store.dir / name)
            except OSError as exc:
                log.warning("could not cache %s as a copy of %s: %s", new_id, old_id, exc)
            else:
                self._schedule_commit(self.store.register_complete(new_id, name, old.size))
                linked = True
        self._unpin_materialized(old_id)
        return linked

    # -- queries for fs.py / uploads.py -------------------------------------------------------
    def is_cached(self, file_id: str) -> bool:
        """Is the whole content of ``file_id`` in the cache?"""
        return self.store.is_complete(file_id)

    def open_cached(self, file_id: str) -> int | None:
        """A read-only fd on the complete cached content (the caller closes it), or None.

        For re-uploading on rename without a download: eviction cannot pull the bytes from under an
        open fd.
        """
        entry = self.store.get(file_id)
        if entry is None or not entry.complete:
            return None
        try:
            return os.open(self.store.data_path(entry), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None

    @property
    def refused_purposes(self) -> frozenset[str]:
        return frozenset(self._refused)

    def summary(self) -> str:
        s, st = self.stats, self.store.stats
        return (f"content: {s.hits} cached reads, {s.misses} waited for downloads "
                f"({s.from_memory} answered from memory, {s.disk_reads} from disk in a thread), "
                f"{s.bytes_fetched / MiB:.1f} MiB fetched in {s.fetches} requests "
                f"({s.failures} failed, {s.cancelled} cancelled), {st.evicted_files} files evicted, "
                f"{self.store.total_bytes / MiB:.1f} MiB cached")

    async def drain(self) -> None:
        """Wait until no download or commit is running (for shutdown, and for tests)."""
        while self._tasks:
            self._tasks_idle = trio.Event()
            await self._tasks_idle.wait()

    async def aclose(self) -> None:
        """Stop all downloads, record what arrived, and close the store (call before the nursery ends)."""
        self._closed = True
        for file_id in list(self._materialized):
            self._unpin_materialized(file_id)
        for downloader in list(self._downloaders):
            downloader.cancel_all()
        await self.drain()
        await trio.to_thread.run_sync(self.store.close)

    # -- internals ----------------------------------------------------------------------------
    def _unpin_materialized(self, file_id: str) -> None:
        entry = self._materialized.pop(file_id, None)
        if entry is not None:
            self._unpin(entry)

    def _empty_file(self) -> Path:
        path = self.store.dir / "empty"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        return path

    def _downloader(self, entry: CacheEntry) -> Downloader:
        if entry.downloader is None:
            entry.downloader = Downloader(
                entry, self.client, self.store, self.nursery, self.settings, self.stats,
                on_forbidden=self._note_forbidden, schedule_commit=self._schedule_commit,
                unpin=self._unpin, task_started=self._task_started, task_done=self._task_done,
            )
            self._downloaders.add(entry.downloader)
        downloader: Downloader = entry.downloader
        return downloader

    def _unpin(self, entry: CacheEntry) -> None:
        if self.store.unpin(entry):
            self._schedule_commit(entry)
        downloader = entry.downloader
        if downloader is not None and entry.open_handles == 0 and downloader.idle:
            entry.downloader = None
            self._downloaders.discard(downloader)

    def _schedule_commit(self, entry: CacheEntry) -> None:
        if entry.commit_scheduled or entry.gone:
            return
        try:
            self.store.pin(entry)  # the commit needs the fd; the pin also keeps the entry from eviction
        except (OSError, CacheError) as exc:  # its data file vanished: nothing to record
            log.warning("cannot record the cached ranges of %s: %s", entry.file_id, exc)
            return
        entry.commit_scheduled = True
        self._commit_queue.append(entry)
        if not self._committing:
            self._committing = True
            self._task_started()
            self.nursery.start_soon(self._commit_loop, name="commit")

    # Background tasks run in the mount's nursery: an exception escaping one would end the mount, so
    # each logs whatever it did not expect and stops.
    async def _commit_loop(self) -> None:
        """The one committer: records every queued entry, in batches (see ``commit_many``)."""
        try:
            while self._commit_queue:
                batch, self._commit_queue = self._commit_queue, []
                try:
                    await self.store.commit_many(batch)
                except Exception:
                    log.exception("recording the cached ranges of %s failed",
                                  ", ".join(entry.file_id for entry in batch))
                finally:
                    for entry in batch:
                        entry.commit_scheduled = False
                        self._unpin(entry)  # may queue it again (more bytes arrived meanwhile)
        finally:
            self._committing = False
            self._task_done()

    def _schedule_purge(self) -> None:
        if self._purging:
            self._purge_again = True
            return
        self._purging = True
        self._task_started()
        self.nursery.start_soon(self._purge, name="purge cache trash")

    async def _purge(self) -> None:
        try:
            while True:
                self._purge_again = False
                await trio.to_thread.run_sync(self.store.purge_trash)
                if not self._purge_again:
                    break
        except Exception:
            log.exception("emptying %s failed", self.store.trash)
        finally:
            self._purging = False
            self._task_done()

    def _task_started(self) -> None:
        self._tasks += 1

    def _task_done(self) -> None:
        self._tasks -= 1
        if self._tasks == 0 and self._tasks_idle is not None:
            self._tasks_idle.set()

    def _note_forbidden(self, purpose: str, exc: DownloadForbiddenError) -> None:
        if purpose not in self._refused:
            log.info("the server refuses downloads of purpose %s; later opens fail at once", purpose)
        self._refused[purpose] = exc

    def _forbidden(self, file_id: str, purpose: str) -> DownloadForbiddenError:
        orig = self._refused[purpose]
        return DownloadForbiddenError(orig.status, orig.message, type=orig.type, code=orig.code,
                                      param=orig.param, file_id=file_id, operation="download")
