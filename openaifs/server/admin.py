"""The ``/_admin/*`` routes (docs/INTERNALS.md): stats, faults, direct file creation, clock, config.

They exist for tests and benchmarks, are never counted in the stats, need no API key, and are
answered only to loopback clients (``is_loopback``); anyone else gets a 403. uvicorn runs with
``proxy_headers=False`` so the client address is the TCP peer, not a forwarded header.

Additions to docs/INTERNALS.md: ``GET /_admin/config`` (the current config), ``expires_at`` on
``POST /_admin/files``, ``corrupt_rate`` in the fault set (a 200 with a malformed JSON body),
``crafted`` in the fault set (any answer per route, lying Content-Length included; see faults.py),
and ``POST /_admin/files/bulk`` (many small files in one request, for 100,000-file tests):

    {"files": [{"purpose": "batch", "filename": "a.jsonl", "content": "{}\\n"} |
               {"purpose": "vision", "filename": "b.bin", "size": 10, "created_at": 1700000000,
                "status": "processed"}, ...]}
    → {"ids": ["file-…", ...]}   (in the order given; "size" fills the file with b"x")
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from openaifs.server import apierror
from openaifs.server.apierror import ApiError
from openaifs.server.blobs import CHUNK, BlobWriter
from openaifs.server.faults import FaultConfigError
from openaifs.server.files_api import json_response
from openaifs.server.settings import SettingsError, default_expiry
from openaifs.server.state import ServerState, blocking
from openaifs.server.storage import FileRow, new_id


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything else or no address."""
    if not host:
        return False
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def refused() -> ApiError:
    return ApiError(403, "Admin routes are only served to loopback clients.")


def _admin_error(message: str) -> ApiError:
    return apierror.bad_request(message)


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"null")
    except ValueError:
        raise apierror.invalid_json_body() from None


async def get_stats(st: ServerState, request: Request) -> Response:
    return json_response(st.stats.as_json())


async def reset_stats(st: ServerState, request: Request) -> Response:
    st.stats.reset()
    return json_response(st.stats.as_json())


async def get_faults(st: ServerState, request: Request) -> Response:
    return json_response(st.faults.current.as_json())


async def put_faults(st: ServerState, request: Request) -> Response:
    try:
        faults = st.faults.replace(await _json_body(request))
    except FaultConfigError as exc:
        raise _admin_error(str(exc)) from None
    return json_response(faults.as_json())


async def get_config(st: ServerState, request: Request) -> Response:
    return json_response(st.settings.as_json())


async def put_config(st: ServerState, request: Request) -> Response:
    try:
        st.settings.update(await _json_body(request))
    except SettingsError as exc:
        raise _admin_error(str(exc)) from None
    return json_response(st.settings.as_json())


async def get_clock(st: ServerState, request: Request) -> Response:
    return json_response({"now": st.clock.now()})


async def advance_clock(st: ServerState, request: Request) -> Response:
    body = await _json_body(request)
    seconds = body.get("advance") if isinstance(body, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise _admin_error('expected {"advance": seconds}')
    try:
        return json_response({"now": st.clock.advance(seconds)})
    except SettingsError as exc:
        raise _admin_error(str(exc)) from None


async def create_file(st: ServerState, request: Request) -> Response:
    """Any purpose, any filename (even '', '/', control characters), raw body as the content."""
    q = request.query_params
    if "purpose" not in q or "filename" not in q:
        raise _admin_error("purpose and filename query parameters are required")
    created_at = _optional_int(q, "created_at")
    if created_at is None:
        created_at = st.clock.now()
    expires_at = _optional_int(q, "expires_at")
    writer = await blocking(st.storage.blobs.writer)
    try:
        await _receive_into(request, writer)
        if expires_at is None:
            expires_at = default_expiry(q["purpose"], created_at, None)
        row = FileRow(new_id("file-"), q["filename"], q["purpose"], writer.size, created_at, expires_at,
                      q.get("status", "processed"))
        await blocking(writer.commit, st.storage.blobs.file_path(row.id))
    except BaseException:
        await blocking(writer.discard)
        raise
    await blocking(st.storage.insert_file, row)
    return json_response(row.to_json())


# Bulk files are small by design: the whole request is held in memory.
BULK_MAX_FILE_BYTES = 1024 * 1024


async def create_files_bulk(st: ServerState, request: Request) -> Response:
    body = await _json_body(request)
    items = body.get("files") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise _admin_error('expected {"files": [{"purpose", "filename", "content" or "size"}, ...]}')
    now = st.clock.now()
    rows: list[FileRow] = []
    blobs: list[tuple[str, bytes]] = []
    for i, item in enumerate(items):
        rows.append(_bulk_row(item, i, now, blobs))
    await blocking(st.storage.blobs.write_small_files, blobs)
    await blocking(st.storage.insert_files, rows)
    return json_response({"ids": [r.id for r in rows]})


def _bulk_row(item: Any, i: int, now: int, blobs: list[tuple[str, bytes]]) -> FileRow:
    if not isinstance(item, dict) or not isinstance(item.get("purpose"), str) \
            or not isinstance(item.get("filename"), str):
        raise _admin_error(f"files[{i}]: purpose and filename (strings) are required")
    content = item.get("content")
    size = item.get("size")
    if isinstance(content, str):
        data = content.encode("utf-8", "surrogatepass")
    elif isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= BULK_MAX_FILE_BYTES:
        data = b"x" * size
    else:
        raise _admin_error(f"files[{i}]: give content (a string) or size (0..{BULK_MAX_FILE_BYTES})")
    created_at = item.get("created_at", now)
    status = item.get("status", "processed")
    if isinstance(created_at, bool) or not isinstance(created_at, int) or not isinstance(status, str):
        raise _admin_error(f"files[{i}]: created_at must be an integer and status a string")
    row = FileRow(new_id("file-"), item["filename"], item["purpose"], len(data), created_at,
                  default_expiry(item["purpose"], created_at, None), status)
    blobs.append((row.id, data))
    return row


async def _receive_into(request: Request, writer: BlobWriter) -> None:
    pending: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        pending.append(chunk)
        size += len(chunk)
        if size >= CHUNK:
            await anyio.to_thread.run_sync(writer.write_many, pending)
            pending, size = [], 0
    await anyio.to_thread.run_sync(writer.write_many, pending)


def _optional_int(q: Any, name: str) -> int | None:
    if name not in q:
        return None
    try:
        return int(q[name])
    except ValueError:
        raise _admin_error(f"{name} must be an integer") from None
