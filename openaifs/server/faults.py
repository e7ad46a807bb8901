"""Fault injection and observation: what ``/_admin/faults`` and ``/_admin/stats`` control.

* ``FaultSet`` is the validated fault configuration (docs/INTERNALS.md): latency with jitter (and
  ``route_latency_ms``, extra latency for some routes only, e.g. to hold uploads.parts),
  per-route probabilities of a 5xx, a 429, a mid-body drop, a drop after the work was done, and a
  malformed 200 (``corrupt_rate``); a ``crafted`` answer per route (any status, body and
  ``Content-Length``, written raw onto the socket: hostile-server tests); whether Range is
  honoured; the RNG seed.
* ``Faults`` draws one ``Decision`` per request from a seeded RNG.
* ``Stats`` counts requests and body bytes per route.
* ``ResponseTap`` wraps an ASGI ``send``: adds ``x-request-id``, counts bytes sent, and carries
  out a planned drop.

How a drop works under uvicorn: the tap sends the chosen prefix of the body, then closes the
connection's transport itself (uvicorn's ``send`` is a bound method of its request cycle, which
holds the transport) and waits until uvicorn has seen the connection go, so returning from the
app neither logs an error nor sends a 500. ``transport.close()`` flushes what was written first,
so the client receives exactly the prefix, then EOF: httpx raises ``RemoteProtocolError``
("peer closed connection without sending complete message body", or "Server disconnected
without sending a response" for a drop before any byte). Raising from the body iterator would
also cut the body, but uvicorn logs each one as "Exception in ASGI application".
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import anyio

ROUTES: tuple[str, ...] = (
    "files.list", "files.create", "files.retrieve", "files.delete", "files.content",
    "uploads.create", "uploads.parts", "uploads.complete", "uploads.cancel",
)
_RATE_KEYS = ("error_rate", "rate_limit_rate", "drop_rate", "drop_after_request_rate", "corrupt_rate")
_DROP_WAIT = 10.0  # seconds to wait for a closing connection to flush its last bytes to the client
_CRAFTED_KEYS = frozenset({"rate", "status", "body", "json", "content_length", "content_type"})

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]


class FaultConfigError(ValueError):
    """An invalid fault set; str() names the key."""


@dataclass
class FaultSet:
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    route_latency_ms: dict[str, float] = field(default_factory=dict)  # extra latency of some routes only
    error_rate: dict[str, float] = field(default_factory=dict)
    error_status: int = 500
    rate_limit_rate: dict[str, float] = field(default_factory=dict)
    retry_after: float | None = 1.0  # seconds; None sends no retry-after headers
    drop_rate: dict[str, float] = field(default_factory=dict)
    drop_after_request_rate: dict[str, float] = field(default_factory=dict)
    corrupt_rate: dict[str, float] = field(default_factory=dict)
    crafted: dict[str, Crafted] = field(default_factory=dict)
    range: bool = True
    seed: int | None = None

    def as_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["crafted"] = {route: c.as_json() for route, c in self.crafted.items()}
        return out

    @classmethod
    def from_json(cls, obj: object, *, default_range: bool) -> FaultSet:
        """A whole fault set; absent keys take their no-fault default (``range`` the server's
        startup setting, i.e. ``--no-range``)."""
        if not isinstance(obj, dict):
            raise FaultConfigError("faults must be a JSON object")
        unknown = set(obj) - set(cls.__dataclass_fields__)
        if unknown:
            raise FaultConfigError(f"unknown fault key(s): {', '.join(sorted(unknown))}")
        faults = cls(range=default_range)
        for key in ("latency_ms", "latency_jitter_ms"):
            if key in obj:
                setattr(faults, key, _number(obj[key], key, low=0.0))
        for key in _RATE_KEYS:
            if key in obj:
                setattr(faults, key, _rates(obj[key], key))
        if "route_latency_ms" in obj:
            faults.route_latency_ms = _rates(obj["route_latency_ms"], "route_latency_ms", high=None)
        if "crafted" in obj:
            faults.crafted = _crafted(obj["crafted"])
        if "error_status" in obj:
            status = obj["error_status"]
            if isinstance(status, bool) or not isinstance(status, int) or not 500 <= status <= 599:
                raise FaultConfigError("error_status must be an integer 500..599")
            faults.error_status = status
        if "retry_after" in obj:
            ra = obj["retry_after"]
            faults.retry_after = None if ra is None else _number(ra, "retry_after", low=0.0)
        if "range" in obj:
            if not isinstance(obj["range"], bool):
                raise FaultConfigError("range must be true or false")
            faults.range = obj["range"]
        if "seed" in obj:
            seed = obj["seed"]
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise FaultConfigError("seed must be an integer or null")
            faults.seed = seed
        return faults

    def rate(self, table: dict[str, float], route: str) -> float:
        return table.get(route, table.get("*", 0.0))


def _number(value: object, key: str, *, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultConfigError(f"{key} must be a number")
    if value < low or (high is not None and value > high):
        raise FaultConfigError(f"{key} must be between {low} and {high}" if high is not None else
                               f"{key} must be >= {low}")
    return float(value)


def _rates(value: object, key: str, high: float | None = 1.0) -> dict[str, float]:
    """A route -> number table: probabilities (0..1), or with ``high=None`` any number >= 0."""
    if not isinstance(value, dict):
        raise FaultConfigError(f"{key} must be an object of route -> {'probability' if high else 'number'}")
    rates: dict[str, float] = {}
    for route, p in value.items():
        if route != "*" and route not in ROUTES:
            raise FaultConfigError(f"{key}: unknown route {route!r} (known: *, {', '.join(ROUTES)})")
        rates[route] = _number(p, f"{key}[{route}]", low=0.0, high=high)
    return rates


@dataclass(frozen=True, slots=True)
class Crafted:
    """An answer made up by the test instead of the real one: what a broken or hostile server sends.

    ``body`` is sent as UTF-8 (``json`` is serialised instead when given, so any JSON value works);
    ``content_length`` is the header to send (None: the true length; a lie makes the client see a
    truncated body, or stop early). The connection is closed after it, so a lie cannot leak into
    the next response on the same connection.
    """

    rate: float = 1.0
    status: int = 200
    body: bytes = b""
    content_length: int | None = None
    content_type: str = "application/json"

    def as_json(self) -> dict[str, Any]:
        return {"rate": self.rate, "status": self.status, "body": self.body.decode("utf-8", "replace"),
                "content_length": self.content_length, "content_type": self.content_type}

    def head(self) -> bytes:
        """Status line and headers, exactly as sent (HTTP/1.1, Connection: close)."""
        length = len(self.body) if self.content_length is None else self.content_length
        return (f"HTTP/1.1 {self.status} Crafted\r\ncontent-type: {self.content_type}\r\n"
                f"content-length: {length}\r\nconnection: close\r\n\r\n").encode("latin-1")


def _crafted(value: object) -> dict[str, Crafted]:
    if not isinstance(value, dict):
        raise FaultConfigError("crafted must be an object of route -> answer")
    out: dict[str, Crafted] = {}
    for route, spec in value.items():
        where = f"crafted[{route}]"
        if route != "*" and route not in ROUTES:
            raise FaultConfigError(f"{where}: unknown route (known: *, {', '.join(ROUTES)})")
        if not isinstance(spec, dict):
            raise FaultConfigError(f"{where} must be an object")
        unknown = set(spec) - _CRAFTED_KEYS
        if unknown:
            raise FaultConfigError(f"{where}: unknown key(s): {', '.join(sorted(unknown))}")
        if "body" in spec and "json" in spec:
            raise FaultConfigError(f"{where}: give body or json, not both")
        if "json" in spec:
            # ASCII with \u escapes: lone surrogates (legal in JSON text) arrive as a JSON server sends them.
            body = json.dumps(spec["json"]).encode("ascii")
        elif isinstance(spec.get("body", ""), str):
            body = spec.get("body", "").encode("utf-8", "surrogatepass")
        else:
            raise FaultConfigError(f"{where}: body must be a string")
        status = spec.get("status", 200)
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise FaultConfigError(f"{where}: status must be an integer 100..599")
        length = spec.get("content_length")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 0):
            raise FaultConfigError(f"{where}: content_length must be a non-negative integer or null")
        ctype = spec.get("content_type", "application/json")
        if not isinstance(ctype, str) or any(c in ctype for c in "\r\n"):
            raise FaultConfigError(f"{where}: content_type must be a one-line string")
        rate = _number(spec.get("rate", 1.0), f"{where}.rate", low=0.0, high=1.0)
        out[route] = Crafted(rate, status, body, length, ctype)
    return out


@dataclass(frozen=True, slots=True)
class Decision:
    """What the faults do to one request."""

    delay: float = 0.0  # seconds to sleep before anything else
    rate_limited: bool = False
    server_error: bool = False
    corrupt: bool = False
    drop_at: float | None = None  # fraction of the body to send before dropping
    drop_after_work: bool = False
    crafted: Crafted | None = None


NO_FAULT = Decision()


class Faults:
    """The current fault set and its RNG."""

    def __init__(self, default_range: bool) -> None:
        self.default_range = default_range
        self.current = FaultSet(range=default_range)
        self.rng = random.Random()
        self._active = False

    def replace(self, obj: object) -> FaultSet:
        self.current = FaultSet.from_json(obj, default_range=self.default_range)
        self.rng = random.Random(self.current.seed)
        # Range, seed and retry_after alone inject nothing: skip the draws (the common case).
        f = self.current
        self._active = f != FaultSet(range=f.range, seed=f.seed, retry_after=f.retry_after)
        return self.current

    def decide(self, route: str) -> Decision:
        if not self._active:
            return NO_FAULT
        f = self.current
        delay = (f.latency_ms + f.rate(f.route_latency_ms, route)) / 1000
        if f.latency_jitter_ms:
            delay += self.rng.uniform(0, f.latency_jitter_ms) / 1000

        def hit(table: dict[str, float]) -> bool:
            p = f.rate(table, route)
            return p > 0 and self.rng.random() < p

        rate_limited = hit(f.rate_limit_rate)
        server_error = not rate_limited and hit(f.error_rate)
        corrupt = not (rate_limited or server_error) and hit(f.corrupt_rate)
        drop_at = self.rng.random() if hit(f.drop_rate) else None
        drop_after = hit(f.drop_after_request_rate)
        crafted = f.crafted.get(route, f.crafted.get("*"))
        if crafted is not None and not (crafted.rate > 0 and self.rng.random() < crafted.rate):
            crafted = None
        return Decision(delay, rate_limited, server_error, corrupt, drop_at, drop_after, crafted)


class Stats:
    """Per-route counters (docs/INTERNALS.md ``GET /_admin/stats``)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = dict.fromkeys(ROUTES, 0)
        self.bytes_sent = dict.fromkeys(ROUTES, 0)
        self.bytes_received = dict.fromkeys(ROUTES, 0)
        self.chunked_requests = dict.fromkeys(ROUTES, 0)  # bodies sent without a Content-Length

    def as_json(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "bytes_sent": dict(self.bytes_sent),
                "bytes_received": dict(self.bytes_received), "chunked_requests": dict(self.chunked_requests)}


