"""``ServerState``: everything a request handler may touch, built once by ``cli.run``.

Mutable parts (settings, faults, stats, clock, the set of uploads being completed) are only ever
changed on the event loop thread; the storage is safe to call from worker threads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio.to_thread

from openaifs.server.faults import Faults, Stats
from openaifs.server.settings import Clock, Settings
from openaifs.server.storage import Storage

T = TypeVar("T")


@dataclass
class ServerState:
    storage: Storage
    settings: Settings = field(default_factory=Settings)
    clock: Clock = field(default_factory=Clock)
    faults: Faults = field(default_factory=lambda: Faults(default_range=True))
    stats: Stats = field(default_factory=Stats)
    # The bearer key clients must send; None accepts any (or none), like a dev sandbox.
    api_key: str | None = field(default=None, repr=False)
    # Uploads whose /complete is running: parts, cancel and a second complete are refused meanwhile.
    completing: set[str] = field(default_factory=set)


async def blocking(func: Callable[..., T], *args: object) -> T:
    """Run a blocking storage or disk call in a worker thread."""
    return await anyio.to_thread.run_sync(func, *args)
