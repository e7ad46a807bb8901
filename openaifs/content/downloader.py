"""Fetching the missing bytes of one cached file, shared by every reader of that file.

A ``Downloader`` belongs to one ``CacheEntry`` while the entry has open handles or running fetches.
It knows which byte ranges some fetch has *claimed* (is downloading), and who is *waiting* for which
range. The rules it keeps (all under trio's single thread; no decision spans an ``await``):

- A byte is fetched at most once at a time: new fetches cover only bytes neither present nor claimed.
  That is what makes eight readers of one file cost one download.
- A waiter waits only while every byte it needs is present or claimed; it is woken the moment its
  range is present, or when a fetch it depended on failed (then it raises that fetch's error) or was
  cancelled (then it claims the bytes again itself).
- A fetch streams into a buffer of ``write_batch`` bytes, then hands it to a background write (a
  worker thread) and goes on receiving, so network and disk overlap; with at most one such write in
  flight, a fetch holds at most two buffers. It hands a buffer over early when that would complete
  a waiter's range, and a waiter whose bytes sit in a stalled fetch's buffer writes them itself.
  A fetch ends (and releases its claim) only after all writes of its bytes have landed. Bytes that
  arrived before a failure or a cancellation are written and kept.
- With Range, a fetch covers ``[start, end)`` and its size comes from the reader's read-ahead state.
  Without Range, there is one stream per file from the first missing byte to the end.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from openaifs.content.ranges import RangeSet
from openaifs.content.store import CacheEntry, CacheError, ContentStore
from openaifs.errors import DownloadForbiddenError, IntegrityError, OpenAIFSError

log = logging.getLogger(__name__)

# Buffers handed to the writer (up to ``write_batch`` each) a file's downloader keeps for the
# readers of their bytes: the two of a fetch's double buffering, for each of two fetches in flight.
# A few MiB per file being downloaded, dropped with the downloader when the file goes idle.
RECENT_BUFFERS = 4


class DownloadClient(Protocol):
    """The part of ``FilesClient`` the content cache uses."""

    def download(self, file_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        """An async generator yielding exactly the bytes ``[start, end)``, or raising a typed error."""
        ...

    async def range_supported(self) -> bool | None: ...


@dataclass
class ContentStats:
    """Counters for the unmount summary."""

    hits: int = 0  # reads answered from the cache file without waiting
    misses: int = 0  # reads that had to wait for a download
    bytes_served: int = 0
    from_memory: int = 0  # reads answered from a just-written download buffer (no read-back)
    disk_reads: int = 0  # reads of pages not in the page cache, done in a worker thread
    bytes_fetched: int = 0  # bytes received from the client and written to the cache
    fetches: int = 0  # download requests started
    failures: int = 0  # fetches that ended with an error
    cancelled: int = 0  # fetches stopped because nobody had the file open any more


@dataclass
class FetchSettings:
    first_chunk: int
    chunk_min: int
    chunk_max: int
    max_inflight: int
    readahead_chunks: int
    write_batch: int
    commit_every: int
    seq_slack: int


@dataclass(eq=False)
class _Fetch:
    start: int
    end: int
    purpose: str
    claims: list[tuple[int, int]]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    pos: int = 0  # offset of the next byte to arrive
    # Received, not yet written: the bytes [buf_start, pos). Whoever writes them takes the buffer first
    # (synchronously), so the fetch itself and a waiter that cannot wait for it never write twice.
    buf: bytearray = field(default_factory=bytearray)
    buf_start: int = 0
    writing: trio.Event | None = None  # set when the fetch's background write (if any) is done
    write_error: CacheError | None = None
    # Writes of this fetch's bytes in progress (its own, or a waiter's that took the buffer): the
    # fetch may end, and drop its claim, only when they have landed.
    writes: int = 0
    writes_done: trio.Event | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Waiter:
    start: int
    end: int
    event: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None
    view: memoryview | None = None  # its bytes, when a buffer being written held all of them
    on_disk: bool = False  # only the bytes in the cache file will do (no view)


class ReadState:
    """Per-handle access pattern: where the last read ended and the current chunk size."""

    __slots__ = ("last_end", "chunk")

    def __init__(self, first_chunk: int) -> None:
        self.last_end: int | None = None
        self.chunk = first_chunk


class Downloader:
    """Fetches ranges of one file from the client into the store; shared by all its readers."""

    def __init__(
        self,
        entry: CacheEntry,
        client: DownloadClient,
        store: ContentStore,
        nursery: trio.Nursery,
        settings: FetchSettings,
        stats: ContentStats,
        *,
        on_forbidden: Callable[[str, DownloadForbiddenError], None],
        schedule_commit: Callable[[CacheEntry], None],
        unpin: Callable[[CacheEntry], None],
        task_started: Callable[[], None],
        task_done: Callable[[], None],
    ) -> None:
        self.entry = entry
        self.client = client
        self.store = store
        self.nursery = nursery
        self.settings = settings
        self.stats = stats
        self._on_forbidden = on_forbidden
        self._schedule_commit = schedule_commit
        self._unpin = unpin
        self._task_started = task_started
        self._task_done = task_done
        self.claimed = RangeSet()
        self.fetches: set[_Fetch] = set()
        self.stream: _Fetch | None = None  # the one no-Range stream, when running
        self.waiters: list[_Waiter] = []
        # The last few buffers handed to the writer (being written, or written), kept so that the
        # reads of their bytes are answered from memory (see ``view``), not from the cache file.
        self.recent: deque[tuple[int, bytearray]] = deque(maxlen=RECENT_BUFFERS)

    @property
    def idle(self) -> bool:
        return not self.fetches and not self.waiters

    def view(self, start: int, end: int) -> memoryview | None:
        """``[start, end)`` from a buffer handed to the writer, without a copy; None if no single
        buffer holds it all. Such a buffer is never changed again, so the view stays valid for as
        long as anyone holds it (pyfuse3 replies with it and lets go)."""
        for buf_start, buf in reversed(self.recent):
            if buf_start <= start and end <= buf_start + len(buf):
                return memoryview(buf)[start - buf_start:end - buf_start]
        return None

    # -- planning (synchronous) ---------------------------------------------------------------
    def _uncovered(self, start: int, end: int) -> list[tuple[int, int]]:
        """Parts of ``[start, end)`` neither present nor claimed."""
        out: list[tuple[int, int]] = []
        for a, b in self.entry.ranges.gaps(start, end):
            out.extend(self.claimed.gaps(a, b))
        return out

    def _covered_run_end(self, offset: int) -> int:
        """End of the run of present-or-claimed bytes starting at ``offset``."""
        while True:
            nxt = max(self.entry.ranges.run_end(offset), self.claimed.run_end(offset))
            if nxt == offset:
                return offset
            offset = nxt

    def _next_covered(self, offset: int) -> int:
        """First present-or-claimed offset after ``offset`` (or the file size)."""
        candidates = [self.entry.size]
        for rs in (self.entry.ranges, self.claimed):
            nxt = rs.next_start(offset)
            if nxt is not None:
                candidates.append(nxt)
        return min(candidates)

    def plan(self, state: ReadState, start: int, end: int, purpose: str, ranged: bool) -> None:
        """Note a read of ``[start, end)``; start the fetches it needs now and the read-ahead it earns."""
        s = self.settings
        sequential = state.last_end is not None and abs(start - state.last_end) <= s.seq_slack
        if sequential:
            assert state.last_end is not None
            state.last_end = max(state.last_end, end)
        else:
            state.last_end = end
            state.chunk = s.first_chunk  # a fresh or random access: small until proven sequential
        if not ranged:
            if self._uncovered(start, end):
                self._start_stream(purpose)
            return
        self.launch_required(state, start, end, purpose)
        if not sequential:
            return
        ahead_end = self._covered_run_end(end)
        if ahead_end >= self.entry.size or ahead_end - end >= state.chunk:
            return
        # Less than one chunk ahead of the reader: grow the chunk (the reader has earned it) and
        # keep `readahead_chunks` of them ahead, within the file's in-flight budget.
        state.chunk = min(max(state.chunk * 2, s.chunk_min), s.chunk_max)
        target = min(self.entry.size, end + state.chunk * s.readahead_chunks)
        while ahead_end < target and len(self.fetches) < s.max_inflight:
            fetch_end = min(ahead_end + state.chunk, self._next_covered(ahead_end))
            self._start_fetch(ahead_end, fetch_end, purpose, [(ahead_end, fetch_end)])
            ahead_end = self._covered_run_end(fetch_end)

    def launch_required(self, state: ReadState, start: int, end: int, purpose: str) -> None:
        """Claim every uncovered byte of ``[start, end)``, rounding each fetch up to the chunk size,
        and up to the next covered byte (or the end of the file) when less than ``chunk_min`` would
        be left: a request costs more than that many bytes (a 1 MiB file is one request, not two)."""
        for a, b in self._uncovered(start, end):
            limit = self._next_covered(a)
            fetch_end = min(max(b, a + state.chunk), limit)
            if limit - fetch_end < self.settings.chunk_min:
                fetch_end = limit
            self._start_fetch(a, fetch_end, purpose, [(a, fetch_end)])

    def _start_stream(self, purpose: str) -> None:
        if self.stream is not None:
            return
        size = self.entry.size
        gaps = self._uncovered(0, size)
        if not gaps:
            return
        start = gaps[0][0]
        self.stream = self._start_fetch(start, size, purpose, gaps)

    def _start_fetch(self, start: int, end: int, purpose: str, claims: list[tuple[int, int]]) -> _Fetch:
        fetch = _Fetch(start, end, purpose, claims, pos=start, buf_start=start)
        for a, b in claims:
            self.claimed.add(a, b)
        self.fetches.add(fetch)
        self.store.pin(self.entry)
        self.stats.fetches += 1
        self._task_started()
        self.nursery.start_soon(self._run, fetch, name=f"fetch {self.entry.file_id} [{start}, {end})")
        return fetch

    # -- waiting ------------------------------------------------------------------------------
    async def wait_for(self, state: ReadState, start: int, end: int, purpose: str, ranged: bool,
                       on_disk: bool = False) -> memoryview | None:
        """Return once ``[start, end)`` is present, or (unless ``on_disk``) with those bytes as soon
        as a fetch hands over a buffer holding all of them, to be written meanwhile; raise the error
        of a fetch it depended on."""
        while not self.entry.ranges.contains(start, end):
            if ranged:
                self.launch_required(state, start, end, purpose)
            elif self._uncovered(start, end):
                self._start_stream(purpose)
            buffered = next((f for f in self.fetches if self._serves(f, start, end)), None)
            if buffered is not None:
                # The bytes have arrived but sit in a fetch's buffer, and the network may be slow to
                # deliver the next piece that would make the fetch write them: write them now.
                await self._flush(buffered)
                continue
            waiter = _Waiter(start, end, on_disk=on_disk)
            self.waiters.append(waiter)
            try:
                await waiter.event.wait()
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
            if waiter.error is not None:
                raise waiter.error
            if waiter.view is not None:
                return waiter.view
        return None

    def _wake(self, failed: _Fetch | None = None) -> None:
        for waiter in list(self.waiters):
            if self.entry.ranges.contains(waiter.start, waiter.end):
                waiter.event.set()
            elif failed is not None and any(a < waiter.end and waiter.start < b for a, b in failed.claims):
                # It needed bytes of the failed (or cancelled: error None, so it re-plans) fetch.
                waiter.error = failed.error
                waiter.event.set()
            else:
                continue
            self.waiters.remove(waiter)

    def _serves(self, fetch: _Fetch, start: int, end: int) -> bool:
        """Would writing ``fetch``'s buffer now make all of ``[start, end)`` present?"""
        if not fetch.buf or start >= fetch.pos or end <= fetch.buf_start:
            return False
        return all(fetch.buf_start <= a and b <= fetch.pos for a, b in self.entry.ranges.gaps(start, end))

    # -- cancelling ---------------------------------------------------------------------------
    def cancel_all(self) -> None:
        """Nobody has the file open any more: stop every fetch, keeping what has arrived."""
        for fetch in self.fetches:
            fetch.scope.cancel()

    # -- the fetch task -----------------------------------------------------------------------
    async def _run(self, fetch: _Fetch) -> None:
        try:
            with fetch.scope:
                await self._transfer(fetch)
        except OpenAIFSError as exc:
            fetch.error = exc
        except Exception as exc:  # a bug below us must not end the mount: the readers get it
            log.exception("download of %s failed unexpectedly", self.entry.file_id)
            fetch.error = exc
        finally:
            try:
                self._finish(fetch)
            except Exception:  # never let a bug escape into the mount's nursery
                log.exception("finishing the download of %s failed", self.entry.file_id)
            self._task_done()

    async def _transfer(self, fetch: _Fetch) -> None:
        """Stream ``[fetch.start, fetch.end)`` into the cache file; see the module docstring."""
        batch = self.settings.write_batch
        file_id = self.entry.file_id
        try:
            body: Any = self.client.download(file_id, fetch.start, fetch.end)
            async with aclosing(body):  # an async generator: closed (its response too) on any exit
                async for piece in body:
                    if fetch.pos + len(piece) > fetch.end:
                        fetch.buf, fetch.buf_start = bytearray(), fetch.pos  # trust none of it
                        raise IntegrityError(f"received more than the {fetch.end - fetch.start} bytes "
                                             "asked for", operation="download", file_id=file_id)
                    self.stats.bytes_fetched += len(piece)
                    rest = memoryview(piece)
                    while rest:
                        # Buffers end at multiples of `batch` in the file, where the kernel's read
                        # requests (up to 1 MiB, aligned) end too: a read waiting for a buffer is
                        # then answered from that one buffer (see `view`).
                        take = min(len(rest), batch - fetch.pos % batch)
                        fetch.buf += rest[:take]
                        fetch.pos += take
                        rest = rest[take:]
                        if fetch.pos % batch == 0 or any(self._serves(fetch, w.start, w.end)
                                                         for w in self.waiters):
                            await self._write_behind(fetch)
            if fetch.pos != fetch.end:
                raise IntegrityError(
                    f"download ended after {fetch.pos - fetch.start} of {fetch.end - fetch.start} bytes",
                    operation="download", file_id=file_id)
        finally:
            with trio.CancelScope(shield=True):
                if fetch.buf:  # keep what arrived, even when cancelled (the sniffing-file-manager case)
                    await self._flush(fetch)
                while fetch.writes:
                    fetch.writes_done = trio.Event()
                    await fetch.writes_done.wait()
        if fetch.write_error is not None:
            raise fetch.write_error

    async def _write_behind(self, fetch: _Fetch) -> None:
        """Hand the buffer to a background write and go on receiving: the network and the disk
        overlap. One write in flight per fetch (waiting here is the back-pressure), so a fetch holds
        at most two buffers: about 2 x ``write_batch``."""
        if fetch.writing is not None:
            await fetch.writing.wait()
        if fetch.write_error is not None:
            raise fetch.write_error
        data, start = fetch.buf, fetch.buf_start
        fetch.buf, fetch.buf_start = bytearray(), fetch.pos
        fetch.writing = done = trio.Event()
        fetch.writes += 1  # counted now, not when the task starts: the fetch must wait for it
        self.nursery.start_soon(self._background_write, fetch, data, start, done)
        # The readers waiting for bytes of this buffer need not wait for the disk: they get a view
        # of it now (it is never changed again), and the write lands meanwhile. This takes the
        # write (a thread hop, ~0.3 ms per MiB) off the path of every read that waits.
        self.recent.append((start, data))
        data_end = start + len(data)
        for waiter in list(self.waiters):
            if start <= waiter.start and waiter.end <= data_end and not waiter.on_disk:
                waiter.view = memoryview(data)[waiter.start - start:waiter.end - start]
                waiter.event.set()
                self.waiters.remove(waiter)

    async def _background_write(self, fetch: _Fetch, data: bytearray, start: int, done: trio.Event) -> None:
        try:
            await self._write(fetch, data, start, counted=True)
        except CacheError as exc:
            fetch.write_error = exc
        except Exception as exc:  # never let a bug escape into the mount's nursery
            log.exception("writing downloaded bytes of %s failed", self.entry.file_id)
            fetch.write_error = CacheError(f"cannot write the cache file of {self.entry.file_id}: {exc}")
        finally:
            done.set()

    async def _flush(self, fetch: _Fetch) -> None:
        """Write the fetch's buffer now (a waiter needs it, or the fetch is ending)."""
        data, start = fetch.buf, fetch.buf_start
        if data:
            fetch.buf, fetch.buf_start = bytearray(), fetch.pos
            self.recent.append((start, data))
            await self._write(fetch, data, start)

    async def _write(self, fetch: _Fetch, data: bytearray, start: int, counted: bool = False) -> None:
        """Write received bytes to the cache file and mark them present (waking their readers)."""
        if not counted:
            fetch.writes += 1
        try:
            await self._write_and_mark(data, start)
        finally:
            fetch.writes -= 1
            if not fetch.writes and fetch.writes_done is not None:
                fetch.writes_done.set()

    async def _write_and_mark(self, data: bytearray, start: int) -> None:
        fd = self.entry.fd
        assert fd is not None, self.entry  # pinned: by the fetch, or by the waiting reader's handle
        # A worker thread, not the event loop: a 1 MiB pwrite took 0.3-2.8 ms here, and under
        # dirty-page writeback throttling it can block far longer, stalling every FUSE request. The
        # hop (~0.2 ms measured) is amortised over `write_batch` bytes and overlaps the next receive.
        # Shielded: bytes taken from a buffer must land, or a reader would wait for them for ever.
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(ContentStore.pwrite_all, fd, data, start)
            except OSError as exc:
                raise CacheError(f"cannot write the cache file of {self.entry.file_id}: {exc}") from exc
        self.store.mark_present(self.entry, start, start + len(data))
        self._wake()
        if self.entry.ranges.total - self.entry.committed_total >= self.settings.commit_every \
                or self.entry.complete:
            self._schedule_commit(self.entry)

    def _finish(self, fetch: _Fetch) -> None:
        self.fetches.discard(fetch)
        if self.stream is fetch:
            self.stream = None
        for a, b in fetch.claims:
            self.claimed.remove(a, b)
        entry_id = self.entry.file_id
        if fetch.error is not None:
            self.stats.failures += 1
            if isinstance(fetch.error, DownloadForbiddenError):
                self._on_forbidden(fetch.purpose, fetch.error)
            log.warning("download of %s bytes [%d, %d) failed at %d: %s", entry_id, fetch.start,
                        fetch.end, fetch.pos, fetch.error)
            self._wake(failed=fetch)
        elif fetch.scope.cancelled_caught:
            self.stats.cancelled += 1
            log.debug("download of %s [%d, %d) cancelled at %d; what arrived is kept", entry_id,
                      fetch.start, fetch.end, fetch.pos)
            self._wake(failed=fetch)  # re-plan: nobody should be waiting, but be safe
        else:
            self._wake()
        self._unpin(self.entry)  # the last pin going schedules the commit of what arrived
