"""The ASGI application: routing, request ids, auth, fault injection, error envelopes.

A small route table instead of Starlette's router: each /v1 route has the stats name of
docs/INTERNALS.md, and the request pipeline around a handler is the same for all of them:

1. count the request (faulted ones too) and its body bytes; give it an ``x-request-id``;
2. draw its fault ``Decision``; sleep for the latency;
3. check the bearer key (when one is configured);
4. answer an injected 429 / 5xx / malformed body, or run the handler (a ``crafted`` answer is
   written raw onto the socket instead, so it can lie about its Content-Length);
5. turn an ``ApiError`` into the hosted API's error envelope, anything else into a logged 500;
6. send the response through ``ResponseTap``, which may drop the connection mid-body or, after the
   handler did its work, before answering.

Starlette supplies ``Request`` and ``Response`` only.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from openaifs.server import admin, apierror, files_api, uploads_api
from openaifs.server.apierror import ApiError
from openaifs.server.faults import (
    NO_FAULT,
    Crafted,
    Decision,
    DropConnection,
    Message,
    ResponseTap,
    Send,
    send_raw,
)
from openaifs.server.state import ServerState

log = logging.getLogger("openaifs.server")

Handler = Callable[..., Awaitable[Any]]
Receive = Callable[[], Awaitable[Message]]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    name: str | None  # the stats name of a /v1 route; None for admin routes


def _route(method: str, path: str, handler: Handler, name: str | None = None) -> Route:
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
    return Route(method, re.compile(f"^{regex}$"), handler, name)


V1_ROUTES: tuple[Route, ...] = (
    _route("GET", "/v1/files", files_api.list_files, "files.list"),
    _route("POST", "/v1/files", files_api.create_file, "files.create"),
    _route("GET", "/v1/files/{file_id}", files_api.retrieve_file, "files.retrieve"),
    _route("DELETE", "/v1/files/{file_id}", files_api.delete_file, "files.delete"),
    _route("GET", "/v1/files/{file_id}/content", files_api.file_content, "files.content"),
    _route("POST", "/v1/uploads", uploads_api.create_upload, "uploads.create"),
    _route("POST", "/v1/uploads/{upload_id}/parts", uploads_api.add_part, "uploads.parts"),
    _route("POST", "/v1/uploads/{upload_id}/complete", uploads_api.complete_upload, "uploads.complete"),
    _route("POST", "/v1/uploads/{upload_id}/cancel", uploads_api.cancel_upload, "uploads.cancel"),
)
ADMIN_ROUTES: tuple[Route, ...] = (
    _route("GET", "/_admin/stats", admin.get_stats),
    _route("POST", "/_admin/stats/reset", admin.reset_stats),
    _route("GET", "/_admin/faults", admin.get_faults),
    _route("PUT", "/_admin/faults", admin.put_faults),
    _route("POST", "/_admin/files", admin.create_file),
    _route("POST", "/_admin/files/bulk", admin.create_files_bulk),
    _route("GET", "/_admin/clock", admin.get_clock),
    _route("POST", "/_admin/clock", admin.advance_clock),
    _route("GET", "/_admin/config", admin.get_config),
    _route("PUT", "/_admin/config", admin.put_config),
)

# What a request that drew the "corrupt" fault gets: status 200, a JSON content type, a cut-off body.
CORRUPT_BODY = b'{"object": "list", "data": [{"id": "file-'


def match(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    routes = ADMIN_ROUTES if path.startswith("/_admin/") else V1_ROUTES
    for route in routes:
        if route.method == method:
            m = route.pattern.match(path)
            if m:
                return route, m.groupdict()
    return None


def error_response(err: ApiError) -> Response:
    return Response(err.body_bytes(), status_code=err.status, media_type="application/json",
                    headers=err.headers)


def check_auth(request: Request, key: str | None) -> None:
    """The hosted API's 401s (FILES_API.md §7); nothing to check when no key is configured."""
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise apierror.missing_key()
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise apierror.wrong_key(token)


