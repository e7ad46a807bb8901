"""A set of byte offsets kept as sorted, disjoint, non-adjacent half-open ranges ``[start, end)``.

Used twice per cached file: for the bytes present in the cache file, and for the bytes some fetch has
claimed (is downloading). Pure and synchronous; it knows nothing of files, tasks or the network.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator


class RangeSet:
    """Sorted disjoint ranges; adjacent or overlapping ranges are merged on ``add``."""

    __slots__ = ("_starts", "_ends")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add(start, end)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and self.as_list() == other.as_list()

    def __repr__(self) -> str:
        return f"RangeSet({self.as_list()!r})"

    def as_list(self) -> list[tuple[int, int]]:
        return list(self)

    def copy(self) -> RangeSet:
        new = RangeSet()
        new._starts = self._starts.copy()
        new._ends = self._ends.copy()
        return new

    @property
    def total(self) -> int:
        """Number of offsets in the set."""
        return sum(self._ends) - sum(self._starts)

    def add(self, start: int, end: int) -> int:
        """Add ``[start, end)``; return how many offsets were new."""
        if start >= end:
            return 0
        # Every range that overlaps or touches [start, end) is merged into it.
        lo = bisect_left(self._ends, start)
        hi = bisect_right(self._starts, end)
        if lo == hi:
            self._starts.insert(lo, start)
            self._ends.insert(lo, end)
            return end - start
        covered = sum(min(e, end) - max(s, start) for s, e in zip(self._starts[lo:hi], self._ends[lo:hi],
                                                                  strict=True) if e > start and s < end)
        new_start = min(start, self._starts[lo])
        new_end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [new_start]
        self._ends[lo:hi] = [new_end]
        return (end - start) - covered

    def remove(self, start: int, end: int) -> None:
        """Remove ``[start, end)`` (offsets not in the set are ignored)."""
        if start >= end:
            return
        lo = bisect_right(self._ends, start)
        hi = bisect_left(self._starts, end)
        if lo >= hi:
            return
        keep_s: list[int] = []
        keep_e: list[int] = []
        if self._starts[lo] < start:
            keep_s.append(self._starts[lo])
            keep_e.append(start)
        if self._ends[hi - 1] > end:
            keep_s.append(end)
            keep_e.append(self._ends[hi - 1])
        self._starts[lo:hi] = keep_s
        self._ends[lo:hi] = keep_e

    def contains(self, start: int, end: int) -> bool:
        """True if every offset of ``[start, end)`` is in the set (an empty range always is)."""
        if start >= end:
            return True
        i = bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def run_end(self, offset: int) -> int:
        """End of the range holding ``offset``, or ``offset`` itself when it is not in the set."""
        i = bisect_right(self._starts, offset) - 1
        if i >= 0 and self._ends[i] > offset:
            return self._ends[i]
        return offset

    def next_start(self, offset: int) -> int | None:
        """Start of the first range beginning after ``offset``, or None."""
        i = bisect_right(self._starts, offset)
        return self._starts[i] if i < len(self._starts) else None

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` that are not in the set, in order."""
        out: list[tuple[int, int]] = []
        pos = start
        i = max(bisect_right(self._starts, start) - 1, 0)
        while pos < end and i < len(self._starts):
            s, e = self._starts[i], self._ends[i]
            if e <= pos:
                i += 1
                continue
            if s >= end:
                break
            if s > pos:
                out.append((pos, s))
            pos = max(pos, e)
            i += 1
        if pos < end:
            out.append((pos, end))
        return out
