"""Handlers of ``/v1/uploads*`` (FILES_API.md §3.6–3.9): create, add part, complete, cancel.

Parts are blobs of their own (``parts/<part id>``). ``complete`` checks the listed parts (all
known, none twice, byte total equal to the Upload's ``bytes``), then concatenates them in a
worker thread into a temp blob while computing the md5 and, for JSONL purposes, checking lines;
only a blob that passed every check is committed, and the File row, the Upload's new status and
the removal of its parts happen in one transaction.

Choices where the contract says **unknown** (FILES_API.md §3.8, §7): every refusal here is a 400
``invalid_request_error`` (never 409, which the SDK would retry), size limits are 413; cancelling
a cancelled Upload answers it again (idempotent, so a retried cancel succeeds).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from openaifs.server import apierror, validation
from openaifs.server.blobs import CHUNK, BlobWriter
from openaifs.server.files_api import check_content_length, json_response, jsonl_error
from openaifs.server.multipart import StreamingForm, boundary_of, read_form
from openaifs.server.settings import UPLOAD_LIFETIME, default_expiry
from openaifs.server.state import ServerState, blocking
from openaifs.server.storage import FileRow, PartRow, UploadRow, new_id
from openaifs.server.validation import JsonlChecker

MAX_JSON_BODY = 1024 * 1024  # create/complete bodies are tiny; 1 MiB leaves room for ~20k part ids


async def read_json(request: Request) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise apierror.too_large("Request body", None, MAX_JSON_BODY, None)
    return validation.json_object(bytes(body))


async def create_upload(st: ServerState, request: Request) -> Response:
    body = await read_json(request)
    validation.only_keys(body, ("filename", "purpose", "bytes", "mime_type", "expires_after"),
                         ("filename", "purpose", "bytes", "mime_type"))
    filename = validation.string_param(body, "filename")
    purpose = validation.check_purpose(validation.string_param(body, "purpose"))
    size = validation.int_param(body, "bytes")
    if size < 0:
        raise apierror.invalid_value("bytes", f"expected a value >= 0, but got {size} instead.")
    if size > st.settings.max_upload_bytes:
        raise apierror.too_large("Upload", size, st.settings.max_upload_bytes, "bytes")
    mime_type = validation.string_param(body, "mime_type")
    expires_after = validation.expiry_from_json(body.get("expires_after"))
    now = st.clock.now()
    row = UploadRow(new_id("upload_"), filename, purpose, size, mime_type, now, now + UPLOAD_LIFETIME,
                    file_expires_after=expires_after)
    await blocking(st.storage.insert_upload, row)
    return json_response(row.to_json(now))


async def _pending_upload(st: ServerState, upload_id: str, action: str) -> UploadRow:
    row = await blocking(st.storage.get_upload, upload_id)
    if row is None:
        raise apierror.no_such_upload(upload_id)
    status = row.effective_status(st.clock.now())
    if status != "pending":
        raise apierror.bad_request(f"Cannot {action} an Upload with status '{status}' ({upload_id}).")
    if upload_id in st.completing:
        raise apierror.bad_request(f"Cannot {action} an Upload that is being completed ({upload_id}).")
    return row


async def add_part(st: ServerState, request: Request, upload_id: str) -> Response:
    upload = await _pending_upload(st, upload_id, "add a part to")
    limit = st.settings.max_part_bytes
    check_content_length(request, limit, "Part", "data")
    boundary = boundary_of(request.headers.get("content-type", ""))

    def file_spec(name: str, fields: dict[str, str]) -> Any:
        if name != "data":
            return None
        return limit, lambda size: apierror.too_large("Part", size, limit, "data"), False

    form = StreamingForm(boundary, frozenset(), file_spec)
    try:
        await read_form(request.stream(), form, st.storage.blobs)
        part = await _store_part(st, upload, form)
    except BaseException:
        for target in form.files.values():
            await blocking(target.discard)
        raise
    return json_response(part.to_json())


async def _store_part(st: ServerState, upload: UploadRow, form: StreamingForm) -> PartRow:
    target = form.files.get("data")
    if target is None or target.writer is None:
        raise apierror.missing_param("data")
    received = await blocking(st.storage.upload_received_bytes, upload.id)
    if received + target.size > st.settings.max_upload_bytes:
        raise apierror.too_large("Upload", received + target.size, st.settings.max_upload_bytes, "data")
    now = st.clock.now()
    part = PartRow(new_id("part_"), upload.id, target.size, now)
    path = st.storage.blobs.part_path(part.id)
    await blocking(target.writer.commit, path)
    if not await blocking(st.storage.insert_part, part, now):
        await blocking(st.storage.blobs.remove_parts, [part.id])
        raise apierror.bad_request(f"Cannot add a part to Upload {upload.id}: it is no longer pending.")
    return part


async def complete_upload(st: ServerState, request: Request, upload_id: str) -> Response:
    body = await read_json(request)
    validation.only_keys(body, ("part_ids", "md5"), ("part_ids",))
    part_ids = body["part_ids"]
    if not isinstance(part_ids, list) or not all(isinstance(p, str) for p in part_ids):
        raise apierror.invalid_type("part_ids", "an array of strings", part_ids)
    md5 = validation.string_param(body, "md5").strip().lower() if "md5" in body else None
    upload = await _pending_upload(st, upload_id, "complete")
    st.completing.add(upload_id)
    try:
        file = await _assemble(st, upload, part_ids, md5)
    finally:
        st.completing.discard(upload_id)
    done = replace(upload, status="completed", file_id=file.id)
    return json_response(done.to_json(st.clock.now(), file))


async def _assemble(st: ServerState, upload: UploadRow, part_ids: list[str], md5: str | None) -> FileRow:
    parts = await blocking(st.storage.parts_of, upload.id)
    for pid in part_ids:
        if pid not in parts:
            raise apierror.bad_request(f"No such Part object: {pid} (not a part of Upload {upload.id}).",
                                       param="part_ids")
    if len(set(part_ids)) != len(part_ids):
        raise apierror.bad_request("part_ids lists a part more than once.", param="part_ids")
    total = sum(parts[pid].bytes for pid in part_ids)
    if total != upload.bytes:
        raise apierror.bad_request(
            f"The parts listed add up to {total} bytes, but the Upload was created with "
            f"bytes={upload.bytes}.",
            param="part_ids")
    jsonl = st.settings.must_be_jsonl(upload.purpose)
    writer, digest, bad_line = await blocking(_concatenate, st, part_ids, md5 is not None, jsonl)
    try:
        if md5 is not None and digest != md5:
            raise apierror.bad_request(f"md5 mismatch: the parts hash to {digest}, not {md5}.", param="md5")
        if bad_line is not None:
            raise jsonl_error(bad_line, upload.purpose)
        now = st.clock.now()
        file = FileRow(new_id("file-"), upload.filename, upload.purpose, total, now,
                       default_expiry(upload.purpose, now, upload.file_expires_after))
        await blocking(writer.commit, st.storage.blobs.file_path(file.id))
    except BaseException:
        await blocking(writer.discard)
        raise
    await blocking(st.storage.finish_upload, upload.id, "completed", file)
    return file


def _concatenate(st: ServerState, part_ids: list[str], md5: bool, jsonl: bool
                 ) -> tuple[BlobWriter, str | None, int | None]:
    """Blocking: the parts in order into one temp blob; returns it, its md5, the first bad line."""
    writer = st.storage.blobs.writer(md5=md5)
    checker = JsonlChecker() if jsonl else None
    try:
        for pid in part_ids:
            with open(st.storage.blobs.part_path(pid), "rb", buffering=0) as f:
                while chunk := f.read(CHUNK):
                    writer.write(chunk)
                    if checker is not None:
                        checker.feed(chunk)
    except BaseException:
        writer.discard()
        raise
    return writer, writer.md5_hex() if md5 else None, checker.finish() if checker else None


async def cancel_upload(st: ServerState, request: Request, upload_id: str) -> Response:
    row = await blocking(st.storage.get_upload, upload_id)
    if row is None:
        raise apierror.no_such_upload(upload_id)
    now = st.clock.now()
    status = row.effective_status(now)
    if status == "cancelled":
        return json_response(row.to_json(now))
    if status != "pending" or upload_id in st.completing:
        raise apierror.bad_request(f"Cannot cancel an Upload with status '{status}' ({upload_id}).")
    await blocking(st.storage.finish_upload, upload_id, "cancelled", None)
    return json_response(replace(row, status="cancelled").to_json(now))
