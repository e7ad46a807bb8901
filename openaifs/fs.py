"""The pyfuse3 adapter: each FUSE call decoded, handed to the core, and its answer built.

Owns: conversion between FUSE types and ours (bytes names, EntryAttributes, FileInfo, flags), the
file-handle table, and the one decorator that turns every error into an errno. Holds no policy:
naming and freshness live in namespace.py, bytes in content.py, uploads in uploads.py.

Known departures from POSIX (docs/SEMANTICS.md has the whole list): uploaded files are immutable
(writes, O_TRUNC, truncate, chmod/utime on them → EACCES, also for root); directories cannot be
made or removed (EPERM); rename of an uploaded file is a new upload plus a delete, so it is not
atomic and gives the file a new id; close() of a new file blocks until the server has it.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from openaifs.config import MountConfig
from openaifs.errors import NotFoundError, OpenAIFSError, ReadOnlyError, errno_for
from openaifs.namespace import Attr, Kind, Namespace, Node
from openaifs.naming import survives_upload

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND
# Attributes of uploaded files never change (content is immutable), so the kernel may keep them
# for an hour; a remote delete is noticed through the entry timeout (the metadata TTL).
IMMUTABLE_ATTR_TIMEOUT = 3600.0
# The name of a file being written may vanish (failed upload): the kernel re-checks it after 1 s.
PENDING_TIMEOUT = 1.0
# statfs: the API has no quota call; report the documented 2.5 TB project storage limit.
CAPACITY_BYTES = 2_500 * 10**9
STATFS_BLOCK = 4096
MAX_INODES = 10**7


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


def _new_name(raw: bytes) -> str:
    """The name of a file being made (create, rename target): it must survive the upload unchanged.

    Not UTF-8 → EILSEQ (the API keeps names as text: ``\\xff`` would come back as U+FFFD); control
    characters → EINVAL (they come back as control pictures). Either way the file would otherwise
    vanish at ``close`` and reappear under another name.
    """
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise pyfuse3.FUSEError(errno.EILSEQ) from None
    if not survives_upload(name):
        raise pyfuse3.FUSEError(errno.EINVAL)
    return name


def fuse_errors(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Map every exception of a handler to a FUSEError: anything else escaping kills the mount."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OpenAIFSError as exc:
            code = errno_for(exc)
            level = logging.DEBUG if code == errno.ENOENT else logging.WARNING
            log.log(level, "%s: %s (%s)", fn.__name__, exc, errno.errorcode.get(code, code))
            raise pyfuse3.FUSEError(code) from None
        except Exception:
            log.exception("unexpected error in %s; answering EIO", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


@dataclass(slots=True)
class Handle:
    node: Node
    content: Any = None  # a content.ContentHandle for reads of uploaded files
    writable: bool = False


class NodeWriters:
    """How many writable handles each inode has: its spool lives until the last is released."""

    def __init__(self) -> None:
        self._count: dict[int, int] = {}

    def add(self, inode: int) -> None:
        self._count[inode] = self._count.get(inode, 0) + 1

    def remove(self, inode: int) -> bool:
        """Drop one writer; True when it was the last."""
        left = self._count.get(inode, 1) - 1
        if left > 0:
            self._count[inode] = left
            return False
        self._count.pop(inode, None)
        return True


@dataclass(slots=True)
class DirHandle:
    entries: list[tuple[str, Node]] = field(default_factory=list)
    purpose: str | None = None  # of the directory, if it is a purpose directory


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, ns: Namespace, content: Any, spool: Any, client: Any, config: MountConfig) -> None:
        super().__init__()
        self.ns = ns
        self.content = content
        self.spool = spool
        self.client = client
        self.config = config
        self._handles: dict[int, Handle | DirHandle] = {}
        self._next_fh = 1
        self._writers = NodeWriters()
        self._written: set[int] = set()  # inodes of new files that have had a write or truncate
        # Called once FUSE INIT arrives (mount.py raises the kernel read-ahead from it: see init).
        self.on_init: Callable[[], None] | None = None

    def init(self) -> None:
        """FUSE INIT: pyfuse3 calls this synchronously, just before it sends the INIT reply.

        The kernel caps the mount's read-ahead at what INIT negotiated (128 KiB) when it gets that
        reply, so whatever raises it must run afterwards: ``on_init`` only schedules that work.
        Must not raise (pyfuse3's rule for init).
        """
        if self.on_init is not None:
            try:
                self.on_init()
            except Exception:
                log.exception("the INIT hook failed")

    # -- helpers --------------------------------------------------------------------------------
    def _entry(self, attr: Attr, node: Node) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = attr.inode
        e.generation = 0
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_size = attr.size
        e.st_blksize = attr.blksize
        e.st_blocks = attr.blocks
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = attr.mtime_ns
        if node.kind is Kind.FILE and (node.pending is not None or node.record is None):
            # Open for writing: size and mode change (0644 → 0444 when the last writer closes);
            # 0 keeps stat exact. Only files being written pay the extra getattr.
            e.entry_timeout = PENDING_TIMEOUT
            e.attr_timeout = 0
        elif node.kind in (Kind.FILE, Kind.LINK):
            e.entry_timeout = self.ns.ttl
            e.attr_timeout = IMMUTABLE_ATTR_TIMEOUT
        else:
            e.entry_timeout = e.attr_timeout = self.ns.ttl
        return e

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        return self._entry(self.ns.attr(node), node)

    def _new_fh(self, handle: Handle | DirHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    def _file(self, fh: int) -> Handle:
        h = self._handles.get(fh)
        if not isinstance(h, Handle):
            raise pyfuse3.FUSEError(errno.EBADF)
        return h

    def _refuse_writes(self) -> None:
        if self.config.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)

    # -- metadata -------------------------------------------------------------------------------
    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        node = await self.ns.lookup(parent_inode, _name(name))
        if name not in (b".", b".."):
            self.ns.remember(node)
        return self._attrs(node)

    @fuse_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attrs(self.ns.node(inode))

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, count in inode_list:  # must never raise (pyfuse3 docs)
            try:
                self.ns.forget(inode, count)
            except Exception:
                log.exception("forget(%d) failed", inode)

    @fuse_errors
    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        node = self.ns.node(inode)
        if node.kind is not Kind.LINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(self.ns.link_target(node))

    @fuse_errors
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        if not self.ns.is_dir(inode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        # A snapshot per open directory gives readdir stable offsets (index + 1) whatever changes.
        return self._new_fh(DirHandle(await self.ns.entries(inode), self.ns.purpose_of_dir(inode)))

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        h = self._handles.get(fh)
        if not isinstance(h, DirHandle):
            raise pyfuse3.FUSEError(errno.EBADF)
        for index in range(start_id, len(h.entries)):
            name, node = h.entries[index]
            if node.removed or (node.kind is Kind.FILE and (node.name, node.purpose) != (name, h.purpose)):
                # Deleted or moved since opendir took the snapshot. readdirplus puts every entry it
                # sends into the kernel's dentry cache (for the TTL), so sending it would bring back
                # a name that `rm` or `mv` just removed: `rm f; stat f` would succeed while an `ls` runs.
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(node), index + 1):
                return
            self.ns.remember(node)  # readdirplus: each listed entry counts as a lookup

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    @fuse_errors
    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        files, used_bytes = self.ns.totals()
        used = -(-used_bytes // STATFS_BLOCK)
        total = max(CAPACITY_BYTES // STATFS_BLOCK, used)
        s.f_bsize = s.f_frsize = STATFS_BLOCK
        s.f_blocks = total
        s.f_bfree = s.f_bavail = total - used
        s.f_files = max(MAX_INODES, files)
        s.f_ffree = s.f_favail = s.f_files - files
        s.f_namemax = 255
        return s

    # -- reading --------------------------------------------------------------------------------
    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        node = self.ns.node(inode)
        if node.kind is not Kind.FILE:
            raise pyfuse3.FUSEError(errno.EISDIR if self.ns.is_dir(inode) else errno.EINVAL)
        wants_write = bool(flags & _WRITE_FLAGS)
        if node.pending is not None:  # still open for writing somewhere: the spool is the truth
            if wants_write:
                self._refuse_writes()
                if flags & os.O_TRUNC:
                    self.spool.truncate(node.pending, 0)
                self._writers.add(node.inode)
            return pyfuse3.FileInfo(fh=self._new_fh(Handle(node, writable=wants_write)), keep_cache=False)
        if wants_write:
            self._refuse_writes()
            raise ReadOnlyError(f"{node.name}: uploaded files are immutable")
        assert node.record is not None
        r = node.record
        handle = await self.content.open(r.id, r.bytes, r.purpose)
        # keep_cache: content of an uploaded file never changes, so the page cache stays valid.
        return pyfuse3.FileInfo(fh=self._new_fh(Handle(node, content=handle)), keep_cache=True)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes | bytearray | memoryview:
        h = self._file(fh)
        if h.content is None and h.node.pending is not None:
            return self.spool.read(h.node.pending, off, size)
        if h.content is None and h.node.record is not None:  # its writers are gone: read the upload
            r = h.node.record
            h.content = await self.content.open(r.id, r.bytes, r.purpose)
        if h.content is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return await self.content.read(h.content, off, size)

    # -- writing --------------------------------------------------------------------------------
    @fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any = None
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._refuse_writes()
        purpose = self.ns.purpose_of_dir(parent_inode)
        if purpose is None:
            raise pyfuse3.FUSEError(errno.EPERM if self.ns.is_dir(parent_inode) else errno.ENOTDIR)
        filename = _new_name(name)
        pending = self.spool.create(filename, purpose)
        node = self.ns.add_pending(parent_inode, filename, pending)
        self.ns.remember(node)
        self._writers.add(node.inode)
        fh = self._new_fh(Handle(node, writable=True))
        return pyfuse3.FileInfo(fh=fh, keep_cache=False), self._attrs(node)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._file(fh)
        if not h.writable or h.node.pending is None:
            raise pyfuse3.FUSEError(errno.EBADF if h.node.pending is not None else errno.EACCES)
        self._written.add(h.node.inode)
        return self.spool.write(h.node.pending, off, buf)

    @fuse_errors
    async def flush(self, fh: int) -> None:
        h = self._file(fh)
        if h.writable:
            await self._commit(h.node)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self._file(fh)
        if h.writable:
            await self._commit(h.node)

    async def _commit(self, node: Node) -> None:
        """Upload what was written since the last commit; close() returns what this raises."""
        pf = node.pending
        if pf is None:
            return
        if node.inode not in self._written and node.record is None:
            # Nothing written yet. `cat > f` closes its first fd (after dup2) before writing, so an
            # upload now would send an empty file (which `batch/` rejects) and then upload again.
            # A file closed without ever being written (`touch`) is uploaded at release instead.
            return
        previous = node.record
        try:
            record = await self.spool.commit(pf)
        except OpenAIFSError:
            # The entry disappears; the bytes are in failed-uploads/. The spool keeps the handle
            # usable until release, and every later flush reports the same failure.
            self.ns.remove(node)
            raise
        if record is None:  # nothing new since the last flush (a dup'ed fd, or a read-only close)
            return
        self.ns.commit_upload(node, record)
        if previous is not None and previous.id != record.id:
            # Written again after an earlier flush: the new upload replaces it. The upload itself
            # worked, so a failed delete must not turn this close() into an error.
            try:
                await self._delete_remote(previous.id)
            except OpenAIFSError as exc:
                log.warning("could not delete the earlier upload %s of %s: %s", previous.id, node.name, exc)

    async def _delete_remote(self, file_id: str) -> None:
        try:
            await self.client.delete(file_id)
        except NotFoundError:
            pass  # already gone: that is what we wanted
        self.content.discard(file_id)

    @fuse_errors
    async def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if not isinstance(h, Handle):
            return
        if h.content is not None:
            await self.content.release(h.content)
        if h.writable and self._writers.remove(h.node.inode):
            await self._last_writer_gone(h.node)

    async def _last_writer_gone(self, node: Node) -> None:
        pf = node.pending
        if pf is None:
            return
        if node.inode not in self._written and node.record is None and not node.removed:
            # Created and closed without a write (touch, `> f`): the empty file is uploaded now.
            # release cannot report errors, so a failure is logged (no byte is at stake).
            self._written.add(node.inode)
            try:
                await self._commit(node)
            except OpenAIFSError as exc:
                log.error("could not create the empty file %s: %s", node.name, exc)
        self._written.discard(node.inode)
        self.ns.writers_done(node)
        # A clean upload's spooled bytes are exactly the file: they seed the content cache, so
        # reading it back costs no download.
        self.spool.release(pf, adopt=lambda rec, path: self.content.adopt(rec.id, path, rec.bytes))

    @fuse_errors
    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None,
        ctx: Any = None,
    ) -> pyfuse3.EntryAttributes:
        node = self.ns.node(inode)
        self._refuse_writes()
        if fields.update_uid and attr.st_uid != self.ns.uid or fields.update_gid and attr.st_gid != self.ns.gid:
            raise pyfuse3.FUSEError(errno.EPERM)  # every file belongs to the mounting user
        if fields.update_size:
            if node.kind is not Kind.FILE or node.pending is None:
                raise ReadOnlyError(f"{node.name}: uploaded files are immutable")
            self.spool.truncate(node.pending, attr.st_size)
            self._written.add(node.inode)
        # Mode and times are accepted and ignored, on every file and directory: `cp -p`, `touch`
        # and `rsync -a` set them after writing (rsync after close, when the file is uploaded),
        # and the API has nowhere to keep them. Only the content is immutable.
        return self._attrs(node)

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        self._refuse_writes()
        node = await self.ns.lookup(parent_inode, _name(name))
        if node.kind is not Kind.FILE:
            raise pyfuse3.FUSEError(errno.EPERM)
        await self._drop(node)

    @fuse_errors
    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int,
        ctx: Any = None,
    ) -> None:
        self._refuse_writes()
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        node = await self.ns.lookup(parent_inode_old, _name(name_old))
        purpose = self.ns.purpose_of_dir(parent_inode_new)
        if node.kind is not Kind.FILE or purpose is None:
            raise pyfuse3.FUSEError(errno.EPERM)
        new_name = _new_name(name_new)
        try:
            target: Node | None = await self.ns.lookup(parent_inode_new, new_name)
        except OpenAIFSError:
            target = None
        if target is not None and flags & pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EEXIST)
        if target is node:
            return
        if target is not None and target.kind is not Kind.FILE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        await self._move(node, parent_inode_new, purpose, new_name, target)

    async def _move(self, node: Node, parent: int, purpose: str, name: str, target: Node | None) -> None:
        if node.pending is not None:  # open for writing: a local rename; the next flush uploads it
            if target is not None:
                await self._drop(target)
            self.spool.rename(node.pending, name, purpose)
            self.ns.rename_pending(node, parent, name)
            return
        old = node.record
        path = await self.content.materialize(old.id, old.bytes, old.purpose)
        record = await self.client.upload(path, name, purpose)
        self.content.link(record.id, old.id)  # the same bytes: the new id needs no download
        if target is not None:
            await self._drop(target)
        self.ns.commit_upload(node, record)  # the kernel moved this inode to the new name
        try:
            await self._delete_remote(old.id)
        except OpenAIFSError as exc:  # the move happened; the old copy is left behind, loudly
            log.error("moved %s to %s/%s but could not delete the old file %s: %s",
                      old.filename, purpose, name, old.id, exc)

    async def _drop(self, node: Node) -> None:
        """unlink: delete remotely (404 counts as done), then drop the entry at once."""
        if node.pending is not None:  # first, or a later flush would upload the deleted file again
            self.spool.discard(node.pending)
        if node.record is not None:
            await self._delete_remote(node.record.id)
        self.ns.remove(node)

    # -- refused --------------------------------------------------------------------------------
    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any = None) -> Any:
        self._refuse_writes()
        raise pyfuse3.FUSEError(errno.EPERM)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        self._refuse_writes()
        raise pyfuse3.FUSEError(errno.EPERM)

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any = None) -> Any:
        self._refuse_writes()
        raise pyfuse3.FUSEError(errno.EPERM)

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any = None) -> Any:
        self._refuse_writes()
        raise pyfuse3.FUSEError(errno.EPERM)

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any = None) -> Any:
        self._refuse_writes()
        raise pyfuse3.FUSEError(errno.EPERM)

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any = None) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: Any = None) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    # -- xattrs (only with --xattrs: answering them costs `ls -l` ~10x, PYFUSE3_NOTES §1.12) -------
    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        if not self.config.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        value = self._xattrs(self.ns.node(inode)).get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @fuse_errors
    async def listxattr(self, inode: int, ctx: Any = None) -> list[bytes]:
        if not self.config.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return list(self._xattrs(self.ns.node(inode)))

    @staticmethod
    def _xattrs(node: Node) -> dict[bytes, bytes]:
        r = node.record
        if r is None or node.kind is not Kind.FILE:
            return {}
        values = {
            "id": r.id,
            "purpose": r.purpose,
            "status": r.status,
            "created_at": str(r.created_at),
            "expires_at": None if r.expires_at is None else str(r.expires_at),
            "status_details": r.status_details,
        }
        # surrogatepass: JSON can carry lone surrogates (an id "\ud800"); strict UTF-8 would fail the call.
        return {f"user.openai.{k}".encode(): v.encode("utf-8", "surrogatepass")
                for k, v in values.items() if v is not None}


__all__ = ["Operations", "fuse_errors"]
