"""One attempt at a request, what its failure looks like, and the budget that decides on retries.

Owns the seam between httpx and our typed errors: ``failure_from_exception`` is the one place an
httpx exception is classified (does it merit a retry? may the request have reached the server?), and
``failure_from_response`` the one place an error status and body are read. A ``Failure`` becomes an
``OpenAIFSError`` only through ``Failure.error``; no raw httpx exception leaves this package.

``Budget`` spends the retry policy of ``retry.py`` for one logical call: it counts attempts, measures
elapsed time on the injected clock, logs, sleeps with the injected sleep, or raises the final error.
It never logs headers or anything else that could hold the API key.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from openaifs.client.records import ClientStats
from openaifs.client.retry import (
    EXC_CONNECT,
    EXC_DROPPED,
    EXC_TIMEOUT,
    give_up_reason,
    is_retryable,
    retry_decision,
)
from openaifs.config import ClientConfig
from openaifs.errors import OpenAIFSError, TransportError, api_error, scrub

log = logging.getLogger("openaifs.client")

# Error bodies are read up to this many bytes and their text kept up to ERROR_TEXT_LIMIT characters:
# enough for any real error envelope, bounded against a server that answers an error with a file.
ERROR_BODY_LIMIT = 64 * 1024
ERROR_TEXT_LIMIT = 500

# Exceptions httpx raises that are not HTTPError subclasses but still mean "this request failed".
HTTPX_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError)


@dataclass(frozen=True)
class Failure:
    """One failed attempt: an HTTP error answer (``status``) or a transport exception (``exc``)."""

    route: str
    operation: str
    file_id: str | None = None
    status: int | None = None
    headers: dict[str, str] | None = None
    message: str = ""
    type: str | None = None
    code: str | None = None
    param: str | None = None
    request_id: str | None = None
    exc_kind: str | None = None  # retry.EXC_* for a retryable transport failure, else None
    exc: BaseException | None = None
    # Whether the request may have reached the server and been acted on (a 5xx, a timeout or a
    # dropped connection after sending); decides whether an upload must look for its own result.
    reached: bool = False

    def describe(self) -> str:
        if self.status is not None:
            return f"HTTP {self.status}" + (f" ({self.code})" if self.code else "")
        return _describe_exc(self.exc)

    def error(self, reason: str | None = None) -> OpenAIFSError:
        if self.status is not None:
            return api_error(
                self.status,
                self.message,
                type=self.type,
                code=self.code,
                param=self.param,
                request_id=self.request_id,
                file_id=self.file_id,
                operation=self.operation,
            )
        text = _describe_exc(self.exc) + (f"; {reason}" if reason else "")
        return TransportError(text, operation=self.operation, file_id=self.file_id)


_KIND_WORDS = {
    EXC_CONNECT: "could not connect to the server",
    EXC_TIMEOUT: "the server did not answer in time",
    EXC_DROPPED: "the connection broke",
}


def _describe_exc(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    kind, _ = classify(exc)
    words = _KIND_WORDS.get(kind or "", "the request could not be made")
    detail = str(exc).strip()
    return f"{words} ({type(exc).__name__}{': ' + scrub(detail)[:200] if detail else ''})"


def classify(exc: BaseException) -> tuple[str | None, bool]:
    """(retry kind or None when retrying cannot help, whether the server may have acted on it)."""
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError | httpx.PoolTimeout | httpx.ProxyError):
        return EXC_CONNECT, False
    if isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout):
        return EXC_TIMEOUT, True
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError | httpx.CloseError):
        return EXC_DROPPED, True
    if isinstance(exc, httpx.DecodingError):
        return EXC_DROPPED, True
    if isinstance(exc, BrokenBody):
        return EXC_DROPPED, True
    # UnsupportedProtocol, InvalidURL, LocalProtocolError, StreamError: our mistake or a config
    # problem; another attempt would fail the same way.
    return None, False


class BrokenBody(Exception):
    """A response body ended before its Content-Length (or before the range asked for)."""


def failure_from_exception(exc: BaseException, route: str, operation: str, file_id: str | None) -> Failure:
    kind, reached = classify(exc)
    return Failure(route, operation, file_id, exc_kind=kind, exc=exc, reached=reached)


def failure_from_response(
    response: httpx.Response, body: bytes, route: str, operation: str, file_id: str | None
) -> Failure:
    message, etype, code, param = parse_error_body(body, response.status_code, response.reason_phrase)
    return Failure(
        route,
        operation,
        file_id,
        status=response.status_code,
        headers=dict(response.headers.items()),
        message=message,
        type=etype,
        code=code,
        param=param,
        request_id=response.headers.get("x-request-id"),
        reached=response.status_code >= 500,
    )


def parse_error_body(body: bytes, status: int, reason: str) -> tuple[str, str | None, str | None, str | None]:
    """(message, type, code, param) from an error envelope, or from whatever text the body holds."""
    body = body[:ERROR_BODY_LIMIT]
    try:
        obj: Any = json.loads(body)
    except ValueError:
        obj = None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        message = err.get("message")
        return (
            _text(message) if message is not None else f"HTTP {status} {reason}".strip(),
            _opt_str(err.get("type")),
            _opt_str(err.get("code")),
            _opt_str(err.get("param")),
        )
    if isinstance(err, str):  # some proxies answer {"error": "text"}
        return _text(err), None, None, None
    text = body.decode("utf-8", "replace").strip()
    return (_text(text) if text else f"HTTP {status} {reason}".strip()), None, None, None


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())  # one line: no newlines from an HTML error page
    return text if len(text) <= ERROR_TEXT_LIMIT else text[: ERROR_TEXT_LIMIT - 1] + "…"


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


class Budget:
    """The retry budget of one logical call: attempts so far and the time they have taken."""

    def __init__(
        self,
        config: ClientConfig,
        stats: ClientStats,
        rng: random.Random,
        sleep: Callable[[float], Awaitable[Any]],
        clock: Callable[[], float],
    ) -> None:
        self._config = config
        self._stats = stats
        self._rng = rng
        self._sleep = sleep
        self._clock = clock
        self.attempts = 0
        self.started = clock()

    def reset(self) -> None:
        """Start afresh (a download that made real progress since its last failure)."""
        self.attempts = 0
        self.started = self._clock()

    def decide(self, failure: Failure) -> float | None:
        """Count the failed attempt; the delay before the next one, or None to give up."""
        self.attempts += 1
        return retry_decision(
            attempt=self.attempts,
            elapsed=self._clock() - self.started,
            config=self._config,
            rng=self._rng,
            status=failure.status,
            headers=failure.headers,
            error_code=failure.code,
            error_type=failure.type,
            exc_kind=failure.exc_kind,
            wall_now=time.time(),
        )

    def final_error(self, failure: Failure) -> OpenAIFSError:
        """The error to raise after ``decide`` said None, logged if retrying was possible in principle."""
        where = f" of {failure.file_id}" if failure.file_id else ""
        if not is_retryable(failure.status, failure.headers, failure.code, failure.type, failure.exc_kind):
            log.debug("%s%s failed with %s; not retried", failure.operation, where, failure.describe())
            return failure.error()
        reason = give_up_reason(
            attempt=self.attempts,
            elapsed=self._clock() - self.started,
            config=self._config,
            headers=failure.headers,
            wall_now=time.time(),
        )
        log.warning("%s%s failed with %s; %s", failure.operation, where, failure.describe(), reason)
        return failure.error(reason)

    async def wait(self, failure: Failure, delay: float) -> None:
        where = f" of {failure.file_id}" if failure.file_id else ""
        log.info(
            "%s%s: attempt %d failed with %s; retrying in %.2f s",
            failure.operation,
            where,
            self.attempts,
            failure.describe(),
            delay,
        )
        self._stats.retries[failure.route] += 1
        await self._sleep(delay)

    async def wait_or_raise(self, failure: Failure) -> None:
        delay = self.decide(failure)
        if delay is None:
            raise self.final_error(failure) from failure.exc
        await self.wait(failure, delay)
