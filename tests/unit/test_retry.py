"""The retry policy (openaifs.client.retry): pure decisions checked with plain values, never sleeping."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from openaifs.client.retry import (
    EXC_CONNECT,
    EXC_DROPPED,
    EXC_TIMEOUT,
    MAX_SERVER_DELAY,
    backoff,
    give_up_reason,
    is_retryable,
    retry_decision,
    server_delay,
)
from openaifs.config import ClientConfig

CFG = ClientConfig(max_attempts=6, total_deadline=120.0)
NOW = 1_700_000_000.0  # a fixed wall clock for HTTP-date retry-after


class FixedRandom(random.Random):
    """random() always returns the same value: jitter becomes a known factor."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def decide(**kw: object) -> float | None:
    args: dict[str, object] = {
        "attempt": 1,
        "elapsed": 0.0,
        "config": CFG,
        "rng": FixedRandom(0.0),
        "wall_now": NOW,
    }
    args.update(kw)
    return retry_decision(**args)  # type: ignore[arg-type]


# -- which failures are retried ---------------------------------------------------------------
@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses(status: int) -> None:
    assert decide(status=status) is not None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 416, 422])
def test_other_client_errors_are_final(status: int) -> None:
    assert decide(status=status) is None


@pytest.mark.parametrize("kind", [EXC_CONNECT, EXC_TIMEOUT, EXC_DROPPED])
def test_transport_failures_are_retried(kind: str) -> None:
    assert decide(exc_kind=kind) is not None


def test_unknown_transport_failure_is_final() -> None:
    assert decide(exc_kind=None) is None
    assert decide(exc_kind="unsupported-protocol") is None


@pytest.mark.parametrize("field", ["error_code", "error_type"])
def test_quota_429_is_never_retried(field: str) -> None:
    assert decide(status=429, **{field: "insufficient_quota"}) is None
    # not even when the server says it should be
    assert decide(status=429, headers={"x-should-retry": "true"}, **{field: "insufficient_quota"}) is None
    assert decide(status=429, error_code="rate_limit_exceeded") is not None


def test_x_should_retry_overrides_the_status_rule() -> None:
    assert decide(status=400, headers={"x-should-retry": "true"}) is not None
    assert decide(status=503, headers={"x-should-retry": "false"}) is None
    assert decide(status=503, headers={"X-Should-Retry": "FALSE"}) is None
    # anything else is ignored and the status decides
    assert decide(status=503, headers={"x-should-retry": "maybe"}) is not None
    assert decide(status=400, headers={"x-should-retry": "1"}) is None


def test_x_should_retry_does_not_override_budget() -> None:
    assert decide(status=400, headers={"x-should-retry": "true"}, attempt=CFG.max_attempts) is None


# -- backoff ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("attempt", "base"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 8.0), (20, 8.0)]
)
def test_backoff_doubles_and_caps(attempt: int, base: float) -> None:
    assert backoff(attempt, FixedRandom(0.0)) == pytest.approx(base)
    # jitter scales into (0.75, 1]: random() < 1, so the factor never reaches 0.75 exactly
    assert backoff(attempt, FixedRandom(0.999999)) == pytest.approx(base * 0.75, rel=1e-5)
    assert backoff(attempt, FixedRandom(0.5)) == pytest.approx(base * 0.875)


def test_backoff_jitter_stays_in_range() -> None:
    rng = random.Random(7)
    for attempt in range(1, 10):
        base = min(0.5 * 2 ** (attempt - 1), 8.0)
        for _ in range(200):
            d = backoff(attempt, rng)
            assert 0.75 * base < d <= base


def test_decision_uses_backoff_without_server_delay() -> None:
    config = ClientConfig(max_attempts=10)
    assert decide(status=503, attempt=1, config=config) == pytest.approx(0.5)
    assert decide(status=503, attempt=3, config=config) == pytest.approx(2.0)
    assert decide(status=503, attempt=7, config=config) == pytest.approx(8.0)


# -- server-requested delays ------------------------------------------------------------------
def test_retry_after_ms_wins() -> None:
    assert decide(status=429, headers={"retry-after-ms": "250", "retry-after": "7"}) == pytest.approx(0.25)
    assert decide(status=429, headers={"Retry-After-Ms": "1500.5"}) == pytest.approx(1.5005)


def test_retry_after_seconds_int_and_float() -> None:
    assert decide(status=429, headers={"retry-after": "3"}) == pytest.approx(3.0)
    assert decide(status=503, headers={"Retry-After": " 0.05 "}) == pytest.approx(0.05)


