"""FilesClient: the async client for ``/files`` and ``/uploads``; pagination, streaming, retries.

Owns every HTTP exchange with the Files API. It must never read a whole file into memory, never
block the trio loop on disk (file reads go to worker threads), never let a raw httpx exception out
(everything raised is an ``OpenAIFSError``), and never put the API key in a message or log line.

Listing follows ``after`` cursors until ``has_more`` is false or a page comes back empty; short pages
are normal (FILES_API.md §3.2). Downloads yield exactly the bytes [start, end) or raise: the first
download probes whether the server honours ``Range`` (206) or not (200) and the answer is kept for
the client's life; a broken stream resumes from the next byte (with Range) or restarts and skips
(without). Uploads stream a multipart body from disk, switching to the Uploads API (parts in
parallel, md5 in a thread, cancel on failure) above ``single_upload_limit``.

A ``POST /files`` or ``complete`` that fails after the server may have acted on it (a 5xx, a timeout,
a dropped connection) is not blindly repeated: before every further attempt the client lists the
purpose's newest files and adopts one with the same filename and size created since the upload
began, so a lost answer never leaves a duplicate behind.
"""

from __future__ import annotations

import json as _jsonlib
import logging
import math
import os
import random
import re
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore
import httpx
import trio

from openaifs.client.multipart import (
    BytesBody,
    FileSlice,
    GrowingMultipartBody,
    MultipartBody,
    guess_mime_type,
    md5_of_fd,
    part_content_type,
)
from openaifs.client.records import (
    ClientStats,
    FilePage,
    FileRecord,
    completed_file_from_json,
    expect_object,
    part_id_from_json,
    upload_id_from_json,
)
from openaifs.client.transport import (
    ERROR_BODY_LIMIT,
    HTTPX_ERRORS,
    BrokenBody,
    Budget,
    Failure,
    failure_from_exception,
    failure_from_response,
)
from openaifs.config import ClientConfig
from openaifs.errors import IntegrityError, LocalFileError, OpenAIFSError, TransportError

log = logging.getLogger("openaifs.client")

# Route names match the local server's stats keys, so tests can compare the two directly.
LIST, CREATE, RETRIEVE, DELETE, CONTENT = (
    "files.list",
    "files.create",
    "files.retrieve",
    "files.delete",
    "files.content",
)
UP_CREATE, UP_PARTS, UP_COMPLETE, UP_CANCEL = (
    "uploads.create",
    "uploads.parts",
    "uploads.complete",
    "uploads.cancel",
)

# A download that delivered this much since its last failure earns a fresh retry budget: a long
# stream over a flaky link may break many times, each time after real progress, and must not fail
# for that; a server that breaks again and again without progress still exhausts the budget.
PROGRESS_RESETS_BUDGET = 1024 * 1024
# Files created by an earlier attempt of an upload are looked for from this long before it began:
# created_at is whole seconds from the server's clock, ours may be a little ahead.
DEDUP_SLACK = 2.0
# The look-back listing for a lost upload answer asks for small pages: it stops at the first file
# older than the upload, which on a busy account is near the front.
DEDUP_PAGE = 100
# Best effort to cancel a failed multipart upload; it would expire within the hour anyway.
CANCEL_TIMEOUT = 10.0
# Closing a response we stop reading touches only the local socket; a second is plenty.
ABANDON_TIMEOUT = 1.0
# Bytes asked of the socket per read of a response body. httpcore asks 64 KiB, and each read then
# travels through h11 and five layers of async generators (tens of microseconds of Python, whatever
# its size): at loopback speed that, not the copying, was the cost of a download. 1 MiB per read
# took FilesClient.download from ~1.0 to ~1.6 GB/s and a cold `dd` through the mount from ~420 to
# ~590 MiB/s (bench.py); a slow link still hands over whatever has arrived, so latency is unchanged.
SOCKET_READ_BYTES = 1024 * 1024

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


