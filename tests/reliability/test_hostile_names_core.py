"""Hostile ids, purposes and numbers from a listing, checked on the core without a kernel (fast).

The end-to-end version (real listings through a real mount) is test_hostile_server.py; these pin down
the rules that keep every directory listable: the kernel fails a whole ``readdir`` with EIO when one
name holds ``/`` or NUL, and pyfuse3 cannot send a size or time that does not fit 64 bits.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openaifs.client import FileRecord
from openaifs.namespace import BYID_NAME, ROOT_INODE, Namespace
from openaifs.naming import NAME_MAX, assign_names, link_name, purpose_dir_name, safe_id, with_id


def sane(name: str) -> bool:
    raw = name.encode("utf-8", "surrogateescape")
    return 0 < len(raw) <= NAME_MAX and b"/" not in raw and b"\0" not in raw and name not in (".", "..")


def rec(fid: str, name: str = "a.txt", purpose: str = "batch", created: int = 1, size: int = 1) -> FileRecord:
    return FileRecord(fid, name, purpose, size, created)


@pytest.mark.timeout(20)
def test_long_ids_sharing_a_prefix_do_not_loop_for_ever() -> None:
    """Three files with one filename and 300-byte ids alike in their first 255 bytes: the id suffix
    was cut to the same name for two of them, and assign_names looped for ever (the mount hung)."""
    prefix = "file-" + "z" * 300
    files = [rec(prefix + str(i), "same.txt", created=i) for i in range(3)]
    names = assign_names(files)
    assert len(set(names.values())) == 3 and all(sane(n) for n in names.values())


def test_ids_in_names_are_made_safe() -> None:
    assert with_id("a.txt", "x/y") == f"a (x\uff0fy~{safe_id('x/y')[-16:]}).txt"
    for fid in ["", ".", "..", "a/b", "\0", "\ud800", "z" * 1000]:
        assert sane(with_id("a.txt", fid)) and sane(safe_id(fid, NAME_MAX))
    assert safe_id("file-abc123") == "file-abc123"  # real ids are themselves
    assert safe_id("a/b") != safe_id("a\uff0fb")  # sanitizing must not merge two ids


def test_purpose_directory_names() -> None:
    taken = {BYID_NAME, "batch"}
    assert purpose_dir_name("vision", taken) == "vision"
    assert purpose_dir_name(BYID_NAME, taken) == f"{BYID_NAME} (2)"
    assert purpose_dir_name("batch", taken) == "batch (2)"
    for p in ["", ".", "..", "a/b", "\0", "x" * 1000, "\ud800"]:
        assert sane(purpose_dir_name(p, taken))


def test_link_names_are_unique() -> None:
    taken: set[str] = set()
    for fid in ["a/b", "a\uff0fb", "", "\u2205", "file-1", "."]:
        name = link_name(fid, taken)
        assert sane(name) and name not in taken
        taken.add(name)


class Lister:
    def __init__(self) -> None:
        self.records: list[FileRecord] = []

    async def __call__(self) -> list[FileRecord]:
        return list(self.records)


hostile = st.one_of(st.text(max_size=12), st.sampled_from(["", ".", "..", "/", "a/b", BYID_NAME, "batch",
                                                           "\0", "z" * 400, "\ud800"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(hostile, hostile, hostile, st.integers(-(2**80), 2**80), st.integers(0, 2**80)),
                max_size=15))
def test_any_records_give_a_sane_tree(rows: list[tuple[str, str, str, int, int]]) -> None:
    records = [FileRecord(fid, name, purpose, size, created) for fid, name, purpose, created, size in rows]
    ns = Namespace(Lister(), ttl=60)
    ns.apply_listing(records, 0.0)
    unique = {r.id: r for r in records}
    found: list[str] = []
    root = ns._dirs[ROOT_INODE].names  # the core's own view, as readdir would send it
    assert all(sane(n) for n in root)
    for name, inode in root.items():
        entries = ns._dirs[inode].names
        assert all(sane(n) for n in entries), entries
        for entry_inode in entries.values():
            node = ns.node(entry_inode)
            attr = ns.attr(node)
            assert 0 <= attr.size < 2**63 and -(2**63) < attr.mtime_ns < 2**63
            if name == BYID_NAME:
                target = ns.link_target(node)
                parent, _, entry = target.removeprefix("../").partition("/")
                assert ns._dirs[root[parent]].names[entry] == ns.file_inode(node.record.id)
            else:
                found.append(node.record.id)
    assert sorted(found) == sorted(unique)
    assert os.sep not in "".join(ns._dirs[ROOT_INODE].names)
