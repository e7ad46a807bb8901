"""Ending a child process by its pid: never by name, and never leaving it behind."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def end(proc: subprocess.Popen[Any], wait: float = 0.0) -> int:
    """Give ``proc`` ``wait`` seconds to exit by itself, then SIGTERM and 10 s, then SIGKILL; its exit code."""
    try:
        return proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)
