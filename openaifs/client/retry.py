"""The retry policy of the client: one pure function that decides whether and when to try again.

It owns the decision only. It never sleeps, never reads a clock and never touches the network: the
caller passes in everything (attempt number, time spent, what went wrong, the response headers, the
random source) and gets back a delay in seconds, or ``None`` for "give up now". That keeps every rule
testable with plain values, and keeps the policy in one place.

The rules follow the official SDKs (``shared/contract/FILES_API.md`` §9) with two deliberate changes:

* A server-requested delay longer than ``MAX_SERVER_DELAY`` (60 s) makes us give up instead of
  waiting: a FUSE caller is blocked meanwhile, and ``pyfuse3.terminate()`` waits for it. (The Python
  SDK since 2.52 gives up above 120 s; older SDKs fell back to backoff; we pick the stricter bound.)
* Nothing is retried past ``total_deadline``: a delay that would end beyond it gives up at once
  rather than sleeping and then failing anyway. The deadline bounds retrying, not a transfer that
  is moving: a 512 MB upload on a slow link may rightly take longer, and each read or write that
  stalls is already bounded by the connection's timeouts.

A 429 with ``insufficient_quota`` (by code or by type) is never retried: the account is out of
credit, and asking again cannot help. ``x-should-retry`` from the server overrides the status rule,
but not the quota rule, the attempt cap or the deadline.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Mapping

from openaifs.config import ClientConfig

# Backoff constants are the SDKs' (FILES_API.md §9): 0.5 s doubling per retry, capped at 8 s,
# scaled by a jitter factor in (0.75, 1] so that many clients failing together do not retry in step.
INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 8.0
JITTER = 0.25
# A server asking for a longer pause than this is treated as "not now": we give up and report it.
MAX_SERVER_DELAY = 60.0

RETRY_STATUSES = frozenset({408, 409, 429})
QUOTA_CODES = frozenset({"insufficient_quota"})

# What went wrong when there is no HTTP status: the request may or may not have reached the server.
EXC_CONNECT = "connect"  # never reached the server (refused, DNS, connect timeout, pool timeout)
EXC_TIMEOUT = "timeout"  # sent (maybe partly) and no answer in time
EXC_DROPPED = "dropped"  # the connection broke while sending or receiving, or a body came up short
EXC_KINDS = frozenset({EXC_CONNECT, EXC_TIMEOUT, EXC_DROPPED})


def backoff(attempt: int, rng: random.Random) -> float:
    """Exponential backoff before retry number ``attempt`` (1 = the first retry), with jitter."""
    base = min(INITIAL_BACKOFF * 2 ** max(attempt - 1, 0), MAX_BACKOFF)
    return base * (1.0 - JITTER * rng.random())


def server_delay(headers: Mapping[str, str] | None, wall_now: float) -> float | None:
    """The delay the server asked for, in seconds, or None when it named none (or an unreadable one).

    ``retry-after-ms`` (milliseconds, float) wins over ``retry-after`` (seconds, float, or an HTTP
    date relative to ``wall_now``, Unix seconds). A date in the past means "now" (0 s).
    """
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms is not None:
        value = _finite_float(ms)
        if value is not None:
            return value / 1000.0
    ra = lowered.get("retry-after")
    if ra is None:
        return None
    value = _finite_float(ra)
    if value is not None:
        return value
    try:
        when = email.utils.parsedate_to_datetime(ra.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT; a naive one is read as such
        return None
    return max(when.timestamp() - wall_now, 0.0)


def _finite_float(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def is_retryable(
    status: int | None,
    headers: Mapping[str, str] | None,
    error_code: str | None,
    error_type: str | None,
    exc_kind: str | None,
) -> bool:
    """Whether the failure is of a kind worth another attempt (ignoring budget and delays)."""
    if status == 429 and (error_code in QUOTA_CODES or error_type in QUOTA_CODES):
        return False
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    should = lowered.get("x-should-retry", "").strip().lower()
    if should == "true":
        return True
    if should == "false":
        return False
    if status is None:
        return exc_kind in EXC_KINDS
    return status in RETRY_STATUSES or status >= 500


def retry_decision(
    *,
    attempt: int,
    elapsed: float,
    config: ClientConfig,
    rng: random.Random,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    error_code: str | None = None,
    error_type: str | None = None,
    exc_kind: str | None = None,
    wall_now: float = 0.0,
) -> float | None:
    """Seconds to wait before the next attempt, or None to give up.

    ``attempt`` is the number of attempts made so far (1 after the first failure); ``elapsed`` the
    seconds since the logical call began. Either ``status`` (an HTTP answer, with its ``headers`` and
    the error body's ``error_code``/``error_type``) or ``exc_kind`` (one of ``EXC_KINDS``) describes
    the failure. ``wall_now`` (Unix seconds) is only used to read an HTTP-date ``retry-after``.
    """
    if attempt >= config.max_attempts:
        return None
    if not is_retryable(status, headers, error_code, error_type, exc_kind):
        return None
    asked = server_delay(headers, wall_now)
    if asked is not None and asked > MAX_SERVER_DELAY:
        return None
    delay = asked if asked is not None and asked > 0 else backoff(attempt, rng)
    if elapsed + delay > config.total_deadline:
        return None
    return delay


def give_up_reason(
    *,
    attempt: int,
    elapsed: float,
    config: ClientConfig,
    headers: Mapping[str, str] | None,
    wall_now: float = 0.0,
) -> str:
    """Words for the log and the error once ``retry_decision`` said None for a retryable failure."""
    if attempt >= config.max_attempts:
        return f"gave up after {attempt} attempts"
    asked = server_delay(headers, wall_now)
    if asked is not None and asked > MAX_SERVER_DELAY:
        return f"the server asked to wait {asked:.0f} s, longer than the {MAX_SERVER_DELAY:.0f} s we wait"
    return f"gave up after {attempt} attempts in {elapsed:.1f} s (deadline {config.total_deadline:.0f} s)"
