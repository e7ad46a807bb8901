"""The reliability suite (issue 8): proof that nothing is lost when things go wrong.

Real ``openaifs serve`` processes with fault injection, real mounts, real tools (cat, cp, ls, rm),
each module one kind of trouble:

- ``test_fault_storm``      5xx, 429 with retry-after, mid-body drops, latency spikes;
- ``test_server_gone``      the server stops and comes back on the same port;
- ``test_crash``            ``kill -9`` of the mount during an upload and during a download;
- ``test_hostile_server``   hypothesis-made listings, malformed JSON, wrong types, truncated bodies,
                            lying Content-Length;
- ``test_load``             16 workers at once; 100,000 files in one directory;
- ``test_security``         the API key in no log, argv, environment, error or cache file; modes;
                            other users; loopback; names that try to leave the cache dir.

Bounded: the default run takes a few minutes (``scripts/test`` runs it with everything else).

Soak mode, run by hand::

    .venv/bin/python -m pytest -p no:cacheprovider tests/reliability --soak [--soak-factor N]

multiplies the durations and counts (load duration, files read and uploaded in the storms,
hypothesis examples) by N (default 10) and the per-test timeout with them. ``--soak`` must come
with a path under tests/reliability (pytest reads this option only from here).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Environment for mounts that must give up on a dead server within seconds, not the default two
# minutes: 3 attempts at most, nothing retried past 5 s, 2 s to connect, 3 s of silence per read.
FAST_FAIL_ENV = {
    "OPENAIFS_MAX_ATTEMPTS": "3",
    "OPENAIFS_TOTAL_DEADLINE": "5",
    "OPENAIFS_CONNECT_TIMEOUT": "2",
    "OPENAIFS_READ_TIMEOUT": "3",
}
# The longest a single failing call may take with FAST_FAIL_ENV: the deadline bounds the retries,
# and the attempt running when it passes may still wait one read timeout.
FAST_FAIL_BOUND = 5 + 3 + 2


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("openaifs reliability")
    group.addoption("--soak", action="store_true", default=False,
                    help="reliability suite: run longer and bigger (see tests/reliability/conftest.py)")
    group.addoption("--soak-factor", type=float, default=10.0,
                    help="with --soak: multiply durations and counts by this (default 10)")


def _factor(config: pytest.Config) -> float:
    return float(config.getoption("--soak-factor")) if config.getoption("--soak") else 1.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    factor = _factor(config)
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)
            if factor > 1:
                item.add_marker(pytest.mark.timeout(int(300 * factor)))


@pytest.fixture
def scale(request: pytest.FixtureRequest) -> float:
    """1 normally; the soak factor under --soak (multiply durations and counts by it)."""
    return _factor(request.config)


@pytest.fixture(autouse=True)
def _fuse_required() -> None:
    if not os.path.exists("/dev/fuse"):
        if os.environ.get("CI") == "true":
            pytest.fail("no /dev/fuse: CI must not skip the reliability suite")
        pytest.skip("no /dev/fuse")
