"""The inode table and the directory tree, served from a TTL metadata cache.

Owns: which inode is which file id (permanent for the life of the mount), the purpose
directories, the ``.by-id/`` symlinks, the names in each directory (through
:func:`openaifs.naming.assign_names`), lookup counts, and when the listing is refreshed.
Never does: content I/O, uploads, or anything with pyfuse3 (fs.py adapts this to FUSE).

Consistency model: one listing of every file (``GET /files``, paginated) fills every directory.
It is fresh for ``metadata_ttl`` seconds. While fresh, a missing name is ENOENT without any
request (file browsers probe many names that never exist). When stale, ``readdir`` and a lookup
miss refresh it first (one refresh at a time; concurrent callers share it); a lookup hit never
waits for the network. A refresh that fails leaves the stale tree in place and is logged, and the
stale tree is then served without asking again for one more TTL: with the server gone, only one
``ls`` per TTL waits out the client's retries, not every one.
Changes made by this mount (uploads, deletes, renames) show at once: they are applied to the
tree immediately, and a refresh that started before them cannot undo them.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from openaifs.client import FileRecord
from openaifs.config import KNOWN_PURPOSES
from openaifs.errors import NotFoundError, OpenAIFSError
from openaifs.naming import assign_names, base_name, bracketed, link_name, order_key, pick_name, purpose_dir_name

log = logging.getLogger(__name__)

ROOT_INODE = 1  # fixed by FUSE
BYID_NAME = ".by-id"
# st_blksize: cp, Python's open() and friends size their buffers by it, so it sets how many FUSE
# writes (and reads) a copy costs. 1 MiB, the largest request FUSE carries: a 488 MiB cp into the
# mount took 2.25 s with 128 KiB writes and 1.68 s with 1 MiB ones (DESIGN §1 asks >= 128 KiB).
BLOCK_SIZE = 1024 * 1024
# Server clocks and ours differ, and created_at has whole seconds: see _own_upload_in_flight.
OWN_UPLOAD_SLACK = 5.0


class Kind(enum.Enum):
    ROOT = "root"
    PURPOSE = "purpose"
    BYID = "by-id"
    FILE = "file"
    LINK = "link"


@dataclass(slots=True)
class Node:
    inode: int
    kind: Kind
    purpose: str | None = None
    name: str = ""  # current entry name in its directory ("" once removed)
    record: FileRecord | None = None  # set for uploaded files and their .by-id links
    pending: Any = None  # an uploads.PendingFile while the file is being written
    since: float = 0.0  # wall clock when a file being written was created (see _own_upload_in_flight)
    nlookup: int = 0
    removed: bool = False

    @property
    def file_id(self) -> str | None:
        return self.record.id if self.record else None


@dataclass(slots=True)
class Attr:
    """What getattr answers; fs.py converts it to pyfuse3.EntryAttributes."""

    inode: int
    mode: int
    size: int
    mtime_ns: int
    nlink: int
    uid: int
    gid: int
    blksize: int = BLOCK_SIZE

    @property
    def blocks(self) -> int:
        return math.ceil(self.size / 512)


@dataclass(slots=True)
class _Dir:
    node: Node
    names: dict[str, int] = field(default_factory=dict)  # entry name -> inode
    # For naming one file without renaming the others (purpose directories only): the base name
    # each file named by the rules asks for, how many ask for each, and the newest one's order key.
    base_of: dict[int, str] = field(default_factory=dict)  # inode -> base name
    asking: Counter[str] = field(default_factory=Counter)
    newest: tuple[int, str] | None = None


Lister = Callable[[], Awaitable[list[FileRecord]]]
Invalidator = Callable[[int, str, int], None]  # (parent inode, name, deleted inode or 0)


class Namespace:
    def __init__(
        self,
        lister: Lister,
        *,
        ttl: float,
        uid: int | None = None,
        gid: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        invalidate: Invalidator | None = None,
    ) -> None:
        self._lister = lister
        self.ttl = ttl
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self._clock = clock
        self._invalidate = invalidate or (lambda parent, name, deleted: None)
        self._nodes: dict[int, Node] = {}
        self._next_inode = ROOT_INODE
        self._file_inode: dict[str, int] = {}  # file id -> inode, permanent
        self._link_inode: dict[str, int] = {}  # file id -> .by-id symlink inode, permanent
        self._records: dict[str, FileRecord] = {}
        self._totals: tuple[int, int] | None = None  # statfs numbers; None after any change
        self._dirs: dict[int, _Dir] = {}
        self._purpose_inode: dict[str, int] = {}
        self._listed_at: float | None = None
        self._quiet_until: float | None = None  # after a failed refresh: serve the stale tree until then
        self._refreshing: trio.Event | None = None
        self._tombstones: set[str] = set()  # ids this mount deleted; a listing may still show them
        self._local_since: dict[str, float] = {}  # ids this mount added, and when
        self.mount_time_ns = time.time_ns()
        root = self._new_node(Kind.ROOT)
        self._dirs[root.inode] = _Dir(root)
        byid = self._new_node(Kind.BYID, name=BYID_NAME)
        self._dirs[byid.inode] = _Dir(byid)
        self._dirs[ROOT_INODE].names[BYID_NAME] = byid.inode
        self.byid_inode = byid.inode
        for purpose in KNOWN_PURPOSES:
            self._purpose_dir(purpose)

    # -- inodes ---------------------------------------------------------------------------------
    def _new_node(self, kind: Kind, **fields: Any) -> Node:
        node = Node(self._next_inode, kind, **fields)
        self._next_inode += 1
        self._nodes[node.inode] = node
        return node

    def _purpose_dir(self, purpose: str) -> _Dir:
        inode = self._purpose_inode.get(purpose)
        if inode is None:
            root = self._dirs[ROOT_INODE]
            # Any string may come as a purpose: the directory gets a safe, unique name (permanent).
            name = purpose_dir_name(purpose, root.names)
            node = self._new_node(Kind.PURPOSE, purpose=purpose, name=name)
            self._dirs[node.inode] = _Dir(node)
            self._purpose_inode[purpose] = node.inode
            root.names[name] = node.inode
            inode = node.inode
        return self._dirs[inode]

    def node(self, inode: int) -> Node:
        try:
            return self._nodes[inode]
        except KeyError:
            raise NotFoundError(404, f"no inode {inode}", operation="lookup") from None

    def is_dir(self, inode: int) -> bool:
        return inode in self._dirs

    def purpose_of_dir(self, inode: int) -> str | None:
        node = self._nodes.get(inode)
        return node.purpose if node and node.kind is Kind.PURPOSE else None

    # -- freshness ------------------------------------------------------------------------------
    def is_fresh(self) -> bool:
        if self._listed_at is None:
            return False
        now = self._clock()
        return now - self._listed_at < self.ttl or (self._quiet_until is not None and now < self._quiet_until)

    async def refresh(self) -> None:
        """Fetch one listing and apply it; concurrent callers share one request."""
        if self._refreshing is not None:
            await self._refreshing.wait()
            return
        done = self._refreshing = trio.Event()
        started = self._clock()
        try:
            records = await self._lister()
            self.apply_listing(records, started)
        finally:
            self._refreshing = None
            done.set()

    async def ensure_fresh(self) -> None:
        """Refresh when stale; on failure keep serving the stale tree (logged), never raise."""
        if self.is_fresh():
            return
        try:
            await self.refresh()
        except OpenAIFSError as exc:
            if self._listed_at is None:
                raise
            self._quiet_until = self._clock() + self.ttl
            log.warning("listing failed, serving the cached listing (next try in %.3g s): %s", self.ttl, exc)

    def apply_listing(self, records: Iterable[FileRecord], started: float) -> None:
        """Replace the tree by a listing taken at ``started``, keeping this mount's own newer changes."""
        listed = {r.id: r for r in records}
        # A tombstone lasts until the server stops listing the id (deletes may show late).
        self._tombstones &= listed.keys()
        fresh = {fid: r for fid, r in listed.items() if fid not in self._tombstones}
        for fid, since in self._local_since.items():
            if fid not in fresh and since >= started and fid in self._records:
                fresh[fid] = self._records[fid]  # uploaded by us after the listing began
        self._local_since = {k: v for k, v in self._local_since.items() if v >= started}
        for fid in self._records.keys() - fresh.keys():
            inode = self._file_inode.get(fid)
            if inode is not None:
                self._mark_removed(self._nodes[inode])
        changed = {r.purpose for r in self._records.values()} | {r.purpose for r in fresh.values()}
        self._records = fresh
        self._totals = None
        self._rebuild(changed)
        self._listed_at = started
        self._quiet_until = None

    # -- names ----------------------------------------------------------------------------------
    # A listing names whole directories (_rebuild). A change of this mount (an upload, a close, an rm,
    # a rename) names only what the rules make it change, usually just its own entry (_place): an rm
    # or upload in a directory of 100,000 files must not walk all of them while every request waits.

    def _rebuild(self, purposes: Iterable[str]) -> None:
        """Recompute the names of the given purpose directories and the .by-id links."""
        purposes = set(purposes)
        by_purpose: dict[str, list[FileRecord]] = {p: [] for p in purposes}
        for r in self._records.values():
            if r.purpose in by_purpose and not self._is_open_for_writing(r.id):
                by_purpose[r.purpose].append(r)
        for purpose, recs in by_purpose.items():
            self._rebuild_dir(self._purpose_dir(purpose), recs)
        self._rebuild_byid()

    def _is_open_for_writing(self, file_id: str) -> bool:
        inode = self._file_inode.get(file_id)
        return inode is not None and self._nodes[inode].pending is not None

    def _rebuild_dir(self, d: _Dir, recs: list[FileRecord]) -> None:
        # Files open for writing keep the entry their writer made, whatever their record says.
        pending = {name: ino for name, ino in d.names.items() if self._nodes[ino].pending is not None}
        if pending:
            recs = [r for r in recs if not self._own_upload_in_flight(r, pending)]
        bases: dict[str, str] = {}
        names = assign_names(recs, reserved=pending, bases=bases)
        new: dict[str, int] = dict(pending)
        base_of: dict[int, str] = {}
        for r in recs:
            node = self._file_node(r)
            node.record, node.purpose, node.name, node.removed = r, r.purpose, names[r.id], False
            new[node.name] = node.inode
            base_of[node.inode] = bases[r.id]
        if new != d.names:
            for name, ino in d.names.items():
                if new.get(name) != ino:
                    self._invalidate(d.node.inode, name, 0)
            d.names = new
        d.base_of = base_of
        d.asking = Counter(base_of.values())
        # assign_names fills ``bases`` oldest first: the last one is the newest file.
        d.newest = order_key(self._records[next(reversed(bases))]) if bases else None

    def _own_upload_in_flight(self, r: FileRecord, pending: dict[str, int]) -> bool:
        """Whether a listed file is, by all signs, the upload of a file still being written here,
        whose answer has not reached us (a retried upload, or one whose answer was lost): a new id,
        named like that file, made since it was created. It is not shown until the answer comes;
        shown, it would appear beside the writer's entry under a suffixed name, and vanish again
        between an `ls`'s readdir and its stat."""
        inode = pending.get(base_name(r))
        return (inode is not None and r.id not in self._file_inode
                and r.created_at >= self._nodes[inode].since - OWN_UPLOAD_SLACK)

    def _place(self, d: _Dir, node: Node, record: FileRecord | None, deleted: bool = False) -> None:
        """Give ``node`` the entry the rules give ``record`` in ``d``, or none (``record`` None), and
        rename whatever else that renames. ``record`` must be in the records, ``node`` not open for
        writing. Without a whole rebuild when (nearly always) the rules rename nothing else:

        * an entry leaving frees its name, which matters only to a file asking for exactly that
          name, or to one whose id-suffixed name it could be (:meth:`_may_be_suffixed`);
        * an entry arriving changes nothing older, since older files choose first: when it is the
          newest (an upload, nearly always), it just takes the name the rules give it now.
        """
        old = node.name if node.name and d.names.get(node.name) == node.inode else None
        if old is not None:
            del d.names[old]
        base = d.base_of.pop(node.inode, None)
        if base is not None:
            d.asking[base] -= 1
            if not d.asking[base]:
                del d.asking[base]
        others_keep_their_names = old is None or (old not in d.asking and not self._may_be_suffixed(old))
        new = None
        if record is not None:
            key = order_key(record)
            if others_keep_their_names and (d.newest is None or key > d.newest):
                base = base_name(record)
                new = pick_name(base, record.id, d.names)
                d.names[new] = node.inode
                d.base_of[node.inode] = base
                d.asking[base] += 1
                d.newest = key
                node.name, node.purpose, node.removed = new, record.purpose, False
            else:
                others_keep_their_names = False
        if old is not None and old != new:
            self._invalidate(d.node.inode, old, node.inode if deleted else 0)
        if not others_keep_their_names:
            self._rebuild_whole(d)

    def _rebuild_whole(self, d: _Dir) -> None:
        purpose = d.node.purpose
        self._rebuild_dir(d, [r for r in self._records.values()
                              if r.purpose == purpose and not self._is_open_for_writing(r.id)])

    def _may_be_suffixed(self, name: str) -> bool:
        """Whether a file's name with its id inserted could be ``name``: the text in some `` (…)`` of
        it is a file's id, or an id made safe (``~`` and a hash). ``report (1).pdf`` is not."""
        return any("~" in text or text in self._records for text in bracketed(name))

    def _move_entry(self, node: Node, record: FileRecord | None, deleted: bool = False) -> None:
        """:meth:`_place` across directories: ``node`` leaves its directory, and is named in that of
        ``record`` (if any)."""
        home = self._purpose_inode.get(node.purpose or "")
        there = self._purpose_dir(record.purpose) if record is not None else None
        if home is not None and (there is None or home != there.node.inode):
            self._place(self._dirs[home], node, None, deleted)
        if there is not None:
            self._place(there, node, record)

    def _rebuild_byid(self) -> None:
        d = self._dirs[self.byid_inode]
        # Links are named by their id (set arithmetic finds the gone ones), unless the id was unsafe.
        maybe_gone = d.names.keys() - self._records.keys()
        gone = [name for name in maybe_gone if self._nodes[d.names[name]].file_id not in self._records]
        for name in gone:
            self._nodes[d.names.pop(name)].removed = True
            self._invalidate(d.node.inode, name, 0)
        for r in self._records.values():
            self._link(r)

    def _link(self, r: FileRecord) -> None:
        """The .by-id link of ``r`` (made once per id, like the file's inode), in place."""
        d = self._dirs[self.byid_inode]
        inode = self._link_inode.get(r.id)
        if inode is None:  # named once, like the inode: the id itself, or a safe form of it
            inode = self._new_node(Kind.LINK, name=link_name(r.id, d.names)).inode
            self._link_inode[r.id] = inode
        link = self._nodes[inode]
        link.record, link.purpose, link.removed = r, r.purpose, False
        if d.names.get(link.name) != inode:
            if link.name in d.names:  # back after a removal, and a hostile id took its name meanwhile
                link.name = link_name(r.id, d.names)
            d.names[link.name] = inode

    def _unlink(self, file_id: str) -> None:
        d = self._dirs[self.byid_inode]
        inode = self._link_inode.get(file_id)
        if inode is None:
            return
        link = self._nodes[inode]
        link.removed = True
        if d.names.get(link.name) == inode:
            del d.names[link.name]
            self._invalidate(d.node.inode, link.name, 0)

    def _file_node(self, r: FileRecord) -> Node:
        inode = self._file_inode.get(r.id)
        if inode is None:
            inode = self._new_node(Kind.FILE, purpose=r.purpose, record=r).inode
            self._file_inode[r.id] = inode
        return self._nodes[inode]

    def _mark_removed(self, node: Node) -> None:
        parent = self._purpose_inode.get(node.purpose or "")
        if parent is not None and node.name and self._dirs[parent].names.get(node.name) == node.inode:
            self._invalidate(parent, node.name, node.inode)
        node.removed = True
        link = self._link_inode.get(node.file_id or "")
        if link is not None:
            self._nodes[link].removed = True

    # -- lookups --------------------------------------------------------------------------------
    async def lookup(self, parent: int, name: str) -> Node:
        """The node named ``name`` in directory ``parent``; NotFoundError if there is none."""
        if parent not in self._dirs:
            raise NotFoundError(404, f"inode {parent} is not a directory", operation="lookup")
        if name == ".":
            return self._nodes[parent]
        if name == "..":
            return self._nodes[ROOT_INODE]
        inode = self._dirs[parent].names.get(name)
        if inode is None and not self.is_fresh():
            await self.ensure_fresh()
            inode = self._dirs[parent].names.get(name)
        if inode is None:
            raise NotFoundError(404, f"no entry {name!r}", operation="lookup")
        return self._nodes[inode]

    async def entries(self, parent: int) -> list[tuple[str, Node]]:
        """A sorted snapshot of a directory's entries (refreshing a stale listing first)."""
        await self.ensure_fresh()
        d = self._dirs[parent]
        return [(name, self._nodes[ino]) for name, ino in sorted(d.names.items())]

    def attr(self, node: Node) -> Attr:
        if node.kind in (Kind.ROOT, Kind.PURPOSE, Kind.BYID):
            nlink = 2 + (len(self._purpose_inode) + 1 if node.kind is Kind.ROOT else 0)
            return Attr(node.inode, 0o40755, 0, self.mount_time_ns, nlink, self.uid, self.gid)
        if node.kind is Kind.LINK:
            target = self.link_target(node)
            mtime = _time_ns(node.record.created_at) if node.record else self.mount_time_ns
            return Attr(node.inode, 0o120777, len(target.encode()), mtime, 1, self.uid, self.gid)
        if node.pending is not None:  # open for writing: its size follows the writes
            return Attr(node.inode, 0o100644, node.pending.size, time.time_ns(), 1, self.uid, self.gid)
        r = node.record
        if r is None:
            return Attr(node.inode, 0o100444, 0, self.mount_time_ns, 1, self.uid, self.gid)
        return Attr(node.inode, 0o100444, _size(r.bytes), _time_ns(r.created_at), 1, self.uid, self.gid)

    def link_target(self, node: Node) -> str:
        fid = node.file_id or ""
        inode = self._file_inode.get(fid)
        target = self._nodes[inode] if inode is not None else None
        if target is None or target.removed or not target.name:
            return fid
        return f"../{self._nodes[self._purpose_inode[target.purpose or '']].name}/{target.name}"

    def totals(self) -> tuple[int, int]:
        """(number of files, their bytes) for statfs, which tools call often: recomputed only after
        the records changed, not on every call."""
        if self._totals is None:
            self._totals = (len(self._records), min(sum(r.bytes for r in self._records.values()), _MAX_INT64))
        return self._totals

    def file_inode(self, file_id: str) -> int | None:
        return self._file_inode.get(file_id)

    # -- lookup counts --------------------------------------------------------------------------
    def remember(self, node: Node) -> None:
        node.nlookup += 1

    def forget(self, inode: int, count: int) -> None:
        node = self._nodes.get(inode)
        if node is None:
            return
        node.nlookup = max(0, node.nlookup - count)
        # Identity is permanent (inode <-> file id), so nothing of an uploaded file is dropped; a
        # pending file that was unlinked and is no longer known to the kernel can go entirely.
        if node.nlookup == 0 and node.removed and node.record is None and node.kind is Kind.FILE:
            del self._nodes[inode]

    # -- this mount's own changes ---------------------------------------------------------------
    def add_pending(self, parent: int, name: str, pending: Any) -> Node:
        purpose = self.purpose_of_dir(parent)
        assert purpose is not None
        node = self._new_node(Kind.FILE, purpose=purpose, name=name, pending=pending, since=time.time())
        d = self._dirs[parent]
        d.names[name] = node.inode
        return node

    def commit_upload(self, node: Node, record: FileRecord) -> None:
        """``node`` is now the uploaded file ``record``: same inode, same bytes as written.

        Used when a new file is uploaded, when it is uploaded again after more writes, and when a
        rename re-uploads it under a new name or purpose. The inode may take the new id because
        its bytes are exactly those the kernel already has for it (keep_cache stays valid).
        """
        old = node.record
        if old is not None and old.id != record.id:  # the old id goes
            self._tombstones.add(old.id)
            self._records.pop(old.id, None)
            self._unlink(old.id)
        stale = self._file_inode.get(record.id)
        self._file_inode[record.id] = node.inode
        self._records[record.id] = record
        self._totals = None
        self._local_since[record.id] = self._clock()
        node.record = record
        self._link(record)
        if stale is not None and stale != node.inode:
            # A listing showed this upload before its answer came back (a retried upload found
            # stored): that entry was this very file, under a name the writer's name pushed aside.
            self._move_entry(self._nodes[stale], None)
            self._nodes[stale].removed = True
        if node.pending is None:  # an uploaded file renamed: named by the rules in its new place
            self._move_entry(node, record)
        # Still open for writing, it keeps its writer's entry until writers_done.
        node.purpose = record.purpose

    def writers_done(self, node: Node) -> None:
        """The last writer closed: the file is named by the rules again, like any uploaded file."""
        node.pending = None
        if node.record is not None:
            self._move_entry(node, node.record)

    def remove(self, node: Node) -> None:
        """Drop an entry at once (unlink done, or a failed upload); the inode lives until forget."""
        if node.record is not None:
            self._tombstones.add(node.record.id)
            self._records.pop(node.record.id, None)
            self._totals = None
            self._unlink(node.record.id)
        self._move_entry(node, None, deleted=True)
        node.removed = True
        self.forget(node.inode, 0)

    def rename_pending(self, node: Node, new_parent: int, new_name: str) -> None:
        """A file open for writing moved; the kernel already shows it under ``new_name``, and a file
        open for writing keeps the name its writer gave it."""
        self._move_entry(node, None)
        purpose = self.purpose_of_dir(new_parent)
        assert purpose is not None
        node.purpose, node.name = purpose, new_name
        d = self._dirs[new_parent]
        holder = d.names.get(new_name)
        d.names[new_name] = node.inode
        if holder is not None and holder != node.inode:
            # Removing the file it replaced handed the name to a namesake (duplicate filenames): the
            # namesake is named again, around the writer's name.
            self._rebuild_whole(d)


# Attributes travel as signed 64-bit numbers (sizes, and times in ns): a server's absurd ``bytes`` or
# ``created_at`` is clamped to what fits, or building the reply would fail the whole listing.
_MAX_INT64 = 2**63 - 1


def _size(n: int) -> int:
    return min(max(n, 0), _MAX_INT64)


def _time_ns(seconds: int) -> int:
    return max(min(seconds * 10**9, _MAX_INT64), -_MAX_INT64)
