"""The write spool for new files: bytes go to a local file, and a flush uploads them.

What it owns: one spool file per file being written, the state of that file (dirty, uploaded,
failed, discarded), the upload itself through the client, and the preservation of bytes whose
upload failed. What it must never do: lose bytes, or report success for bytes the server does not
have. It knows nothing of FUSE, inodes or the content cache; ``fs.py`` converts.

How it works
------------
``create`` opens a new spool file ``<cache>/spool/<session>/<token>.data`` (mode 0600) and writes a
small sidecar ``<token>.data.json`` naming the file and its purpose, so that a mount killed with
SIGKILL leaves enough behind for the next mount's :meth:`UploadSpool.recover` to say what the bytes
were. ``write`` and ``truncate`` go straight to the spool file with ``pwrite``/``ftruncate`` (local
disk, fast enough to stay on the handler's path, like the cache's ``pread``). A new file starts
dirty: ``touch x`` and ``cp empty x`` mean "make this file", which only an upload can do.

``commit`` runs from ``flush`` (every close(2)) and ``fsync``. Under the file's lock it uploads the
spool file if it is dirty, so two flushes at once upload once and a flush with nothing new is free.
Each write bumps a generation counter; a commit marks the file clean only if no write, truncate or
rename happened while its upload was in flight, otherwise the next flush uploads again.

Writes after a successful upload: the handle stays writable until release, and the next flush
uploads the whole file again as a new file; the caller then deletes the previous upload (new
first, old second: at every moment the server holds a complete copy; the caller deletes because it
also owns the content cache, which must forget the old id). The alternative, refusing such writes
with EACCES, is simpler but breaks honest programs whose fd was flushed early by a dup or a forked
child exiting (``exec 3>f; (child); echo more >&3``). Renaming a file that is uploaded but still
open works the same way: the next flush uploads under the new name, and the caller deletes the
old file.

On failure the spool file is moved (renamed, never copied) to ``<cache>/failed-uploads/`` under a
name that keeps the original filename recognisable, next to a JSON sidecar saying what it was and
why it failed, and :class:`~openaifs.errors.UploadError` carries that path. The handle still works
(writes land in the preserved file); every later flush reports the same failure. An earlier
successful upload of the same handle, if any, is left on the server untouched.

Names in ``failed-uploads/``: ``20251128T052100Z_9f2c4e1a_requests.jsonl`` and
``….jsonl.json``: a UTC time, a random token and the filename made safe by the naming rules
(``/`` → ``／``, control characters → control pictures), cut to fit NAME_MAX keeping its
extension. The token makes both names unique, so no failure can overwrite another's bytes, and no
filename can escape the directory.

Uploading while writing: a file written strictly in order from its first byte (``cp``, ``cat >``,
``rsync``) starts uploading once it holds ``stream_from`` bytes, in a request whose body follows the
writes (chunked, see :class:`_Stream`), so the upload overlaps the writing instead of following it.
Its flush then only finishes that request. The result is taken only if the file, at that flush, is
exactly what was streamed; anything else (a write elsewhere, a truncate, a rename, the single-request
limit reached, an unlink) abandons the stream (the server gets a cut-off request, which stores
nothing) and the flush uploads the usual way. A stream that failed counts as an earlier attempt of
that upload, so one that may have created the file is looked for before anything is sent again.

Two mounts may share one cache directory, so each ``UploadSpool`` writes into its own session
directory under ``spool/`` and holds an ``flock`` on its ``.lock`` for its lifetime; ``recover``
only takes over session directories whose lock nobody holds.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from openaifs import naming
from openaifs.client import EarlierAttempt, FileRecord
from openaifs.client.multipart import CHUNK
from openaifs.client.transport import Failure
from openaifs.config import SERVER_ONLY_PURPOSES
from openaifs.errors import (
    FileTooLargeError,
    LocalFileError,
    NotFoundError,
    OpenAIFSError,
    ServerOnlyPurposeError,
    UploadError,
    errno_for,
)
from openaifs.progress import Progress

SPOOL_DIR = "spool"
FAILED_DIR = "failed-uploads"
# The Uploads API takes at most 8 GB in one upload. "GB" is not defined further, so we read it as
# 10**9 bytes, the smaller reading: refusing at 8.0e9 is safe either way.
DEFAULT_MAX_FILE_BYTES = 8 * 10**9
_DATA = ".data"
_SIDECAR = ".json"
_LOCK = ".lock"
# Streams (uploads while writing) at once: each holds a connection for as long as its file is written.
MAX_STREAMS = 2

Adopt = Callable[["FileRecord", Path], None]


class UploadClient(Protocol):
    """The part of :class:`openaifs.client.FilesClient` the spool uses (the seam for tests)."""

    async def upload(
        self,
        path: Path,
        filename: str,
        purpose: str,
        *,
        expires_after: int | None = None,
        progress: Callable[[int], None] | None = None,
        earlier: EarlierAttempt | None = None,
    ) -> FileRecord: ...

    async def upload_streaming(self, filename: str, purpose: str, file: Any) -> FileRecord | Failure: ...

    async def delete(self, file_id: str) -> None: ...


class _Stream:
    """The upload of a file still being written (module docstring): its request sends the spool's
    bytes ``[0, fed)`` as they are written, and ends when ``finish`` is called at the flush."""

    def __init__(self, fd: int, fed: int) -> None:
        self.fd = fd  # its own read-only descriptor of the spool file, closed by the stream's task
        self.fed = fed
        self.finished = False
        self.abandoned = False
        self.started = time.time()
        self.wake = trio.Event()
        self.done = trio.Event()
        self.scope = trio.CancelScope()
        self.outcome: FileRecord | Failure | None = None  # None: cut off, or it could not start

    def more(self, fed: int) -> None:
        self.fed = fed
        self.wake.set()

    def finish(self) -> None:
        self.finished = True
        self.wake.set()

    def abandon(self) -> None:
        self.abandoned = True
        self.scope.cancel()


class _StreamFeed:
    """A stream's file bytes for the request body. A class, not an async generator: see multipart.py."""

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream
        self._pos = 0

    def __aiter__(self) -> _StreamFeed:
        return self

    async def __anext__(self) -> bytes:
        s = self._stream
        while self._pos >= s.fed:
            if s.finished:
                raise StopAsyncIteration
            s.wake = trio.Event()
            await s.wake.wait()
        # Just written, so in the page cache: read here, like the writes themselves.
        data = os.pread(s.fd, min(CHUNK, s.fed - self._pos), self._pos)
        if not data:
            raise LocalFileError(f"the spool file ended at byte {self._pos} of the {s.fed} written")
        self._pos += len(data)
        return data


