"""Handlers of ``/v1/files*`` (FILES_API.md §3.1–3.5).

Each handler decodes its request, calls storage (in a worker thread), and returns an ASGI
response; failures are raised as ``ApiError`` and turned into the error envelope by ``app``.
Uploads stream through ``multipart`` into a temp blob that is committed (fsync + rename) before
the metadata row is inserted.
"""

from __future__ import annotations

import json
import os
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from openaifs.server import apierror, validation
from openaifs.server.apierror import ApiError
from openaifs.server.content import content_response
from openaifs.server.multipart import FileField, StreamingForm, boundary_of, read_form
from openaifs.server.settings import default_expiry
from openaifs.server.state import ServerState, blocking
from openaifs.server.storage import BUSY, FileRow, UnknownCursor, new_id

# Multipart framing around the file (boundaries, part headers, small fields) stays well under this;
# a Content-Length above limit + slack is refused before any byte of the body is read.
MULTIPART_SLACK = 1024 * 1024

_CREATE_TEXT_FIELDS = frozenset({"purpose", "expires_after[anchor]", "expires_after[seconds]"})


def json_response(obj: Any, status: int = 200) -> Response:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type="application/json")


async def list_files(st: ServerState, request: Request) -> Response:
    purpose, limit, descending, after = validation.list_params(request.query_params)
    page_size = min(limit, st.settings.max_page_size)
    try:
        rows, has_more = await blocking(_list, st, purpose, descending, page_size, after)
    except UnknownCursor:
        raise apierror.invalid_value("after", f"no file with id '{after}' was ever listed here.") from None
    data = [row.to_json() for row in rows]
    # first_id/last_id of an empty page are unknown upstream (FILES_API.md §2.2): we send null.
    return json_response({
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    })


def _list(st: ServerState, purpose: str | None, descending: bool, limit: int, after: str | None
          ) -> tuple[list[FileRow], bool]:
    return st.storage.list_files(st.clock.now(), purpose=purpose, descending=descending, limit=limit,
                                 after=after)


async def retrieve_file(st: ServerState, request: Request, file_id: str) -> Response:
    return json_response((await _live_file(st, file_id)).to_json())


async def delete_file(st: ServerState, request: Request, file_id: str) -> Response:
    if not await blocking(st.storage.delete_file, file_id, st.clock.now()):
        raise apierror.no_such_file(file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


async def file_content(st: ServerState, request: Request, file_id: str) -> Any:
    # Hot path of every (ranged) read: when the database connection is free, look the file up and
    # open its blob right here (an indexed query and an open(), tens of microseconds) instead of
    # hopping to a thread, which cost ~0.15 ms per request: 128 KiB ranged GETs went from ~3300 to
    # ~4800 per second. A busy connection means waiting, which happens in a thread as usual.
    found = st.storage.try_get_file(file_id, st.clock.now())
    if found is BUSY:
        row, fd = await blocking(_lookup_and_open, st, file_id)
    else:
        row, fd = _open_live(st, file_id, found)
    return content_response(fd, row.bytes, request.headers.get("range"), st.faults.current.range)


def _lookup_and_open(st: ServerState, file_id: str) -> tuple[FileRow, int]:
    return _open_live(st, file_id, st.storage.get_file(file_id, st.clock.now()))


def _open_live(st: ServerState, file_id: str, row: FileRow | None) -> tuple[FileRow, int]:
    """An fd on the blob of the live file ``row`` (None: there is none), or the 404/400 to answer."""
    if row is None:
        raise apierror.no_such_file(file_id)
    if row.purpose in st.settings.refuse_downloads:
        raise apierror.download_refused(row.purpose)
    try:
        return row, os.open(st.storage.blobs.file_path(file_id), os.O_RDONLY)
    except FileNotFoundError:
        raise apierror.no_such_file(file_id) from None  # deleted between the lookup and the open


async def _live_file(st: ServerState, file_id: str) -> FileRow:
    row = await blocking(st.storage.get_file, file_id, st.clock.now())
    if row is None:
        raise apierror.no_such_file(file_id)
    return row


def check_content_length(request: Request, limit: int, what: str, param: str) -> None:
    """Refuse a body that announces it is too large before reading any of it."""
    raw = request.headers.get("content-length")
    if raw and raw.isdigit() and int(raw) > limit + MULTIPART_SLACK:
        raise apierror.too_large(what, None, limit, param)


async def create_file(st: ServerState, request: Request) -> Response:
    limit = st.settings.max_file_bytes
    check_content_length(request, limit, "File", "file")
    boundary = boundary_of(request.headers.get("content-type", ""))

    def file_spec(name: str, fields: dict[str, str]) -> Any:
        if name != "file":
            return None
        purpose = fields.get("purpose")
        # The purpose usually precedes the file (the SDK sends text fields first); when it does
        # not, check JSONL anyway and decide once the purpose is known.
        jsonl = st.settings.validate_jsonl and (purpose is None or st.settings.must_be_jsonl(purpose))
        return limit, lambda size: apierror.too_large("File", size, limit, "file"), jsonl

    form = StreamingForm(boundary, _CREATE_TEXT_FIELDS, file_spec)
    try:
        await read_form(request.stream(), form, st.storage.blobs)
        row = await _store_created(st, form)
    except BaseException:
        for target in form.files.values():
            await blocking(target.discard)
        raise
    return json_response(row.to_json())


async def _store_created(st: ServerState, form: StreamingForm) -> FileRow:
    if "file" not in form.files:
        raise apierror.missing_param("file")
    if "purpose" not in form.fields:
        raise apierror.missing_param("purpose")
    purpose = validation.check_purpose(form.fields["purpose"])
    expires_after = validation.expiry_from_form(form.fields)
    target = form.files["file"]
    bad_line = await blocking(target.finish_checks)
    if bad_line is not None and st.settings.must_be_jsonl(purpose):
        raise jsonl_error(bad_line, purpose)
    now = st.clock.now()
    row = FileRow(new_id("file-"), target.filename, purpose, target.size, now,
                  default_expiry(purpose, now, expires_after))
    await blocking(_commit, st, target, row)
    return row


def _commit(st: ServerState, target: FileField, row: FileRow) -> None:
    assert target.writer is not None
    target.writer.commit(st.storage.blobs.file_path(row.id))
    st.storage.insert_file(row)


def jsonl_error(line: int, purpose: str) -> ApiError:
    return apierror.bad_request(
        f"Invalid file format: line {line} is not a JSON object. Files with purpose '{purpose}' "
        "must be JSONL: one JSON object per line.",
        param="file",
    )
