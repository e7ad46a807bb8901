"""Progress lines for long transfers: quiet for short ones, one INFO line at a steady pace for long ones.

Owns only the decision of when to log and the wording. A transfer shorter than ``FIRST_AFTER``
seconds logs nothing (a filesystem that logs every `cat` is noise); after that one line every
``EVERY`` seconds says how far it is and at what rate, and a last line says it finished.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("openaifs.progress")

FIRST_AFTER = 5.0  # seconds: what "takes longer than a few seconds" means
EVERY = 10.0  # seconds between lines: a 1 GiB upload at 50 MiB/s gets two lines, not hundreds
MiB = 1024 * 1024


class Progress:
    """Call with the total bytes done so far (it may go back after a retried part)."""

    def __init__(self, what: str, total: int | None, *, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = log) -> None:
        self.what = what
        self.total = total
        self._clock = clock
        self._log = logger
        self._start = clock()
        self._next = self._start + FIRST_AFTER
        self._done = 0
        self._logged = False

    def __call__(self, done: int) -> None:
        self._done = done
        now = self._clock()
        if now >= self._next:
            self._next = now + EVERY
            self._logged = True
            self._log.info("%s: %s", self.what, self._line(now))

    def finish(self) -> None:
        """A last line, only for transfers that logged progress before."""
        if self._logged:
            self._log.info("%s: done, %s", self.what, self._line(self._clock()))

    def _line(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-9)
        rate = self._done / MiB / elapsed
        of = f" of {self.total / MiB:.0f} MiB" if self.total else ""
        return f"{self._done / MiB:.0f} MiB{of} in {elapsed:.0f} s ({rate:.1f} MiB/s)"
