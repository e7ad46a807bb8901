"""The content cache: file bytes fetched lazily from the Files API into local files, shared and kept.

What it owns: the bytes of files (never their metadata), on disk under ``<cache_dir>/content/``, and
the downloads that fill it. What it must never do: fetch anything before a ``read`` asks for it, block
the event loop on network or large disk work, hold more than a few MiB of a file in memory, or let a
crash make a partially fetched file look whole.

How a read is answered
    ``Content.open`` pins the file's cache entry (creating an empty sparse cache file if new) and does
    no network I/O. ``Content.read`` clips the request to the file size. If the entry already holds
    those bytes (a complete file, or a present range of a partial one), it answers with one
    ``preadv(RWF_NOWAIT)`` on the entry's open fd, right in the handler: a thread hop would halve the
    throughput of cached reads (PYFUSE3_NOTES §1.1: 317 vs 713 MiB/s). Only when those pages are not
    in the page cache (a remount, memory pressure) does the read go to a worker thread, so the disk
    never stalls the event loop. Otherwise it asks the file's ``Downloader`` to make the range
    present, waits for exactly that range, and answers with a view of the buffer that brought it
    when one buffer holds the whole range (still in memory: handed to the writer, or just written).

How bytes are fetched
    Every file being read has one ``Downloader``, shared by all its handles. It tracks the byte ranges
    some fetch has claimed, and starts fetches only for bytes neither present nor claimed, so any number
    of readers of one file cost one download. Each fetch streams the client's response into a buffer of
    up to ``WRITE_BATCH`` bytes, ending at a multiple of ``WRITE_BATCH`` in the file (where the
    kernel's aligned read requests end), written by a worker thread while the next buffer fills (so at
    most two per fetch are in memory, plus the last few written, kept for the readers waiting for
    them). A waiting reader is woken with a view of a buffer as soon as the fetch hands over one that
    holds its whole range (the write lands meanwhile), otherwise once its range is on disk (a buffer
    is handed over early when that would serve someone).

    Where the server honours Range, a fetch covers a chunk around the requested offset. Each handle
    keeps its access pattern: its first read, and any read that does not continue the previous one,
    fetches ``FIRST_CHUNK`` (128 KiB). A read that continues where the previous one ended is sequential:
    whenever less than a chunk is present-or-claimed ahead of it, the chunk size doubles (from
    ``CHUNK_MIN`` up to ``CHUNK_MAX``) and read-ahead fetches are started to keep ``READAHEAD_CHUNKS``
    chunks ahead, at most ``MAX_INFLIGHT`` at a time per file.

    Where the server ignores Range (the client says so after its first download), ranges cost a full
    body each, so there is one streaming download per file, from its first missing byte to its end;
    readers at any offset wait until their bytes arrive.

What a file manager costs
    File managers open every file to sniff its first KiB. The first fetch is small (128 KiB), and when
    a file's last handle is released every fetch still running for it is cancelled; the bytes that
    arrived are written and recorded, so the sniffed prefix stays cached for the next open.

Failures
    A fetch that fails (after the client's own retries) wakes the readers waiting on its bytes with its
    typed error (``fs.py`` maps it to an errno, EIO for most), logs a line naming the file id, and
    releases its claim, so the next read simply tries again: a failed chunk does not poison the file.
    ``DownloadForbiddenError`` also marks the purpose as refused for the rest of the mount: later opens
    of that purpose fail at once (EACCES) unless the file is completely cached.

Keeping it
    ``ContentStore`` keeps one sparse data file and one JSON sidecar per file id, under a name derived
    only from the SHA-256 of the id. The sidecar lists the present ranges, and is rewritten atomically,
    after an ``fdatasync`` of the data, only when a file completes, goes idle, or every
    ``COMMIT_EVERY`` bytes. So a crash can lose recently fetched bytes but never makes unfetched ones
    look present, and the next mount with the same directory reuses everything recorded. Whole files
    are evicted least-recently-used first, never while open, when the cache exceeds its size. An
    uploaded file can be adopted (its spool file moved in) so reading it back costs no download.

Shutdown: ``await content.aclose()`` before the nursery it was given is cancelled.
"""

from openaifs.content.downloader import ContentStats, DownloadClient, Downloader
from openaifs.content.facade import (
    CHUNK_MAX,
    CHUNK_MIN,
    COMMIT_EVERY,
    FIRST_CHUNK,
    MAX_INFLIGHT,
    READAHEAD_CHUNKS,
    WRITE_BATCH,
    Content,
    ContentHandle,
)
from openaifs.content.ranges import RangeSet
from openaifs.content.store import CacheBusyError, CacheEntry, CacheError, ContentStore, StoreStats, cache_key

__all__ = [
    "CHUNK_MAX",
    "CHUNK_MIN",
    "COMMIT_EVERY",
    "FIRST_CHUNK",
    "MAX_INFLIGHT",
    "READAHEAD_CHUNKS",
    "WRITE_BATCH",
    "CacheBusyError",
    "CacheEntry",
    "CacheError",
    "Content",
    "ContentHandle",
    "ContentStats",
    "ContentStore",
    "DownloadClient",
    "Downloader",
    "RangeSet",
    "StoreStats",
    "cache_key",
]