class FilesClient:
    """Async client for the OpenAI Files and Uploads APIs over an injected ``httpx.AsyncClient``."""

    def __init__(
        self,
        config: ClientConfig,
        http: httpx.AsyncClient,
        *,
        sleep: Callable[[float], Awaitable[Any]] = trio.sleep,
        clock: Callable[[], float] = trio.current_time,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._http = http
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._base = config.base_url.rstrip("/")
        self._range: bool | None = None
        # Ids this client has handed out from upload(): a look-back for a lost answer must never
        # adopt a file that another upload of this mount already returned.
        self._claimed: set[str] = set()
        # Uploads of the same (purpose, filename, size) run one at a time: otherwise one whose answer
        # was lost could adopt the other's file while its own became a duplicate.
        self._same_upload_locks: dict[tuple[str, str, int], tuple[trio.Lock, int]] = {}
        self.stats = ClientStats()

    # -- construction ---------------------------------------------------------------------------
    @staticmethod
    def make_http(config: ClientConfig) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` with our headers, timeouts and a bounded connection pool."""
        # httpcore has no per-client setting for its read size, only this class attribute, so it
        # applies to every HTTP/1.1 connection of the process (a mount has no others).
        httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = SOCKET_READ_BYTES
        headers = {"User-Agent": config.user_agent, "Accept": "application/json"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        if config.organization:
            headers["OpenAI-Organization"] = config.organization
        if config.project:
            headers["OpenAI-Project"] = config.project
        # Writes and waits for a free pooled connection get the read timeout: each is "the other
        # side stopped taking bytes", and a whole upload may rightly take longer than any of them.
        timeout = httpx.Timeout(
            connect=config.connect_timeout,
            read=config.read_timeout,
            write=config.read_timeout,
            pool=config.read_timeout,
        )
        limits = httpx.Limits(
            max_connections=config.max_connections, max_keepalive_connections=config.max_connections
        )
        return httpx.AsyncClient(
            base_url=config.base_url, headers=headers, timeout=timeout, limits=limits, follow_redirects=False
        )

    # -- metadata -------------------------------------------------------------------------------
    async def list_files(self, purpose: str | None = None) -> AsyncIterator[FileRecord]:
        """Every file (of one purpose, if given), newest first, following cursors over all pages."""
        params: dict[str, Any] = {"limit": self._config.list_page_size}
        if purpose is not None:
            params["purpose"] = purpose
        async with aclosing(self._pages(params)) as records:
            async for record in records:
                yield record

    async def list_all(self, purpose: str | None = None) -> list[FileRecord]:
        return [record async for record in self.list_files(purpose)]

    async def retrieve(self, file_id: str) -> FileRecord:
        """The File object of ``file_id``; NotFoundError if the server does not know it."""
        response = await self._call(RETRIEVE, "retrieve", "GET", self._file_path(file_id), file_id=file_id)
        return FileRecord.from_json(_json(response, "file object"))

    async def delete(self, file_id: str) -> None:
        """Delete ``file_id``; NotFoundError if the server does not know it (the caller decides)."""
        response = await self._call(DELETE, "delete", "DELETE", self._file_path(file_id), file_id=file_id)
        obj = expect_object(_json(response, "delete response"), "delete response")
        if obj.get("deleted") is False:
            raise TransportError(
                "the server answered that the file was not deleted", operation="delete", file_id=file_id
            )

    async def range_supported(self) -> bool | None:
        """Whether the server honours Range on downloads; None until the first download asked."""
        return self._range

    async def _pages(self, params: dict[str, Any]) -> AsyncIterator[FileRecord]:
        seen_cursors: set[str] = set()
        while True:
            response = await self._call(LIST, "list", "GET", "/files", params=params)
            page = FilePage.from_json(_json(response, "file list"))
            if page.skipped:
                log.warning("the listing has %d malformed file object(s), left out: %s", len(page.skipped),
                            "; ".join(page.skipped[:3]))
            for record in page.records:
                yield record
            if not page.records or page.has_more is False:
                return
            cursor = page.last_id or page.records[-1].id
            if cursor in seen_cursors:
                raise TransportError(f"the server repeated the page after {cursor}", operation="list")
            seen_cursors.add(cursor)
            params = {**params, "after": cursor}

    # -- downloads ------------------------------------------------------------------------------
    async def download(self, file_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Yield exactly the bytes [start, end) of ``file_id``, resuming broken streams, or raise.

        Use it under ``contextlib.aclosing`` when you may stop early, so the connection is released
        at once. Retries and resumes share one budget, renewed by each MiB of progress.
        """
        if start < 0 or end < start:
            raise ValueError(f"bad byte range [{start}, {end})")
        state = _DownloadState(file_id, start, end)
        budget = self._budget()
        while state.pos < end:
            before = state.pos
            failure: Failure | None = None
            try:
                async with aclosing(self._download_attempt(state)) as pieces:
                    async for piece in pieces:
                        yield piece
            except _AttemptFailed as exc:
                failure = exc.failure
            if failure is None:
                if state.pos < end:
                    budget.reset()  # a 206 shorter than asked: legal; ask for the rest
                continue
            if state.pos - before >= PROGRESS_RESETS_BUDGET:
                budget.reset()
            await budget.wait_or_raise(failure)
        if state.pos != end:  # cannot happen; the promise is worth a check
            raise IntegrityError(
                f"delivered {state.pos - start} bytes instead of {end - start}",
                operation="download",
                file_id=file_id,
            )

    async def _download_attempt(self, state: _DownloadState) -> AsyncIterator[bytes]:
        """One GET: yields the bytes it adds at state.pos; raises _AttemptFailed for a retry."""
        use_range = self._range is not False
        # identity: a compressed body would make Content-Length and byte offsets mean other things.
        headers = {"Accept": "application/binary", "Accept-Encoding": "identity"}
        if use_range:
            headers["Range"] = f"bytes={state.pos}-{state.end - 1}"
        self.stats.requests[CONTENT] += 1
        url = self._url(self._file_path(state.file_id) + "/content")
        try:
            async with self._http.stream("GET", url, headers=headers) as response:
                if not response.is_success:
                    body = await _read_bounded(response)
                    raise _AttemptFailed(
                        failure_from_response(response, body, CONTENT, "download", state.file_id)
                    )
                skip = self._plan_download(response, state, use_range)
                async with aclosing(self._body_pieces(response, state, skip)) as pieces:
                    async for piece in pieces:
                        yield piece
        except HTTPX_ERRORS as exc:
            raise _AttemptFailed(failure_from_exception(exc, CONTENT, "download", state.file_id)) from exc
        except BrokenBody as exc:
            raise _AttemptFailed(failure_from_exception(exc, CONTENT, "download", state.file_id)) from exc

    def _plan_download(self, response: httpx.Response, state: _DownloadState, asked_range: bool) -> int:
        """Check what the server is sending against what we want; the number of bytes to skip."""
        fid = state.file_id
        if response.status_code == 206:
            if self._range is not True:
                log.debug("the server honours Range on downloads")
            self._range = True
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if not match or int(match.group(1)) != state.pos:
                raise IntegrityError(
                    f"asked for bytes from {state.pos}, the server sent "
                    f"{response.headers.get('content-range', 'no Content-Range')!r}",
                    operation="download",
                    file_id=fid,
                )
            total = match.group(3)
            if total != "*" and int(total) < state.end:
                raise _short_file(fid, int(total), state)
            state.body_end = int(match.group(2)) + 1
            return 0
        if asked_range and self._range is not False:
            log.info("the server ignores Range on downloads; reading from the start and skipping instead")
            self._range = False
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) < state.end:
            raise _short_file(fid, int(length), state)
        state.body_end = None
        return state.pos

    async def _body_pieces(
        self, response: httpx.Response, state: _DownloadState, skip: int
    ) -> AsyncIterator[bytes]:
        encoded = response.headers.get("content-encoding", "identity").lower() not in ("", "identity")
        length = response.headers.get("content-length")
        expected = int(length) if length is not None and length.isdigit() and not encoded else None
        received = 0
        chunks = response.aiter_bytes() if encoded else response.aiter_raw()
        done_early = False
        try:
            async for chunk in chunks:
                received += len(chunk)
                self.stats.bytes_down += len(chunk)
                if skip >= len(chunk):
                    skip -= len(chunk)
                    continue
                piece = chunk[skip : skip + state.end - state.pos]
                skip = 0
                if piece:
                    state.pos += len(piece)
                    yield piece
                # Done. When the body holds nothing more, read on to its end (no further bytes
                # arrive) so the connection goes back to the pool; otherwise stop reading.
                if state.pos >= state.end and state.body_end != state.end:
                    done_early = True
                    break
        except BaseException:  # the consumer closed us, a cancellation, or the stream broke
            await _abandon(response, chunks)
            raise
        if done_early:
            await _abandon(response, chunks)
            return
        if expected is not None and received < expected:
            raise BrokenBody(f"the body ended after {received} of {expected} bytes")
        if state.body_end is not None and state.pos < state.body_end:
            raise BrokenBody(f"the body ended at byte {state.pos}, before {state.body_end}")
        if state.body_end is None and state.pos < state.end:
            raise _short_file(state.file_id, state.pos, state)

    # -- uploads --------------------------------------------------------------------------------
    async def upload(
        self,
        path: Path,
        filename: str,
        purpose: str,
        *,
        expires_after: int | None = None,
        progress: Callable[[int], None] | None = None,
        earlier: EarlierAttempt | None = None,
    ) -> FileRecord:
        """Upload the local file at ``path`` as ``filename`` with ``purpose``; the new FileRecord.

        ``progress(n)`` is called with the number of the file's bytes sent so far; it goes back
        when a request (or part) is retried. ``expires_after`` is seconds after creation. Uploads
        of the same purpose, filename and size through one client run one after the other.
        ``earlier`` is a failed attempt made outside this call (:meth:`upload_streaming`): if it may
        have created the file, the file is looked for before anything is sent again.
        """
        try:
            fd = await trio.to_thread.run_sync(os.open, os.fspath(path), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise LocalFileError(f"cannot open {path}: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            async with self._one_at_a_time((purpose, filename, size)):
                job = _UploadJob(Path(path), fd, size, filename, purpose, expires_after, _Progress(progress))
                look_first = earlier is not None and earlier.reached
                if earlier is not None:
                    job.started = min(job.started, earlier.started)
                if size <= self._config.single_upload_limit:
                    record = await self._upload_single(job, look_first)
                else:
                    record = await self._upload_parts(job)
                self._claimed.add(record.id)
        finally:
            os.close(fd)
        return record

    @asynccontextmanager
    async def _one_at_a_time(self, key: tuple[str, str, int]) -> AsyncIterator[None]:
        lock, users = self._same_upload_locks.get(key, (trio.Lock(), 0))
        self._same_upload_locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._same_upload_locks[key]
            if users == 1:
                del self._same_upload_locks[key]
            else:
                self._same_upload_locks[key] = (lock, users - 1)

    async def upload_streaming(
        self, filename: str, purpose: str, file: AsyncIterator[bytes], *, expires_after: int | None = None
    ) -> FileRecord | Failure:
        """One attempt at ``POST /files`` whose file bytes are ``file``'s, sent as they come: a file
        is uploaded while it is still being written (uploads.py). Chunked, as its length is not known
        when it starts. No retries: the caller checks the record (its ``bytes``), and on a Failure
        uploads the finished file with :meth:`upload`, passing the failure as ``earlier``.
        ``file`` must be a class-based async iterator (see multipart.py)."""
        started = time.time()
        fields = _single_fields(purpose, expires_after)
        body = GrowingMultipartBody(fields, "file", filename, part_content_type(filename), file)
        result = await self._attempt(CREATE, "upload", "POST", "/files", body=lambda: body)
        if isinstance(result, Failure):
            return result
        try:
            record = FileRecord.from_json(_json(result, "file object"))
        except OpenAIFSError as exc:  # a 2xx we cannot read: it may well have created the file
            return Failure(CREATE, "upload", message=str(exc), reached=True)
        self._claimed.add(record.id)
        log.debug("streamed upload of %r to %s took %.2f s", filename, purpose, time.time() - started)
        return record

    async def _upload_single(self, job: _UploadJob, look_first: bool = False) -> FileRecord:
        fields = _single_fields(job.purpose, job.expires_after)
        sent = [0]

        def body() -> MultipartBody:
            job.progress.rewind(sent[0])
            sent[0] = 0

            def on_bytes(n: int) -> None:
                sent[0] += n
                job.progress.add(n)

            return MultipartBody(
                fields,
                "file",
                job.filename,
                part_content_type(job.filename),
                FileSlice(job.fd, 0, job.size),
                on_bytes,
            )

        response = await self._call_no_duplicate(CREATE, "upload", job, "/files", body=body, look_first=look_first)
        if isinstance(response, FileRecord):
            return response
        return FileRecord.from_json(_json(response, "file object"))

    async def _upload_parts(self, job: _UploadJob) -> FileRecord:
        payload: dict[str, Any] = {
            "filename": job.filename,
            "purpose": job.purpose,
            "bytes": job.size,
            "mime_type": guess_mime_type(job.filename),
        }
        if job.expires_after is not None:
            payload["expires_after"] = {"anchor": "created_at", "seconds": job.expires_after}
        response = await self._call(UP_CREATE, "create upload", "POST", "/uploads", json=payload)
        upload_id = upload_id_from_json(_json(response, "upload object"))
        log.debug("uploading %d bytes in parts to %s", job.size, upload_id)
        try:
            part_ids, md5 = await self._send_parts(upload_id, job)
            path = f"/uploads/{_q(upload_id)}/complete"
            result = await self._call_no_duplicate(
                UP_COMPLETE,
                "complete upload",
                job,
                path,
                json={"part_ids": part_ids, "md5": md5},
                file_id=upload_id,
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._cancel_upload(upload_id)
            raise
        if isinstance(result, FileRecord):
            return result
        return completed_file_from_json(_json(result, "upload object"))

    async def _send_parts(self, upload_id: str, job: _UploadJob) -> tuple[list[str], str]:
        part_size = self._config.part_size
        count = math.ceil(job.size / part_size)
        ids: list[str | None] = [None] * count
        next_index = 0
        error: BaseException | None = None
        digest: list[str | None] = [None]
        stop = threading.Event()

        async def hash_file() -> None:
            hfd = os.dup(job.fd)
            try:
                digest[0] = await trio.to_thread.run_sync(_md5_and_close, hfd, stop, abandon_on_cancel=True)
            finally:
                stop.set()  # an abandoned thread sees this at its next chunk and closes its fd

        async def worker() -> None:
            nonlocal next_index, error
            while next_index < count and error is None:
                index, next_index = next_index, next_index + 1
                offset = index * part_size
                piece = FileSlice(job.fd, offset, min(part_size, job.size - offset))
                try:
                    ids[index] = await self._send_part(upload_id, piece, job)
                except OpenAIFSError as exc:
                    error = exc
                    nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hash_file)
            for _ in range(min(self._config.part_concurrency, count)):
                nursery.start_soon(worker)
        if error is not None:
            raise error
        if digest[0] is None or any(i is None for i in ids):
            raise LocalFileError(f"could not read {job.path} to the end while uploading")
        return [i for i in ids if i is not None], digest[0]

    async def _send_part(self, upload_id: str, piece: FileSlice, job: _UploadJob) -> str:
        sent = [0]

        def body() -> MultipartBody:
            job.progress.rewind(sent[0])
            sent[0] = 0

            def on_bytes(n: int) -> None:
                sent[0] += n
                job.progress.add(n)

            return MultipartBody([], "data", "upload", "application/octet-stream", piece, on_bytes)

        path = f"/uploads/{_q(upload_id)}/parts"
        response = await self._call(UP_PARTS, "upload part", "POST", path, body=body, file_id=upload_id)
        return part_id_from_json(_json(response, "upload part"))

    async def _cancel_upload(self, upload_id: str) -> None:
        """Best effort, one attempt, bounded in time: a pending upload expires within the hour anyway."""
        self.stats.requests[UP_CANCEL] += 1
        with trio.move_on_after(CANCEL_TIMEOUT):
            try:
                response = await self._http.post(self._url(f"/uploads/{_q(upload_id)}/cancel"))
            except HTTPX_ERRORS as exc:
                log.info(
                    "could not cancel upload %s (%s); it expires on its own", upload_id, type(exc).__name__
                )
                return
            if response.is_success:
                log.info("cancelled upload %s after a failure", upload_id)
            else:
                log.info(
                    "could not cancel upload %s (HTTP %d); it expires on its own",
                    upload_id,
                    response.status_code,
                )

    # -- no duplicate uploads --------------------------------------------------------------------
    async def _call_no_duplicate(
        self,
        route: str,
        operation: str,
        job: _UploadJob,
        path: str,
        *,
        body: Callable[[], MultipartBody] | None = None,
        json: Any = None,
        file_id: str | None = None,
        look_first: bool = False,
    ) -> httpx.Response | FileRecord:
        """POST with retries; once an attempt may have reached the server, look before retrying.

        Returns the response, or the FileRecord an earlier attempt turned out to have created.
        ``look_first``: an attempt made before this call may have created it already.
        """
        budget = self._budget()
        maybe_created = look_first
        check_pending = look_first
        while True:
            if check_pending:
                found = await self._look_for(job, operation)
                if isinstance(found, Failure):
                    await budget.wait_or_raise(found)
                    continue
                if found is not None:
                    return self._adopt(found, job)
                check_pending = False
            result = await self._attempt(
                route, operation, "POST", path, body=body, json=json, file_id=file_id
            )
            if isinstance(result, httpx.Response):
                return result
            maybe_created = maybe_created or result.reached
            delay = budget.decide(result)
            if delay is None:
                if maybe_created:
                    last = await self._look_for(job, operation)
                    if isinstance(last, FileRecord):
                        return self._adopt(last, job)
                raise budget.final_error(result) from result.exc
            await budget.wait(result, delay)
            check_pending = maybe_created

    async def _look_for(self, job: _UploadJob, operation: str) -> FileRecord | Failure | None:
        """The file an earlier attempt of ``job`` created, None if there is none, or why we cannot tell."""
        threshold = job.started - DEDUP_SLACK
        params: dict[str, Any] = {"purpose": job.purpose, "order": "desc", "limit": DEDUP_PAGE}
        while True:
            result = await self._attempt(LIST, operation, "GET", "/files", params=params)
            if isinstance(result, Failure):
                return result
            page = FilePage.from_json(_json(result, "file list"))
            for record in page.records:
                if record.created_at < threshold:
                    return None
                if (
                    record.filename == job.filename
                    and record.bytes == job.size
                    and record.id not in self._claimed
                ):
                    return record
            if not page.records or page.has_more is False:
                return None
            params = {**params, "after": page.records[-1].id}

    def _adopt(self, record: FileRecord, job: _UploadJob) -> FileRecord:
        log.info(
            "an earlier attempt to upload %r to %s had succeeded (its answer was lost); using %s",
            job.filename,
            job.purpose,
            record.id,
        )
        self.stats.adopted_uploads += 1
        return record

    # -- plumbing ---------------------------------------------------------------------------------
    def _count_up(self, n: int) -> None:
        self.stats.bytes_up += n

    def _budget(self) -> Budget:
        return Budget(self._config, self.stats, self._rng, self._sleep, self._clock)

    def _url(self, path: str) -> str:
        return self._base + path

    @staticmethod
    def _file_path(file_id: str) -> str:
        return f"/files/{_q(file_id)}"

    async def _call(
        self,
        route: str,
        operation: str,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        body: Callable[[], MultipartBody] | None = None,
        file_id: str | None = None,
    ) -> httpx.Response:
        """One logical call: attempts until a 2xx, or the typed error once the budget says stop."""
        budget = self._budget()
        while True:
            result = await self._attempt(
                route, operation, method, path, params=params, json=json, body=body, file_id=file_id
            )
            if isinstance(result, httpx.Response):
                return result
            await budget.wait_or_raise(result)

    async def _attempt(
        self,
        route: str,
        operation: str,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        body: Callable[[], MultipartBody | GrowingMultipartBody] | None = None,
        file_id: str | None = None,
    ) -> httpx.Response | Failure:
        """One request, body read in full: the 2xx response, or what went wrong."""
        self.stats.requests[route] += 1
        stream: httpx.AsyncByteStream | None = None
        headers: dict[str, str] | None = None
        if body is not None:
            multipart = body()
            multipart.on_wire = self._count_up
            stream, headers = multipart, multipart.headers()
        elif json is not None:
            data = _jsonlib.dumps(json, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
            stream = BytesBody(data, self._count_up)
            headers = {"Content-Type": "application/json", "Content-Length": str(len(data))}
        try:
            request = self._http.build_request(
                method, self._url(path), params=params, headers=headers, content=stream
            )
            if stream is not None:
                # Send our class-based stream itself, not httpx's generator wrapper around it (which
                # trio would warn about when a broken connection abandons it; see multipart.py).
                request.stream = stream
            response = await self._http.send(request)
        except HTTPX_ERRORS as exc:
            return failure_from_exception(exc, route, operation, file_id)
        self.stats.bytes_down += len(response.content)
        if response.is_success:
            return response
        return failure_from_response(response, response.content, route, operation, file_id)


class _AttemptFailed(Exception):
    def __init__(self, failure: Failure) -> None:
        self.failure = failure


class _DownloadState:
    __slots__ = ("file_id", "pos", "end", "body_end")

    def __init__(self, file_id: str, start: int, end: int) -> None:
        self.file_id = file_id
        self.pos = start
        self.end = end
        self.body_end: int | None = None  # end of the range the current 206 promised


class _Progress:
    """The upload's byte count for the caller's ``progress`` callback (goes back on retries)."""

    def __init__(self, callback: Callable[[int], None] | None) -> None:
        self._callback = callback
        self.total = 0

    def add(self, n: int) -> None:
        self.total += n
        if self._callback is not None:
            self._callback(self.total)

    def rewind(self, n: int) -> None:
        if n:
            self.add(-n)


@dataclass(frozen=True, slots=True)
class EarlierAttempt:
    """A failed attempt at an upload, made before :meth:`FilesClient.upload` was called."""

    started: float  # wall clock, as _UploadJob.started
    reached: bool  # it may have created the file (Failure.reached)


def _single_fields(purpose: str, expires_after: int | None) -> list[tuple[str, str]]:
    fields = [("purpose", purpose)]
    if expires_after is not None:
        fields += [("expires_after[anchor]", "created_at"), ("expires_after[seconds]", str(expires_after))]
    return fields


class _UploadJob:
    __slots__ = ("path", "fd", "size", "filename", "purpose", "expires_after", "progress", "started")

    def __init__(
        self,
        path: Path,
        fd: int,
        size: int,
        filename: str,
        purpose: str,
        expires_after: int | None,
        progress: _Progress,
    ) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.filename = filename
        self.purpose = purpose
        self.expires_after = expires_after
        self.progress = progress
        # Wall clock, to compare with the server's created_at (Unix seconds).
        self.started = time.time()


def _md5_and_close(fd: int, stop: threading.Event) -> str | None:
    try:
        return md5_of_fd(fd, stop)
    finally:
        os.close(fd)


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise TransportError(f"malformed {what} from the server: the body is not JSON") from None


def _short_file(file_id: str, size: int, state: _DownloadState) -> IntegrityError:
    return IntegrityError(
        f"the file has only {size} bytes, fewer than the {state.end} asked for",
        operation="download",
        file_id=file_id,
    )


async def _read_bounded(response: httpx.Response) -> bytes:
    """Up to ERROR_BODY_LIMIT bytes of an error answer's body (whatever arrived, if it breaks)."""
    buf = bytearray()
    chunks = response.aiter_bytes()
    try:
        async for chunk in chunks:
            buf += chunk
            if len(buf) >= ERROR_BODY_LIMIT:
                break
    except HTTPX_ERRORS:
        pass  # the status says enough; a broken error body is not worth a retry of its own
    await _abandon(response, chunks)
    return bytes(buf)


async def _abandon(response: httpx.Response, chunks: AsyncIterator[bytes]) -> None:
    """Stop reading a response body part way, without leaving httpx's generators suspended.

    httpx and httpcore read bodies through nested async generators; closing the outer one leaves
    the inner ones suspended, and trio warns when they are garbage collected (encode/httpx#3686).
    Closing the response first makes the next read fail at the bottom, which unwinds them all.
    Shielded and bounded: this only closes a socket, even when the caller is being cancelled.
    """
    with trio.CancelScope(shield=True), trio.move_on_after(ABANDON_TIMEOUT):
        try:
            await response.aclose()
            async for _ in chunks:
                pass
        except HTTPX_ERRORS:
            pass  # the expected "socket already closed", or a close that failed: either way it is gone
