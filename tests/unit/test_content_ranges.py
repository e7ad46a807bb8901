"""RangeSet against a model: a plain set of offsets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from openaifs.content import RangeSet

N = 64
spans = st.tuples(st.integers(0, N), st.integers(0, N)).map(lambda p: (min(p), max(p)))
ops = st.lists(st.tuples(st.sampled_from(["add", "remove"]), spans), max_size=30)


def as_set(rs: RangeSet) -> set[int]:
    return {i for s, e in rs for i in range(s, e)}


@given(ops, spans)
def test_rangeset_matches_a_set_of_offsets(operations: list[tuple[str, tuple[int, int]]],
                                           probe: tuple[int, int]) -> None:
    rs = RangeSet()
    model: set[int] = set()
    for op, (s, e) in operations:
        if op == "add":
            assert rs.add(s, e) == len(set(range(s, e)) - model)
            model |= set(range(s, e))
        else:
            rs.remove(s, e)
            model -= set(range(s, e))
        assert as_set(rs) == model
        pairs = rs.as_list()
        # sorted, disjoint, non-empty, not touching (adds merge adjacent ranges)
        assert all(a < b for a, b in pairs)
        assert all(pairs[i][1] < pairs[i + 1][0] for i in range(len(pairs) - 1))
        assert rs.total == len(model)
    s, e = probe
    assert rs.contains(s, e) == set(range(s, e)).issubset(model)
    gaps = rs.gaps(s, e)
    assert {i for a, b in gaps for i in range(a, b)} == set(range(s, e)) - model
    assert all(a < b for a, b in gaps)
    run = rs.run_end(s)
    if s in model:
        assert set(range(s, run)).issubset(model) and run not in model
    else:
        assert run == s
    nxt = rs.next_start(s)
    starts = [a for a, _ in rs]
    assert nxt == min((a for a in starts if a > s), default=None)


def test_rangeset_basics() -> None:
    rs = RangeSet([(10, 20), (20, 30), (40, 50)])
    assert rs.as_list() == [(10, 30), (40, 50)]
    assert rs.copy() == rs and len(rs) == 2
    rs.remove(15, 45)
    assert rs.as_list() == [(10, 15), (45, 50)]
    assert rs.gaps(0, 60) == [(0, 10), (15, 45), (50, 60)]
    assert rs.contains(3, 3) and not rs.contains(14, 16)
