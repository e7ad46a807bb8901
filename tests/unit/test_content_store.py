"""ContentStore: layout, permissions, hostile ids, persistence, crash safety, LRU eviction, adopt, discard."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from openaifs.content import CacheBusyError, ContentStore, cache_key
from tests.unit.test_content_fake import pattern

KiB = 1024
MiB = 1024 * KiB


def write(store: ContentStore, file_id: str, data: bytes, start: int, end: int) -> None:
    """Put ``data[start:end]`` into the entry (acquired and pinned by the caller)."""
    entry = store.get(file_id)
    assert entry is not None and entry.fd is not None
    ContentStore.pwrite_all(entry.fd, data[start:end], start)
    store.mark_present(entry, start, end)


def fill(store: ContentStore, file_id: str, data: bytes) -> None:
    """Cache all of ``data`` as ``file_id``, record it and leave the entry idle."""
    entry = store.acquire(file_id, len(data))
    write(store, file_id, data, 0, len(data))
    store.commit_sync(entry)
    assert store.unpin(entry) is False


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def cache_files(directory: Path) -> list[str]:
    """What the store keeps for files: everything but its lock and its (emptied) trash."""
    assert os.listdir(directory / "trash") == []
    return sorted(n for n in os.listdir(directory) if n not in (".lock", "trash"))


def test_directory_0700_and_files_0600(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        store = ContentStore(tmp_path / "cache" / "content", 10 * MiB)
        fill(store, "file-abc", pattern(5000))
    finally:
        os.umask(old)
    assert mode(store.dir) == 0o700
    names = os.listdir(store.dir)
    assert any(n.endswith(".data") for n in names) and any(n.endswith(".json") for n in names)
    for name in names:
        assert mode(store.dir / name) == (0o700 if name == "trash" else 0o600), name
    store.close()


def test_existing_directory_is_tightened(tmp_path: Path) -> None:
    d = tmp_path / "content"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    ContentStore(d, MiB).close()
    assert mode(d) == 0o700


@pytest.mark.parametrize("hostile", [
    "../../etc/passwd", "/etc/passwd", "..", ".", "", "a/b", "x\x00y", "..\\..\\win", "é" * 300,
    "file-" + "A" * 5000, "\udcff", ".lock", "empty",
])
def test_hostile_ids_stay_inside_the_cache_dir(tmp_path: Path, hostile: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = ContentStore(tmp_path / "cache", MiB)
    data = pattern(100)
    fill(store, hostile, data)
    assert os.listdir(outside) == []
    for name in os.listdir(store.dir):
        assert "/" not in name and name not in (".", "..")
        assert name in (".lock", "trash") or name.startswith(cache_key(hostile))
    store.close()
    again = ContentStore(tmp_path / "cache", MiB)
    entry = again.acquire(hostile, 100)
    assert entry.complete and again.pread(entry, 0, 100) == data
    again.unpin(entry)
    again.close()


def test_key_is_case_sensitive_and_fixed_length() -> None:
    assert cache_key("file-aB") != cache_key("file-Ab")
    assert len(cache_key("x" * 10000)) == 64


def test_ranges_and_completeness_persist(tmp_path: Path) -> None:
    data = pattern(3 * MiB)
    store = ContentStore(tmp_path, 100 * MiB)
    entry = store.acquire("file-p", len(data))
    write(store, "file-p", data, 0, MiB)
    write(store, "file-p", data, 2 * MiB, 2 * MiB + 10)
    store.unpin(entry)
    store.close()  # records what is present

    again = ContentStore(tmp_path, 100 * MiB)
    loaded = again.get("file-p")
    assert loaded is not None
    assert loaded.ranges.as_list() == [(0, MiB), (2 * MiB, 2 * MiB + 10)]
    assert not loaded.complete
    assert again.total_bytes == MiB + 10
    again.pin(loaded)
    assert again.pread(loaded, 2 * MiB, 10) == data[2 * MiB:2 * MiB + 10]
    write(again, "file-p", data, 0, len(data))
    assert loaded.complete
    again.unpin(loaded)
    again.close()
    third = ContentStore(tmp_path, 100 * MiB)
    assert third.is_complete("file-p")
    third.close()


def test_unrecorded_bytes_are_not_trusted_after_a_crash(tmp_path: Path) -> None:
    """Data written but never recorded (no commit before the 'crash') does not count on reopen."""
    data = pattern(2 * MiB)
    store = ContentStore(tmp_path, 100 * MiB)
    entry = store.acquire("file-c", len(data))
    write(store, "file-c", data, 0, MiB)
    store.commit_sync(entry)  # the first MiB is recorded...
    write(store, "file-c", data, MiB, 2 * MiB)  # ...the second is written but never recorded
    assert entry.complete
    abandon(store)  # a crash: no close, no commit

    again = ContentStore(tmp_path, 100 * MiB)
    loaded = again.get("file-c")
    assert loaded is not None and loaded.ranges.as_list() == [(0, MiB)] and not loaded.complete
    again.close()


def test_a_file_never_recorded_is_deleted_on_reopen(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, 100 * MiB)
    store.acquire("file-new", 1000)
    write(store, "file-new", pattern(1000), 0, 1000)
    abandon(store)
    again = ContentStore(tmp_path, 100 * MiB)
    assert again.get("file-new") is None
    assert cache_files(tmp_path) == []
    assert again.stats.dropped_on_load == 1
    again.close()


@pytest.mark.parametrize("damage", ["garbage", "wrong id", "range past size", "no data file",
                                    "data file size", "tmp left over", "data is a symlink"])
def test_inconsistent_sidecars_are_dropped(tmp_path: Path, damage: str) -> None:
    store = ContentStore(tmp_path, 100 * MiB)
    fill(store, "file-d", pattern(1000))
    store.close()
    sidecar = tmp_path / f"{cache_key('file-d')}.json"
    doc = json.loads(sidecar.read_text())
    data_file = tmp_path / doc["data"]
    if damage == "garbage":
        sidecar.write_bytes(b'{"v": 1, "id": ')
    elif damage == "wrong id":
        doc["id"] = "file-other"
        sidecar.write_text(json.dumps(doc))
    elif damage == "range past size":
        doc["ranges"] = [[0, 1001]]
        sidecar.write_text(json.dumps(doc))
    elif damage == "no data file":
        data_file.unlink()
    elif damage == "data file size":
        os.truncate(data_file, 999)
    elif damage == "tmp left over":
        (tmp_path / f"{cache_key('file-d')}.json.tmp").write_text("{")
    elif damage == "data is a symlink":
        data_file.unlink()
        data_file.symlink_to("/etc/passwd")
    again = ContentStore(tmp_path, 100 * MiB)
    if damage == "tmp left over":
        assert again.is_complete("file-d")  # the half-written replacement is simply ignored
    else:
        assert again.get("file-d") is None
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    again.close()


def abandon(store: ContentStore) -> None:
    """Simulate a crash of the process holding ``store``: drop its fds without recording anything."""
    for entry in list(store._index.values()):
        if entry.fd is not None:
            os.close(entry.fd)
            entry.fd = None
    assert store._lock_fd is not None
    os.close(store._lock_fd)
    store._lock_fd = None


CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from openaifs.content import ContentStore
    store = ContentStore(sys.argv[1], 1 << 30)
    data = bytes(range(256)) * 4096          # 1 MiB
    a = store.acquire("file-half", 4 << 20)
    for i in range(4):                        # 4 MiB written...
        ContentStore.pwrite_all(a.fd, data, i << 20)
        store.mark_present(a, i << 20, (i + 1) << 20)
        if i == 1:
            store.commit_sync(a)              # ...only the first 2 MiB recorded
    b = store.acquire("file-never", 1 << 20)
    ContentStore.pwrite_all(b.fd, data, 0)
    store.mark_present(b, 0, 1 << 20)         # complete in memory, never recorded
    c = store.acquire("file-whole", 1 << 20)
    ContentStore.pwrite_all(c.fd, data, 0)
    store.mark_present(c, 0, 1 << 20)
    store.commit_sync(c)
    print("ready", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_kill_9_never_makes_a_partial_file_look_whole(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.strip() == "ready"
    store = ContentStore(tmp_path, 1 << 30)  # the dead process's lock is gone with it
    half = store.get("file-half")
    assert half is not None and half.ranges.as_list() == [(0, 2 * MiB)] and not half.complete
    assert store.get("file-never") is None
    assert store.is_complete("file-whole")
    whole = store.acquire("file-whole", MiB)
    assert store.pread(whole, 0, MiB) == bytes(range(256)) * 4096
    store.unpin(whole)
    store.close()


def test_second_store_on_the_same_dir_is_refused(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, MiB)
    with pytest.raises(CacheBusyError, match="in use"):
        ContentStore(tmp_path, MiB)
    store.close()
    ContentStore(tmp_path, MiB).close()


def test_lru_eviction_skips_pinned_files(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, 3 * 1000)
    for name in ("a", "b", "c"):
        fill(store, name, pattern(1000))
    pinned = store.acquire("a", 1000)  # the oldest, but open
    fill(store, "d", pattern(1000))  # over budget: b is the oldest not open
    assert store.get("b") is None
    assert {e for e in ("a", "c", "d") if store.get(e)} == {"a", "c", "d"}
    assert store.stats.evicted_files == 1 and store.total_bytes == 3000
    assert not [n for n in cache_files(tmp_path) if n.startswith(cache_key("b"))]
    store.unpin(pinned)
    store.acquire("c", 1000)  # c becomes the most recent; a is now the LRU
    store.unpin(store.get("c"))  # type: ignore[arg-type]
    fill(store, "e", pattern(1000))
    assert store.get("a") is None and store.get("c") and store.get("d") and store.get("e")
    store.close()


def test_eviction_waits_while_everything_is_open(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, 1000)
    a = store.acquire("a", 1000)
    write(store, "a", pattern(1000), 0, 1000)
    b = store.acquire("b", 1000)
    write(store, "b", pattern(1000), 0, 1000)
    assert store.total_bytes == 2000  # over budget, but both are open
    store.commit_sync(a)
    store.unpin(a)  # a goes idle: now it can go
    assert store.get("a") is None and store.total_bytes == 1000
    store.unpin(b)
    store.close()


def test_lru_order_survives_reopen(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, 10_000)
    for name in ("old", "mid", "new"):
        fill(store, name, pattern(1000))
    for i, name in enumerate(("old", "mid", "new")):
        os.utime(tmp_path / f"{cache_key(name)}.json", (1_000_000 + i, 1_000_000 + i))
    store.close()
    again = ContentStore(tmp_path, 2000)  # smaller budget: the next fill evicts the two oldest
    fill(again, "x", pattern(1000))
    assert again.get("old") is None and again.get("mid") is None and again.get("new") is not None
    again.close()


def test_adopt_moves_the_spool_in_as_complete(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.write_bytes(pattern(5000))
    store = ContentStore(tmp_path / "content", MiB)
    entry = store.adopt("file-up", spool, 5000)
    assert entry is not None and entry.complete and entry.dirty
    assert not spool.exists()
    assert mode(store.data_path(entry)) == 0o600
    store.pin(entry)
    store.commit_sync(entry)
    store.unpin(entry)
    store.close()
    again = ContentStore(tmp_path / "content", MiB)
    assert again.is_complete("file-up")
    again.close()


def test_adopt_refuses_a_wrong_size_and_leaves_the_spool(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.write_bytes(pattern(5000))
    store = ContentStore(tmp_path / "content", MiB)
    assert store.adopt("file-up", spool, 4999) is None
    assert store.adopt("file-up", spool, 2 * MiB) is None  # larger than the whole cache
    assert spool.exists() and store.get("file-up") is None
    store.close()


def test_discard_unlinks_now_but_an_open_fd_keeps_reading(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, MiB)
    data = pattern(1000)
    fill(store, "gone", data)
    entry = store.acquire("gone", 1000)
    store.discard("gone")
    assert store.get("gone") is None and store.total_bytes == 0
    assert cache_files(tmp_path) == []
    assert store.pread(entry, 0, 1000) == data
    store.unpin(entry)
    assert entry.fd is None
    store.close()
