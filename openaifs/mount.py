"""Running a mount: checks before mounting, pyfuse3 on trio, signals, clean unmount, readiness.

Owns the life of one mount process: validate the key with the first listing (which also fills
the tree, so a cold ``ls -l`` costs no further request), mount with ``auto_unmount`` (so even
SIGKILL leaves no dead mount), raise the kernel read-ahead, serve until SIGINT/SIGTERM or an
external ``fusermount3 -u``, then wait (bounded) for uploads in flight and unmount.
Never touches its own mountpoint once mounted: a request to itself would deadlock.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import trio

from openaifs.client import FilesClient
from openaifs.config import ClientConfig, MountConfig
from openaifs.content import CacheError, Content, ContentStore
from openaifs.errors import AuthenticationError, OpenAIFSError, TransportError
from openaifs.fs import Operations
from openaifs.namespace import Namespace
from openaifs.uploads import UploadSpool

log = logging.getLogger(__name__)

# 1 MiB kernel read-ahead: FUSE read requests grow from 128 KiB to 1 MiB, which about doubled cold
# sequential throughput in PYFUSE3_NOTES §1.13 (fewer ~50 µs round trips per byte).
READ_AHEAD_KB = 1024
# Unmount waits this long for uploads still in flight before giving up on them (their bytes are
# then preserved in failed-uploads/ by the next mount's recovery).
UPLOAD_DRAIN_SECONDS = 60.0


class MountError(Exception):
    """A reason not to mount; str() is one line for the user."""


def mounted_fs_type(mountpoint: Path) -> str | None:
    """The fs type mounted exactly at ``mountpoint`` per /proc/mounts (dead FUSE mounts too)."""
    target = os.path.realpath(mountpoint)
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[1].replace("\\040", " ") == target:
            found = parts[2]
    return found


def is_stale(mountpoint: Path) -> bool:
    """Whether the FUSE mount at ``mountpoint`` lost its filesystem process.

    ``stat`` alone cannot tell: the kernel answers it from cached attributes (an hour for the
    root) even after the connection was aborted. ``statvfs`` always asks the filesystem, and gets
    ENOTCONN from a dead one.
    """
    for probe in (os.statvfs, os.stat):
        try:
            probe(mountpoint)
        except OSError as exc:
            if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                return True
    return False


# How long a stale mount may take to be cleared by the auto_unmount helper of the dead process.
STALE_GRACE_SECONDS = 3.0


def _wait_unmounted(mountpoint: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while mounted_fs_type(mountpoint) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def check_mountpoint(mountpoint: Path, clear_stale: bool = True) -> None:
    """Raise MountError with one line for everything that would make the mount fail."""
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse module (modprobe fuse) or run where FUSE works")
    if shutil.which("fusermount3") is None:
        raise MountError("fusermount3 not found: install the fuse3 package (apt-get install fuse3)")
    fstype = mounted_fs_type(mountpoint)
    if fstype is not None and is_stale(mountpoint):
        if clear_stale and fstype.startswith("fuse"):
            # A crashed openaifs mount is cleared by fusermount3's auto_unmount helper within
            # moments; clearing it ourselves first would race that helper, which could then
            # unmount the new mount. Wait for it, and clear the mount only if nothing does.
            if not _wait_unmounted(mountpoint, STALE_GRACE_SECONDS):
                log.warning("clearing a stale mount at %s (its filesystem process is gone)", mountpoint)
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False, capture_output=True)
            if _wait_unmounted(mountpoint, STALE_GRACE_SECONDS):
                return check_mountpoint(mountpoint, clear_stale=False)
        raise MountError(
            f"{mountpoint} is a stale mount (Transport endpoint is not connected): "
            f"run `fusermount3 -u {mountpoint}` and try again"
        )
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(f"mountpoint {mountpoint} does not exist (create it with mkdir -p)") from None
    except OSError as exc:
        raise MountError(f"cannot use mountpoint {mountpoint}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    if fstype is not None:
        raise MountError(f"{mountpoint} is already mounted ({fstype}); unmount it first")


def fuse_options(config: MountConfig) -> set[str]:
    opts = set(pyfuse3.default_options)
    opts |= {"fsname=openai-files", "subtype=openaifs", "noatime", "auto_unmount"}
    if config.allow_other:
        opts.add("allow_other")
    if config.read_only:
        opts.add("ro")  # the kernel then refuses every write path with EROFS before we see it
    if config.debug:
        opts.add("debug")
    opts |= set(config.fuse_options)
    return opts


def raise_read_ahead(mountpoint: Path) -> None:
    """Set the bdi read-ahead of our mount, found via mountinfo.

    Only after FUSE INIT has been answered: the kernel sets the read-ahead to at most the
    ``max_readahead`` negotiated in INIT (128 KiB) when it receives the reply, undoing anything
    written before (measured: written before ``pyfuse3.main``, it read back as 128 and every read
    request stayed 128 KiB). ``mountpoint`` must already be absolute and resolved:
    ``os.path.realpath`` would lstat it, a FUSE request to ourselves that deadlocks.
    """
    target = str(mountpoint)
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            parts = line.split()
            if parts[4].replace("\\040", " ") == target:
                path = Path(f"/sys/class/bdi/{parts[2]}/read_ahead_kb")
                path.write_text(f"{READ_AHEAD_KB}\n")
                log.debug("read-ahead of %s: %s KiB", mountpoint, path.read_text().strip())
                return
    except OSError as exc:  # not root, or no sysfs: reads still work with 128 KiB requests
        log.info("could not raise read-ahead (%s); reads use 128 KiB requests", exc)


async def _after_init(mountpoint: Path) -> None:
    # On the event loop, not in a thread: a few microseconds of procfs/sysfs, and done before the
    # reads that follow the mount's first answers.
    raise_read_ahead(mountpoint)


async def _signals() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def serve(
    mcfg: MountConfig, ccfg: ClientConfig, ready: Callable[[str | None], None] | None = None
) -> int:
    """Mount and serve until unmounted. ``ready(None)`` once mounted, ``ready(reason)`` on failure."""
    notify = ready or (lambda reason: None)
    mcfg.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(mcfg.cache_dir, 0o700)
    async with FilesClient.make_http(ccfg) as http:
        client = FilesClient(ccfg, http)
        started = time.monotonic()
        try:
            records = await client.list_all()
        except AuthenticationError as exc:
            notify(f"the server refused the API key: {exc.message}")
            return 1
        except (TransportError, OpenAIFSError) as exc:
            notify(f"cannot list files at {ccfg.base_url}: {exc}")
            return 1

        def invalidate(parent: int, name: str, deleted: int) -> None:
            pyfuse3.invalidate_entry_async(parent, os.fsencode(name), deleted=deleted, ignore_enoent=True)

        ns = Namespace(client.list_all, ttl=mcfg.metadata_ttl, invalidate=invalidate)
        ns.apply_listing(records, started)
        spool = UploadSpool(client, mcfg.cache_dir)
        spool.recover()  # logs each file a crashed mount left behind, now in failed-uploads/
        try:
            store = ContentStore(mcfg.cache_dir / "content", mcfg.cache_size)
        except CacheError as exc:  # e.g. another mount uses this --cache-dir
            spool.close()
            notify(str(exc))
            return 1
        async with trio.open_nursery() as nursery:
            content = Content(client, store, nursery)
            spool.enable_streaming(nursery, start_at=ccfg.stream_upload_from, max_bytes=ccfg.single_upload_limit)
            ops = Operations(ns, content, spool, client, mcfg)
            try:
                pyfuse3.init(ops, str(mcfg.mountpoint), fuse_options(mcfg))
            except RuntimeError as exc:
                notify(f"mounting {mcfg.mountpoint} failed: {exc}")
                nursery.cancel_scope.cancel()
                return 1
            # A task started from INIT runs once pyfuse3 has sent the INIT reply (see raise_read_ahead).
            ops.on_init = lambda: nursery.start_soon(_after_init, mcfg.mountpoint)
            try:
                nursery.start_soon(_signals)
                log.info("mounted %s at %s (%d files)", ccfg.base_url, mcfg.mountpoint, len(records))
                notify(None)
                await pyfuse3.main()
                if not await spool.wait_idle(UPLOAD_DRAIN_SECONDS):
                    log.error("unmounting with uploads still in flight; their bytes stay in the spool")
            finally:
                pyfuse3.close(unmount=True)
                spool.close()  # preserves anything still unuploaded, releases the spool session
                with trio.move_on_after(10) as scope:
                    scope.shield = True  # record what arrived even if the nursery is being cancelled
                    await content.aclose()  # records what arrived, so the next mount reuses it
                nursery.cancel_scope.cancel()
        log.info("unmounted %s; %s; %s", mcfg.mountpoint, client.stats.summary(), content.summary())
    return 0
