"""The inode table and TTL listing cache, without FUSE: a fake lister and a fake clock."""

from __future__ import annotations

import pytest

from openaifs.client import FileRecord
from openaifs.config import KNOWN_PURPOSES
from openaifs.errors import NotFoundError, TransportError
from openaifs.namespace import BYID_NAME, ROOT_INODE, Kind, Namespace


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lister:
    """A verified fake of FilesClient.list_all: returns its records, counts calls, can fail."""

    def __init__(self, records: list[FileRecord]) -> None:
        self.records = records
        self.calls = 0
        self.fail = False

    async def __call__(self) -> list[FileRecord]:
        self.calls += 1
        if self.fail:
            raise TransportError("connection refused", operation="list")
        return list(self.records)


def rec(fid: str, name: str, purpose: str = "batch", created: int = 100, size: int = 10) -> FileRecord:
    return FileRecord(id=fid, filename=name, purpose=purpose, bytes=size, created_at=created)


def make(records: list[FileRecord], ttl: float = 60.0) -> tuple[Namespace, Lister, Clock, list]:
    clock, lister, invalidated = Clock(), Lister(records), []
    ns = Namespace(lister, ttl=ttl, uid=1000, gid=1000, clock=clock,
                   invalidate=lambda p, n, d: invalidated.append((p, n, d)))
    ns.apply_listing(records, clock())
    return ns, lister, clock, invalidated


async def names(ns: Namespace, inode: int) -> list[str]:
    return [n for n, _ in await ns.entries(inode)]


async def test_root_has_every_known_purpose_and_by_id() -> None:
    ns, lister, _, _ = make([])
    assert await names(ns, ROOT_INODE) == sorted([*KNOWN_PURPOSES, BYID_NAME])
    assert lister.calls == 0


async def test_unknown_purpose_gets_a_directory() -> None:
    ns, _, _, _ = make([rec("file-1", "x.bin", purpose="brand_new")])
    d = await ns.lookup(ROOT_INODE, "brand_new")
    assert d.kind is Kind.PURPOSE
    assert await names(ns, d.inode) == ["x.bin"]


async def test_duplicates_and_attributes() -> None:
    ns, _, _, _ = make([rec("file-B", "r.jsonl", created=200, size=7), rec("file-A", "r.jsonl", created=100)])
    batch = await ns.lookup(ROOT_INODE, "batch")
    assert await names(ns, batch.inode) == ["r (file-B).jsonl", "r.jsonl"]
    node = await ns.lookup(batch.inode, "r (file-B).jsonl")
    a = ns.attr(node)
    assert (a.mode, a.size, a.mtime_ns, a.uid) == (0o100444, 7, 200 * 10**9, 1000)
    assert ns.attr(batch).mode == 0o40755


async def test_fresh_miss_is_enoent_without_a_request() -> None:
    ns, lister, _, _ = make([rec("file-1", "a")])
    batch = await ns.lookup(ROOT_INODE, "batch")
    for probe in (".hidden", ".Trash-1000", "desktop.ini"):
        with pytest.raises(NotFoundError):
            await ns.lookup(batch.inode, probe)
    assert lister.calls == 0


async def test_stale_miss_refreshes_once_and_finds_new_file() -> None:
    ns, lister, clock, _ = make([rec("file-1", "a")])
    batch = await ns.lookup(ROOT_INODE, "batch")
    lister.records.append(rec("file-2", "b", created=300))
    clock.now += 61
    node = await ns.lookup(batch.inode, "b")
    assert node.file_id == "file-2" and lister.calls == 1
    with pytest.raises(NotFoundError):  # fresh again: no second request
        await ns.lookup(batch.inode, "nope")
    assert lister.calls == 1


async def test_inode_is_stable_per_file_id_across_refreshes() -> None:
    ns, lister, clock, _ = make([rec("file-1", "a")])
    batch = await ns.lookup(ROOT_INODE, "batch")
    first = (await ns.lookup(batch.inode, "a")).inode
    clock.now += 61
    await ns.refresh()
    assert (await ns.lookup(batch.inode, "a")).inode == first
    assert ns.file_inode("file-1") == first


async def test_remote_delete_invalidates_the_kernel_entry() -> None:
    ns, lister, clock, invalidated = make([rec("file-1", "a"), rec("file-2", "b")])
    batch = await ns.lookup(ROOT_INODE, "batch")
    inode = (await ns.lookup(batch.inode, "a")).inode
    lister.records = [rec("file-2", "b")]
    clock.now += 61
    assert await names(ns, batch.inode) == ["b"]
    assert (batch.inode, "a", inode) in invalidated


async def test_failed_refresh_serves_stale_listing() -> None:
    ns, lister, clock, _ = make([rec("file-1", "a")])
    batch = await ns.lookup(ROOT_INODE, "batch")
    lister.fail = True
    clock.now += 61
    assert await names(ns, batch.inode) == ["a"]


async def test_by_id_links_point_at_current_names() -> None:
    ns, _, _, _ = make([rec("file-1", "a/b.txt", purpose="vision")])
    link = await ns.lookup(ns.byid_inode, "file-1")
    assert link.kind is Kind.LINK
    assert ns.link_target(link) == "../vision/a\uff0fb.txt"
    assert ns.attr(link).mode == 0o120777


async def test_own_upload_survives_a_listing_that_began_before_it() -> None:
    ns, lister, clock, _ = make([])
    batch = await ns.lookup(ROOT_INODE, "batch")

    class Pending:
        size = 3
        dirty = True

    node = ns.add_pending(batch.inode, "new.jsonl", Pending())
    assert ns.attr(node).mode == 0o100644
    started = clock()
    clock.now += 1
    ns.commit_upload(node, rec("file-9", "new.jsonl", created=1001, size=3))
    node.pending = None
    ns.apply_listing([], started)  # a listing taken before the upload finished
    assert (await ns.lookup(batch.inode, "new.jsonl")).inode == node.inode
    assert ns.attr(node).mode == 0o100444


async def test_own_delete_is_not_undone_by_a_late_listing() -> None:
    ns, lister, clock, _ = make([rec("file-1", "a")])
    batch = await ns.lookup(ROOT_INODE, "batch")
    node = await ns.lookup(batch.inode, "a")
    ns.remove(node)
    clock.now += 61
    await ns.refresh()  # the server still lists it (deletes may show late)
    assert await names(ns, batch.inode) == []
    lister.records = []
    clock.now += 61
    await ns.refresh()
    assert ns._tombstones == set()


async def test_forget_drops_only_removed_pending_inodes() -> None:
    ns, _, _, _ = make([rec("file-1", "a")])
    batch = await ns.lookup(ROOT_INODE, "batch")
    node = await ns.lookup(batch.inode, "a")
    ns.remember(node)
    ns.forget(node.inode, 1)
    assert ns.node(node.inode) is node  # identity of an uploaded file is permanent
    pending = ns.add_pending(batch.inode, "p", object())
    ns.remember(pending)
    ns.remove(pending)
    ns.forget(pending.inode, 1)
    with pytest.raises(NotFoundError):
        ns.node(pending.inode)


async def test_dot_and_dotdot_lookups() -> None:
    ns, _, _, _ = make([])
    batch = await ns.lookup(ROOT_INODE, "batch")
    assert (await ns.lookup(batch.inode, ".")).inode == batch.inode
    assert (await ns.lookup(batch.inode, "..")).inode == ROOT_INODE