@dataclass(eq=False)
class PendingFile:
    """One new file being written: its spool file and upload state.

    ``filename``/``purpose`` may change by rename. ``spool_path`` is where the bytes are now (in
    ``failed-uploads/`` after a failure). ``record`` is the latest successful upload.
    """

    filename: str
    purpose: str
    spool_path: Path
    fd: int
    size: int = 0
    dirty: bool = True
    record: FileRecord | None = None
    preserved_at: Path | None = None
    discarded: bool = False
    released: bool = False
    _generation: int = 0
    _lock: trio.Lock = field(default_factory=trio.Lock, repr=False)
    _committing: bool = False
    _failure: UploadError | None = field(default=None, repr=False)
    # Written so far only by appends from byte 0, and never streamed: it may still start a stream.
    streamable: bool = True
    stream: _Stream | None = field(default=None, repr=False)
    # release() arrived while a commit was in flight; the commit finishes the release.
    _deferred_release: tuple[Adopt | None] | None = field(default=None, repr=False)

    @property
    def sidecar_path(self) -> Path:
        return _sidecar_of(self.spool_path)

    @property
    def failed(self) -> bool:
        return self._failure is not None


@dataclass
class UploadStats:
    uploaded: int = 0
    bytes_uploaded: int = 0
    failed: int = 0
    streamed: int = 0  # uploads that overlapped the writing