def test_retry_after_http_date() -> None:
    when = datetime.fromtimestamp(NOW + 12, tz=UTC)
    assert decide(status=503, headers={"retry-after": format_datetime(when, usegmt=True)}) == pytest.approx(
        12
    )


def test_retry_after_date_in_the_past_falls_back_to_backoff() -> None:
    when = datetime.fromtimestamp(NOW - 100, tz=UTC)
    assert server_delay({"retry-after": format_datetime(when, usegmt=True)}, NOW) == 0.0
    assert decide(status=503, headers={"retry-after": format_datetime(when, usegmt=True)}) == pytest.approx(
        0.5
    )


@pytest.mark.parametrize("value", ["soon", "", "nan", "inf", "Mon, 99 Foo 2024 99:99:99 GMT"])
def test_unreadable_retry_after_falls_back_to_backoff(value: str) -> None:
    assert server_delay({"retry-after": value}, NOW) is None
    assert decide(status=429, headers={"retry-after": value}) == pytest.approx(0.5)


def test_unreadable_retry_after_ms_falls_back_to_retry_after() -> None:
    assert decide(status=429, headers={"retry-after-ms": "x", "retry-after": "2"}) == pytest.approx(2.0)


def test_zero_or_negative_server_delay_uses_backoff() -> None:
    assert decide(status=429, headers={"retry-after": "0"}) == pytest.approx(0.5)
    assert decide(status=429, headers={"retry-after-ms": "-5"}) == pytest.approx(0.5)


def test_server_delay_at_the_limit_is_honoured_and_beyond_gives_up() -> None:
    assert decide(status=429, headers={"retry-after": str(MAX_SERVER_DELAY)}) == pytest.approx(60.0)
    assert decide(status=429, headers={"retry-after": "60.5"}) is None
    assert decide(status=429, headers={"retry-after-ms": "61000"}) is None
    far = datetime.fromtimestamp(NOW + 3600, tz=UTC)
    assert decide(status=503, headers={"retry-after": format_datetime(far, usegmt=True)}) is None


def test_no_headers_means_no_server_delay() -> None:
    assert server_delay(None, NOW) is None
    assert server_delay({}, NOW) is None


# -- budget: attempts and deadline ---------------------------------------------------------------
def test_attempt_cap() -> None:
    config = ClientConfig(max_attempts=3)
    assert decide(status=503, attempt=1, config=config) is not None
    assert decide(status=503, attempt=2, config=config) is not None
    assert decide(status=503, attempt=3, config=config) is None
    assert decide(exc_kind=EXC_DROPPED, attempt=3, config=config) is None


def test_single_attempt_config_never_retries() -> None:
    assert decide(status=503, config=ClientConfig(max_attempts=1)) is None


def test_deadline_counts_the_delay() -> None:
    config = ClientConfig(total_deadline=10.0, max_attempts=100)
    assert decide(status=503, elapsed=9.4, config=config) == pytest.approx(0.5)
    assert decide(status=503, elapsed=9.6, config=config) is None
    assert decide(status=429, headers={"retry-after": "5"}, elapsed=4.0, config=config) == pytest.approx(5.0)
    assert decide(status=429, headers={"retry-after": "5"}, elapsed=6.0, config=config) is None
    assert decide(status=503, elapsed=11.0, config=config) is None


def test_simulated_outage_with_fake_clock_respects_both_bounds() -> None:
    """Run the policy as the client does, on a fake clock: total wait stays within the deadline."""
    config = ClientConfig(max_attempts=50, total_deadline=30.0)
    rng = random.Random(3)
    clock, attempts = 0.0, 0
    while True:
        clock += 0.2  # each failing attempt itself takes a little time
        attempts += 1
        delay = retry_decision(attempt=attempts, elapsed=clock, config=config, rng=rng, status=503)
        if delay is None:
            break
        clock += delay
    assert clock <= 30.0
    assert 5 <= attempts < 50  # the deadline, not the attempt cap, ended it


# -- helpers -------------------------------------------------------------------------------------
def test_is_retryable_headers_are_case_insensitive() -> None:
    assert is_retryable(400, {"X-SHOULD-RETRY": "true"}, None, None, None)


def test_give_up_reason_words() -> None:
    assert "6 attempts" in give_up_reason(attempt=6, elapsed=3.0, config=CFG, headers=None)
    assert "asked to wait 90 s" in give_up_reason(
        attempt=1, elapsed=0.0, config=CFG, headers={"retry-after": "90"}
    )
    assert "deadline" in give_up_reason(attempt=2, elapsed=119.9, config=CFG, headers=None)