class FilesApp:
    """The ASGI callable served by uvicorn."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request_id = "req_" + secrets.token_hex(16)
        found = match(scope["method"], scope["path"])
        if found is None:
            tap = ResponseTap(send, request_id, None, self.state.stats)
            await error_response(apierror.invalid_url(scope["method"], scope["path"]))(scope, receive, tap)
        elif found[0].name is None:
            await self._admin(scope, receive, ResponseTap(send, request_id, None, self.state.stats), *found)
        else:
            await self._v1(scope, receive, send, request_id, *found)

    async def _admin(self, scope: dict[str, Any], receive: Receive, send: Send, route: Route,
                     params: dict[str, str]) -> None:
        client = scope.get("client")
        try:
            if not admin.is_loopback(client[0] if client else None):
                raise admin.refused()
            response = await route.handler(self.state, Request(scope, receive), **params)
        except ApiError as err:
            response = error_response(err)
        await response(scope, receive, send)

    async def _v1(self, scope: dict[str, Any], receive: Receive, send: Send, request_id: str, route: Route,
                  params: dict[str, str]) -> None:
        st = self.state
        name = route.name
        assert name is not None
        st.stats.requests[name] += 1
        if any(key == b"transfer-encoding" and b"chunked" in value.lower() for key, value in scope["headers"]):
            st.stats.chunked_requests[name] += 1
        decision = st.faults.decide(name)
        tap = ResponseTap(send, request_id, name, st.stats, decision)
        receive = _counting(receive, st.stats.bytes_received, name)
        if decision.crafted is not None:
            if decision.delay:
                await anyio.sleep(decision.delay)
            await _send_crafted(send, tap, decision.crafted)
            return
        response = await self._answer(scope, receive, route, params, decision)
        try:
            await response(scope, receive, tap)
        except DropConnection:
            pass  # the tap already closed the connection, as the fault asked

    async def _answer(self, scope: dict[str, Any], receive: Receive, route: Route, params: dict[str, str],
                      decision: Decision) -> Any:
        request = Request(scope, receive)
        try:
            if decision is not NO_FAULT:
                if decision.delay:
                    await anyio.sleep(decision.delay)
                check_auth(request, self.state.api_key)
                _injected_failure(self.state, decision)
                if decision.corrupt:
                    return Response(CORRUPT_BODY, media_type="application/json")
            else:
                check_auth(request, self.state.api_key)
            return await route.handler(self.state, request, **params)
        except ApiError as err:
            return error_response(err)
        except ClientDisconnect:
            # The client went away mid-request; nobody will read an answer (uvicorn's send is a no-op
            # now), and it is not a server error worth a traceback.
            return error_response(apierror.bad_request("Client disconnected."))
        except Exception:
            log.exception("unexpected error in %s %s", scope["method"], scope["path"])
            return error_response(apierror.server_error(500))


async def _send_crafted(send: Send, tap: ResponseTap, crafted: Crafted) -> None:
    """The crafted answer, byte for byte, then close; through ASGI where uvicorn is not serving."""
    if await send_raw(send, crafted.head() + crafted.body):
        tap.count(len(crafted.body))
        return
    length = len(crafted.body) if crafted.content_length is None else crafted.content_length
    headers = [(b"content-type", crafted.content_type.encode("latin-1")), (b"content-length", str(length).encode())]
    try:
        await tap({"type": "http.response.start", "status": crafted.status, "headers": headers})
        await tap({"type": "http.response.body", "body": crafted.body})
    except DropConnection:
        pass


def _injected_failure(st: ServerState, decision: Decision) -> None:
    if decision.rate_limited:
        raise apierror.rate_limited(st.faults.current.retry_after)
    if decision.server_error:
        raise apierror.server_error(st.faults.current.error_status)


def _counting(receive: Receive, counters: dict[str, int], name: str) -> Receive:
    async def counted() -> Message:
        message = await receive()
        if message["type"] == "http.request":
            counters[name] += len(message.get("body", b""))
        return message

    return counted


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