class DropConnection(Exception):
    """Raised by ``ResponseTap`` after it dropped the connection; the app returns quietly."""


class ResponseTap:
    """An ASGI ``send`` wrapper for one /v1 request (see the module docstring)."""

    def __init__(self, send: Send, request_id: str, route: str | None, stats: Stats,
                 decision: Decision = NO_FAULT) -> None:
        self._send = send
        self._request_id = request_id.encode()
        self._route = route
        self._stats = stats
        self._drop_at = decision.drop_at
        self.drop_before_answer = decision.drop_after_work
        self._cut: int | None = None
        self._sent = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            await self._start(message)
        elif message["type"] == "http.response.body":
            await self._body(message)
        else:
            await self._send(message)

    async def _start(self, message: Message) -> None:
        if self.drop_before_answer:
            await self._drop()
        headers = list(message.get("headers", []))
        headers.append((b"x-request-id", self._request_id))
        if self._drop_at is not None:
            length = next((int(v) for k, v in headers if k.lower() == b"content-length"), 0)
            # Cut strictly inside the body when it has two bytes or more, so the client always
            # sees a short body (never a complete one, never only headers unless the body is tiny).
            self._cut = min(max(1, int(length * self._drop_at)), length - 1) if length >= 2 else 0
        await self._send({**message, "headers": headers})
        if self._cut == 0:
            await self._drop()

    async def _body(self, message: Message) -> None:
        body: bytes = message.get("body", b"")
        if self._cut is not None and self._sent + len(body) >= self._cut:
            prefix = body[: self._cut - self._sent]
            if prefix:
                self._count(len(prefix))
                await self._send({"type": "http.response.body", "body": prefix, "more_body": True})
            await self._drop()
        self._count(len(body))
        await self._send(message)

    def count(self, n: int) -> None:
        """Count body bytes sent around the tap (a crafted answer written raw)."""
        self._count(n)

    def _count(self, n: int) -> None:
        self._sent += n
        if self._route is not None:
            self._stats.bytes_sent[self._route] += n

    async def _drop(self) -> None:
        await close_connection(self._send)
        raise DropConnection


async def send_raw(send: Send, data: bytes) -> bool:
    """Write ``data`` as it is onto the connection behind uvicorn's ``send``, then close it; False
    when ``send`` is not uvicorn's (nothing was written)."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        return False
    transport.write(data)
    return await close_connection(send)


async def close_connection(send: Send) -> bool:
    """Close the client connection behind uvicorn's ``send`` after flushing what was written;
    False when ``send`` is not uvicorn's (then the caller's exception ends the response)."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        return False
    transport.close()
    with anyio.move_on_after(_DROP_WAIT):
        # uvicorn offers nothing to await for "connection lost" but its internal message_event,
        # which receive() clears; polling a flag for a few ms is the robust way.
        while not getattr(cycle, "disconnected", True):  # noqa: ASYNC110
            await anyio.sleep(0.002)
    return True