class UploadSpool:
    """All files being written by one mount. Methods run on the trio thread; only fsync leaves it."""

    def __init__(
        self,
        client: UploadClient,
        cache_dir: Path,
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        log: logging.Logger | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.max_file_bytes = max_file_bytes
        self._log = log or logging.getLogger(__name__)
        self._now = now
        self.spool_root = _private_dir(Path(cache_dir) / SPOOL_DIR)
        self.failed_dir = _private_dir(Path(cache_dir) / FAILED_DIR)
        self.session_dir = _private_dir(self.spool_root / f"{os.getpid()}-{secrets.token_hex(4)}")
        self._lock_fd = os.open(self.session_dir / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._files: set[PendingFile] = set()
        self._inflight = 0
        self._idle = trio.Event()
        self._idle.set()
        self.stats = UploadStats()
        self._nursery: trio.Nursery | None = None
        self._stream_from = 0
        self._stream_max = 0
        self._streams = 0

    def enable_streaming(self, nursery: trio.Nursery, *, start_at: int, max_bytes: int) -> None:
        """Upload files while they are written (module docstring): from ``start_at`` bytes (0: never),
        up to ``max_bytes`` (what one request may carry)."""
        self._nursery = nursery
        self._stream_from = start_at
        self._stream_max = max_bytes

    # -- the handle's life ----------------------------------------------------------------------
    def create(self, filename: str, purpose: str) -> PendingFile:
        """Start a new file; ServerOnlyPurposeError (EACCES) where the API takes no uploads."""
        _check_purpose(purpose)
        path = self.session_dir / f"{secrets.token_hex(8)}{_DATA}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        pf = PendingFile(filename, purpose, path, fd)
        try:
            self._write_spool_sidecar(pf, strict=True)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._files.add(pf)
        return pf

    def write(self, pf: PendingFile, offset: int, data: bytes) -> int:
        """Write at ``offset``; FileTooLargeError (EFBIG) past the upload limit."""
        _check_open(pf)
        end = offset + len(data)
        if end > self.max_file_bytes:
            raise FileTooLargeError(self._too_large(pf, end))
        appending = offset == pf.size
        view = memoryview(data)
        pos = offset
        while view:  # pwrite on a regular file writes everything or raises, but never trust it
            n = os.pwrite(pf.fd, view, pos)
            view, pos = view[n:], pos + n
        if data:
            pf.size = max(pf.size, end)
        self._touch(pf)
        if not appending:
            self._abandon(pf, "written out of order")
        elif pf.stream is not None:
            if end <= self._stream_max:
                pf.stream.more(end)
            else:
                self._abandon(pf, "too big for one request")
        elif pf.streamable and self._stream_from and end >= self._stream_from:
            self._start_stream(pf)
        return len(data)

    def read(self, pf: PendingFile, offset: int, size: int) -> bytes:
        """Read back what was written (a file being written is read from its spool)."""
        _check_open(pf)
        return os.pread(pf.fd, size, offset)

    def truncate(self, pf: PendingFile, size: int) -> None:
        _check_open(pf)
        if size > self.max_file_bytes:
            raise FileTooLargeError(self._too_large(pf, size))
        os.ftruncate(pf.fd, size)
        pf.size = size
        self._touch(pf)
        self._abandon(pf, "truncated")

    async def commit(self, pf: PendingFile) -> FileRecord | None:
        """Upload if dirty (flush, fsync). None when there was nothing to do.

        A record that differs from the ``pf.record`` before the call replaces it: the caller
        deletes the earlier one. Raises UploadError (with ``preserved_at``) when the upload
        failed, and again on every later commit of that handle.
        """
        async with pf._lock:
            if pf._failure is not None:
                raise _again(pf._failure)
            if pf.discarded or pf.released or not pf.dirty:
                return None
            return await self._upload(pf)

    def rename(self, pf: PendingFile, filename: str, purpose: str) -> None:
        """Rename a file not yet released. Already uploaded (or uploading): the next flush uploads
        under the new name and deletes the old file."""
        _check_purpose(purpose)
        if (pf.filename, pf.purpose) == (filename, purpose):
            return
        self._abandon(pf, "renamed")  # its request carries the old name
        pf.filename, pf.purpose = filename, purpose
        if pf.discarded or pf.failed:
            return
        if pf.record is not None or pf._committing:
            pf.dirty = True
            pf._generation += 1
        self._write_spool_sidecar(pf)

    def discard(self, pf: PendingFile) -> FileRecord | None:
        """unlink: drop the spool. Returns the upload the caller must delete on the server, if any.

        A commit in flight finishes first and then deletes what it uploaded. Preserved bytes of a
        failed upload are never discarded.
        """
        self._abandon(pf, "deleted")
        record, pf.record = pf.record, None
        pf.discarded = True
        pf.dirty = False
        if not pf.failed and not pf._committing:
            _unlink_spool(pf)
        return record

    def release(self, pf: PendingFile, adopt: Adopt | None = None) -> None:
        """The last handle closed. A clean upload's spool file is offered to ``adopt(record, path)``
        (the content cache may take it by rename) and otherwise removed; dirty bytes are preserved."""
        if pf.released:
            return
        if pf._committing:  # cannot happen through the kernel (flush precedes release); be safe
            pf._deferred_release = (adopt,)
            return
        self._finish(pf, adopt)

    # A bounded wait that answers True/False is what unmount needs (it logs and goes on either way),
    # so the timeout is a parameter rather than the caller's cancel scope.
    async def wait_idle(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait (bounded) until no upload is in flight; False if some still were after ``timeout``."""
        if self._inflight == 0:
            return True
        self._log.info("waiting up to %.0f s for %d upload(s) in flight", timeout, self._inflight)
        with trio.move_on_after(timeout):
            await self._idle.wait()
            return True
        names = ", ".join(f"{pf.purpose}/{pf.filename}" for pf in self._files if pf._committing)
        self._log.warning("gave up waiting after %.0f s for uploads in flight: %s", timeout, names)
        return False

    def close(self, reason: str = "the filesystem was unmounted before the file was uploaded") -> list[Path]:
        """At unmount: preserve every file still dirty, close every spool, drop the session."""
        kept: list[Path] = []
        if self._lock_fd < 0:
            return kept
        for pf in list(self._files):
            if pf._committing:  # still uploading after wait_idle gave up: the next recover() keeps it
                self._log.warning("%r for %s was still uploading at unmount", pf.filename, pf.purpose)
                continue
            if pf.dirty and not (pf.discarded or pf.failed):
                kept.append(self._preserve(pf, reason, None))
            self._finish(pf, None)
        os.close(self._lock_fd)  # releases the flock
        self._lock_fd = -1
        _remove_session(self.session_dir)
        return kept

    def recover(self) -> list[Path]:
        """At mount start: move spool files of mounts that died to ``failed-uploads/``."""
        kept: list[Path] = []
        for session in sorted(self.spool_root.iterdir()):
            if session == self.session_dir or not session.is_dir():
                continue
            lock_fd = _try_lock(session / _LOCK)
            if lock_fd is None:  # a live mount shares this cache dir
                continue
            try:
                for data in sorted(session.glob("*" + _DATA)):
                    try:
                        kept.append(self._recover_one(data))
                    except OSError as exc:
                        self._log.error("could not move %s to %s: %s", data, self.failed_dir, exc)
            finally:
                os.close(lock_fd)
            _remove_session(session)
        return kept

    # -- internals --------------------------------------------------------------------------------
    def _touch(self, pf: PendingFile) -> None:
        if not pf.dirty and pf.record is not None and not pf.failed and not pf.discarded:
            pf.dirty = True
            self._write_spool_sidecar(pf)  # the spool no longer equals the upload named there
        pf.dirty = True
        pf._generation += 1

    async def _upload(self, pf: PendingFile) -> FileRecord | None:
        generation, filename, purpose, size = pf._generation, pf.filename, pf.purpose, pf.size
        stream, pf.stream = pf.stream, None
        if stream is not None and stream.fed != size:  # cannot happen (every write feeds it); be safe
            stream.abandon()
            stream = None
        self._busy(+1)
        pf._committing = True
        try:
            try:
                if stream is not None:
                    stream.finish()  # first: the request's last bytes go out while the disk syncs
                # On disk before the network: if the mount dies mid-upload, recover() finds the bytes.
                await trio.to_thread.run_sync(os.fsync, pf.fd)
                record = await self._streamed(stream, size, filename, purpose) if stream is not None else None
                if record is None:
                    progress = Progress(f"uploading {purpose}/{filename}", size)
                    earlier = None if stream is None else EarlierAttempt(
                        stream.started, isinstance(stream.outcome, Failure) and stream.outcome.reached)
                    record = await self._client.upload(pf.spool_path, filename, purpose, progress=progress,
                                                       earlier=earlier)
                    progress.finish()
                    if stream is not None:
                        self._refused_streaming(stream.outcome)
            except Exception as exc:
                # Also when the file was truncated under the upload (the client then refuses it):
                # reporting success for a flush whose bytes never arrived would be a lie.
                return self._failed(pf, exc, filename, purpose)
            return await self._uploaded(pf, record, generation, (filename, purpose), size)
        finally:
            pf._committing = False
            self._busy(-1)
            if pf._deferred_release is not None:
                (adopt,) = pf._deferred_release
                self._finish(pf, adopt)

    async def _streamed(self, stream: _Stream, size: int, filename: str, purpose: str) -> FileRecord | None:
        """A finished stream's record when it uploaded exactly this file, else None (then the caller
        uploads the usual way)."""
        await stream.done.wait()
        outcome = stream.outcome
        if isinstance(outcome, FileRecord):
            if (outcome.bytes, outcome.filename, outcome.purpose) == (size, filename, purpose):
                self.stats.streamed += 1
                return outcome
            self._log.error("the upload of %r streamed while writing came back as %s (%d bytes, %r in %s); "
                            "uploading again", filename, outcome.id, outcome.bytes, outcome.filename, outcome.purpose)
            await self._delete(outcome, "it did not match the file")
        elif isinstance(outcome, Failure):
            self._log.info("the upload of %r while writing failed (%s); uploading again", filename,
                           outcome.describe())
        return None

    def _refused_streaming(self, outcome: FileRecord | Failure | None) -> None:
        """A streamed attempt got a 4xx, and the same bytes then went up in one piece: this server
        does not take chunked uploads (the hosted API's stance is unknown). Stop streaming."""
        if (isinstance(outcome, Failure) and outcome.status is not None and 400 <= outcome.status < 500
                and outcome.status not in (408, 409, 429)):  # those say "later", not "not like this"
            self._log.warning("the server refused an upload sent while its file was written (%s) but took the "
                              "finished file: files are uploaded after they are written from now on",
                              outcome.describe())
            self._stream_from = 0

    def _start_stream(self, pf: PendingFile) -> None:
        pf.streamable = False  # one stream per file: if it fails, the flush uploads the usual way
        if (self._nursery is None or self._streams >= MAX_STREAMS or pf.size > self._stream_max
                or pf.record is not None or pf._committing or pf.failed or pf.discarded):
            return
        try:
            fd = os.open(pf.spool_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._log.warning("cannot upload %r while it is written: %s", pf.filename, exc)
            return
        stream = pf.stream = _Stream(fd, pf.size)
        self._streams += 1
        self._nursery.start_soon(self._run_stream, stream, pf.filename, pf.purpose,
                                 name=f"upload {pf.purpose}/{pf.filename} while written")

    async def _run_stream(self, stream: _Stream, filename: str, purpose: str) -> None:
        try:
            with stream.scope:
                stream.outcome = await self._client.upload_streaming(filename, purpose, _StreamFeed(stream))
            if stream.abandoned and isinstance(stream.outcome, FileRecord):  # answered just as it was cut
                await self._delete(stream.outcome, "its file changed while it was uploaded")
                stream.outcome = None
        except Exception:  # a background task must not end the mount; the flush uploads anyway
            self._log.exception("uploading %r while it was written failed", filename)
            stream.outcome = None
        finally:
            os.close(stream.fd)
            self._streams -= 1
            stream.done.set()

    def _abandon(self, pf: PendingFile, why: str) -> None:
        pf.streamable = False
        stream, pf.stream = pf.stream, None
        if stream is not None:
            self._log.debug("stopped uploading %r while it was written: %s", pf.filename, why)
            stream.abandon()

    def _failed(self, pf: PendingFile, exc: Exception, filename: str, purpose: str) -> None:
        if pf.discarded:  # unlinked meanwhile: nobody wants these bytes any more
            self._log.info("upload of %r to %s failed after it was deleted: %s", filename, purpose, exc)
            _unlink_spool(pf)
            return None
        if not isinstance(exc, OpenAIFSError | OSError):
            self._log.error("unexpected error uploading %r", filename, exc_info=exc)
        reason = f"the upload failed: {exc}"
        kept = self._preserve(pf, reason, exc)
        error = UploadError(filename, purpose, exc, preserved_at=str(kept))
        pf._failure = error
        self.stats.failed += 1
        self._log.error("%s", error)
        raise error

    async def _uploaded(
        self, pf: PendingFile, record: FileRecord, generation: int, identity: tuple[str, str], size: int
    ) -> FileRecord | None:
        self.stats.uploaded += 1
        self.stats.bytes_uploaded += size
        if pf.discarded:  # unlinked while uploading: the unlink wins
            _unlink_spool(pf)
            await self._delete(record, "it was deleted while uploading")
            return None
        pf.record = record
        if pf._generation == generation and (pf.filename, pf.purpose) == identity:
            pf.dirty = False
            self._write_spool_sidecar(pf)
        # else: written or renamed meanwhile; stays dirty and the next flush uploads again.
        return record

    async def _delete(self, record: FileRecord, why: str) -> None:
        try:
            await self._client.delete(record.id)
        except NotFoundError:
            pass
        except OpenAIFSError as exc:
            self._log.warning(
                "could not delete %s (%s) although %s: %s", record.id, record.filename, why, exc
            )

    def _finish(self, pf: PendingFile, adopt: Adopt | None) -> None:
        self._abandon(pf, "closed without a flush")
        pf.released = True
        pf._deferred_release = None
        self._files.discard(pf)
        if not (pf.discarded or pf.failed) and pf.dirty:
            self._preserve(pf, "the file was closed without a successful flush", None)
        os.close(pf.fd)
        if pf.failed:
            self._update_failed_size(pf)
            return
        if pf.discarded:
            return
        pf.sidecar_path.unlink(missing_ok=True)
        record = pf.record
        if adopt is not None and record is not None and record.bytes == pf.size:
            try:
                adopt(record, pf.spool_path)
            except Exception:
                self._log.warning("the content cache did not take %s", record.id, exc_info=True)
        pf.spool_path.unlink(missing_ok=True)

    def _preserve(self, pf: PendingFile, reason: str, exc: BaseException | None) -> Path:
        """Move the spool file into failed-uploads/ with its sidecar; returns where it went."""
        source, old_sidecar = pf.spool_path, pf.sidecar_path
        # An earlier flush of this handle uploaded an older version of these bytes.
        extra = {"earlier_upload": pf.record.id} if pf.record is not None else {}
        try:
            target = self._move_to_failed(source, pf.filename, pf.purpose, reason, pf.size, exc, extra)
        except OSError as move_error:  # the bytes stay in the spool; the next recover() moves them
            self._log.error("could not move %s to %s: %s", source, self.failed_dir, move_error)
            target = source
        else:
            if old_sidecar.parent == self.session_dir:
                old_sidecar.unlink(missing_ok=True)
        pf.spool_path = pf.preserved_at = target
        if exc is None:
            pf._failure = UploadError(pf.filename, pf.purpose, OSError(errno.EIO, reason), str(target))
            self._log.error("%s", pf._failure)
        pf.dirty = False
        return target

    def _move_to_failed(
        self,
        source: Path,
        filename: str,
        purpose: str,
        reason: str,
        size: int,
        exc: BaseException | None,
        extra: dict[str, Any],
    ) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._now()))
        while True:
            prefix = f"{stamp}_{secrets.token_hex(4)}_"
            name = prefix + failed_name(filename, budget=naming.NAME_MAX - len(prefix) - len(_SIDECAR))
            target = self.failed_dir / name
            if not target.exists() and not _sidecar_of(target).exists():
                break
        info: dict[str, Any] = {
            "filename": filename,
            "purpose": purpose,
            "reason": reason,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._now())),
            "size": size,
            "data": name,
            **extra,
        }
        if exc is not None:
            info["errno"] = errno.errorcode.get(errno_for(exc), "EIO")
        os.rename(source, target)  # the bytes first: a missing sidecar is a nuisance, lost bytes are not
        try:
            _write_json(_sidecar_of(target), info)
        except OSError as sidecar_error:
            self._log.warning("could not write %s: %s", _sidecar_of(target), sidecar_error)
        return target

    def _recover_one(self, data: Path) -> Path:
        sidecar = _sidecar_of(data)
        try:
            info = json.loads(sidecar.read_text(encoding="utf-8"))
            filename, purpose = str(info["filename"]), str(info["purpose"])
        except (OSError, ValueError, KeyError, TypeError):
            info, filename, purpose = {}, data.name, "unknown"
        reason = "the mount writing this file stopped (crashed or was killed) before the upload finished"
        extra = {}
        if info.get("uploaded_as"):
            extra["uploaded_as"] = info["uploaded_as"]
            reason = f"the mount stopped after uploading this file as {info['uploaded_as']}; a spare copy"
        target = self._move_to_failed(data, filename, purpose, reason, data.stat().st_size, None, extra)
        sidecar.unlink(missing_ok=True)
        self._log.error("%r for %s was never confirmed uploaded (%s); its bytes are kept at %s",
                        filename, purpose, reason, target)
        return target

    def _write_spool_sidecar(self, pf: PendingFile, strict: bool = False) -> None:
        """What recover() needs to know of a spool file. Only create() fails on an error here: later
        rewrites are advisory, and a full disk must not turn a finished upload into an error."""
        if pf.spool_path.parent != self.session_dir:  # preserved or recovered: its sidecar is final
            return
        info: dict[str, Any] = {"filename": pf.filename, "purpose": pf.purpose, "pid": os.getpid()}
        if pf.record is not None and not pf.dirty:
            info["uploaded_as"] = pf.record.id
        try:
            _write_json(pf.sidecar_path, info)
        except OSError as exc:
            if strict:
                raise
            self._log.warning("could not write %s: %s", pf.sidecar_path, exc)

    def _update_failed_size(self, pf: PendingFile) -> None:
        sidecar = _sidecar_of(pf.spool_path)
        try:
            info = json.loads(sidecar.read_text(encoding="utf-8"))
            if info.get("size") != pf.size:
                info["size"] = pf.size
                _write_json(sidecar, info)
        except (OSError, ValueError) as exc:
            self._log.warning("could not update %s: %s", sidecar, exc)

    def _busy(self, delta: int) -> None:
        if self._inflight == 0 and delta > 0:
            self._idle = trio.Event()
        self._inflight += delta
        if self._inflight == 0:
            self._idle.set()

    def _too_large(self, pf: PendingFile, size: int) -> str:
        return (f"{pf.filename!r} would grow to {size} bytes; one upload takes at most "
                f"{self.max_file_bytes} bytes")


def failed_name(filename: str, budget: int) -> str:
    """``filename`` as one safe path component of at most ``budget`` UTF-8 bytes, keeping its extension."""
    safe = naming.sanitize(filename, "unnamed")
    if len(safe.encode()) <= budget:
        return safe
    stem, ext = naming.split_ext(safe)
    if len(ext.encode()) >= budget:
        stem, ext = safe, ""
    cut = stem.encode()[: budget - len(ext.encode())].decode("utf-8", errors="ignore")
    return cut + ext


def _check_purpose(purpose: str) -> None:
    if purpose in SERVER_ONLY_PURPOSES:
        raise ServerOnlyPurposeError(purpose)


def _check_open(pf: PendingFile) -> None:
    if pf.released:
        raise RuntimeError(f"{pf.filename!r} was already released")


def _again(error: UploadError) -> UploadError:
    """A fresh exception with the same facts: re-raising one object would pile up tracebacks."""
    return UploadError(error.filename, error.purpose, error.cause, error.preserved_at)


def _unlink_spool(pf: PendingFile) -> None:
    pf.spool_path.unlink(missing_ok=True)
    pf.sidecar_path.unlink(missing_ok=True)


def _sidecar_of(data: Path) -> Path:
    return data.with_name(data.name + _SIDECAR)


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is masked by umask, and an old directory may be wider
    return path


def _write_json(path: Path, info: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``info`` as JSON (mode 0600)."""
    try:
        raw = json.dumps(info, ensure_ascii=False, indent=2).encode("utf-8")
    except UnicodeEncodeError:  # a filename with lone surrogates: keep it exact, as \\u escapes
        raw = json.dumps(info, indent=2).encode("ascii")
    tmp = path.with_name(f".{secrets.token_hex(4)}.tmp")  # short: ``path`` may already be NAME_MAX long
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, raw + b"\n")
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _try_lock(path: Path) -> int | None:
    """An fd holding ``path``'s flock, or None when another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _remove_session(session: Path) -> None:
    """Remove a session directory holding nothing but its lock and stale sidecars."""
    for leftover in session.iterdir():
        data = leftover.with_name(leftover.name.removesuffix(_SIDECAR))
        if leftover.suffix == _DATA or (leftover.suffix == _SIDECAR and data.exists()):
            continue  # bytes that could not be moved, or their sidecar: the next recover() tries again
        leftover.unlink(missing_ok=True)
    try:
        session.rmdir()
    except OSError:
        pass  # a data file is still there (it could not be moved): keep it for the next recover()
