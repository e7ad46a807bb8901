"""A hostile or broken server: made-up listings of any shape, malformed JSON, wrong types, truncated
bodies and lying Content-Length. The mount never crashes: listings stay valid and complete for what
can be understood, everything else is EIO (or a stale listing) plus a log line, later requests work,
and nothing is written outside the cache directory.

The server's ``crafted`` fault (openaifs/server/faults.py) serves the bodies, byte for byte.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openaifs.client.records import FileRecord
from openaifs.config import KNOWN_PURPOSES
from openaifs.errors import TransportError
from tests.reliability.conftest import FAST_FAIL_BOUND, FAST_FAIL_ENV
from tests.reliability.tools import log_problems, payload, run, sha256, sha256_of
from tests.support.mount import Mount
from tests.support.server import LocalServer

TTL = 0.2
NAME_MAX = 255
# The only names in the content cache: sha256 of the id, then a data file's nonce, a sidecar, or a
# sidecar being written.
CACHE_NAME = re.compile(r"[0-9a-f]{64}(\.[0-9a-f]{16}\.data|\.json|\.json\.tmp)")

# -- strategies: one File object of any shape -------------------------------------------------------
any_text = st.text(st.characters(codec="utf-8"), max_size=24)  # lone surrogates too (sent as \ud800)
hostile = st.sampled_from(["", ".", "..", "/", "//", "a/b", "../../etc/passwd", ".by-id", "x\n\x00y", "\x7f",
                           " ", "\ud800", "file-dup", "é" * 500, "z" * 1000, "C:\\evil", "-rf"])
ids = st.one_of(st.from_regex(r"file-[A-Za-z0-9]{4,24}", fullmatch=True), any_text, hostile)
filenames = st.one_of(st.sampled_from(["dup.jsonl", "a.txt", "x" * 300 + ".jsonl"]), any_text, hostile)
purposes = st.one_of(st.sampled_from(KNOWN_PURPOSES), st.sampled_from(["new-purpose", "x" * 300]), hostile,
                     any_text)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
                           max_leaves=6)
ints = st.one_of(st.integers(0, 2**31), st.integers(-(2**70), 2**70))


@st.composite
def file_objects(draw: st.DrawFn) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": draw(ids), "object": "file", "filename": draw(filenames), "purpose": draw(purposes),
        "bytes": draw(st.one_of(st.integers(0, 10**6), ints)), "created_at": draw(ints),
    }
    for key, value in (("expires_at", ints), ("status", any_text), ("status_details", any_text)):
        choice = draw(st.sampled_from(["absent", "null", "value"]))
        if choice != "absent":
            obj[key] = None if choice == "null" else draw(value)
    for key in draw(st.lists(any_text, max_size=2)):  # extra fields, unknown to us
        obj.setdefault(key, draw(json_values))
    if draw(st.integers(0, 9)) == 0:  # now and then a field of the wrong type, or a required one missing
        key = draw(st.sampled_from(["id", "filename", "purpose", "bytes", "created_at", "expires_at", "status"]))
        if draw(st.booleans()):
            obj.pop(key, None)
        else:
            obj[key] = draw(json_values)
    return obj


@st.composite
def listings(draw: st.DrawFn) -> list[dict[str, Any]]:
    objs = draw(st.lists(file_objects(), max_size=12))
    if objs and draw(st.booleans()):  # hundreds of files sharing one filename (and purpose)
        model = draw(st.sampled_from(objs))
        objs += [{**model, "id": f"{model.get('id')}-{i}"} for i in range(draw(st.integers(2, 300)))]
    return objs


def parses(obj: dict[str, Any]) -> FileRecord | None:
    try:
        return FileRecord.from_json(obj)
    except TransportError:
        return None


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, Mount, Path]]:
    tmp = tmp_path_factory.mktemp("hostile-server")
    server = LocalServer(tmp / "data", ["--allow-all-downloads", "--no-validate-jsonl"]).start()
    mount = None
    try:
        mount = Mount(server, tmp / "mnt", tmp / "cache", ["--metadata-ttl", str(TTL), "--xattrs"],
                      env=FAST_FAIL_ENV).start()
        yield server, mount, tmp
    finally:
        if mount is not None:
            mount.stop()
        server.stop()


counter = itertools.count()


def _serve_listing(server: LocalServer, objs: list[dict[str, Any]]) -> None:
    # ensure_ascii: lone surrogates travel as \ud800 escapes, as a JSON server would send them.
    body = json.dumps({"object": "list", "data": objs, "has_more": False, "extra": {"x": [1]}})
    server.set_faults(crafted={"files.list": {"body": body}})


def _tree(root: Path) -> tuple[dict[str, list[tuple[str, str, int]]], list[str]]:
    """{purpose dir: [(entry, id xattr, size)]} and the .by-id entries, checking every name is sane."""
    dirs: dict[str, list[tuple[str, str, int]]] = {}
    top = os.listdir(root)
    assert len(top) == len(set(top))
    for d in top:
        _sane(d)
        if d == ".by-id":
            continue
        entries = os.listdir(root / d)
        assert len(entries) == len(set(entries)), f"duplicate names in {d!r}"
        dirs[d] = []
        for e in entries:
            _sane(e)
            p = root / d / e
            st_ = os.lstat(p)
            dirs[d].append((e, os.getxattr(p, "user.openai.id").decode("utf-8", "surrogatepass"), st_.st_size))
    links = os.listdir(root / ".by-id")
    assert len(links) == len(set(links))
    for link in links:
        _sane(link)
    return dirs, links


def _sane(name: str) -> None:
    raw = os.fsencode(name)
    assert 0 < len(raw) <= NAME_MAX and b"/" not in raw and b"\0" not in raw and name not in (".", ".."), name


def test_any_listing_shape(live: tuple[LocalServer, Mount, Path], scale: float) -> None:
    """Every well-formed file of any listing shows exactly once, under a sane name; nothing else does."""
    server, m, _ = live

    @settings(max_examples=int(30 * scale), deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    @given(objs=listings())
    def check(objs: list[dict[str, Any]]) -> None:
        n = next(counter)
        # One good file per example: the listing must be applied (not rejected) whatever else it holds.
        sentinel = {"id": f"file-sentinel{n}", "object": "file", "filename": f"sentinel-{n}",
                    "purpose": "batch", "bytes": 3, "created_at": 1_700_000_000}
        objs = [*objs, sentinel]
        _serve_listing(server, objs)
        expected: dict[str, FileRecord] = {}
        for obj in objs:
            rec = parses(obj)
            if rec is not None:
                expected[rec.id] = rec  # the last of repeated ids wins, as in any dict
        time.sleep(TTL * 1.5)
        dirs, links = _tree(m.path)
        seen = [fid for entries in dirs.values() for _, fid, _ in entries]
        assert f"file-sentinel{n}" in seen, "the listing was not applied"
        assert sorted(seen) == sorted(expected), "every well-formed file exactly once, nothing else"
        assert len(links) == len(expected)
        for entries in dirs.values():
            for _, fid, size in entries:
                assert size == min(max(expected[fid].bytes, 0), 2**63 - 1)
        for link in links:
            target = os.path.normpath(m.path / ".by-id" / os.readlink(m.path / ".by-id" / link))
            assert Path(target).parent.parent == m.path, target
            assert os.getxattr(target, "user.openai.id").decode("utf-8", "surrogatepass") in expected
        assert m.proc is not None and m.proc.poll() is None

    check()
    assert log_problems(m.log()) == []


# -- whole bodies that make no sense --------------------------------------------------------------
GOOD_PAGE = '{"object": "list", "data": [], "has_more": false}'
BROKEN_BODIES = {
    "not JSON": {"body": "<html>502 Bad Gateway</html>", "content_type": "text/html"},
    "truncated JSON": {"body": GOOD_PAGE[:20]},
    "body shorter than its Content-Length": {"body": GOOD_PAGE, "content_length": len(GOOD_PAGE) + 100},
    "body longer than its Content-Length": {"body": GOOD_PAGE, "content_length": 10},
    "empty body": {"body": ""},
    "an array": {"json": [1, 2, 3]},
    "data of the wrong type": {"json": {"object": "list", "data": "files", "has_more": False}},
    "has_more of the wrong type": {"json": {"object": "list", "data": [], "has_more": "no"}},
    "every file malformed": {"json": {"object": "list", "data": [{"id": 1}, {"bytes": "x"}], "has_more": False}},
    "a 200 with an error envelope": {"json": {"error": {"message": "oops", "type": "server_error"}}},
    "a 404 that is not JSON": {"status": 404, "body": "nope", "content_type": "text/plain"},
}


@pytest.mark.parametrize("what", list(BROKEN_BODIES))
def test_broken_listing_keeps_the_stale_tree(live: tuple[LocalServer, Mount, Path], what: str) -> None:
    server, m, tmp = live
    server.set_faults()
    name = f"before-{next(counter)}.txt"
    server.add_file("vision", name, b"ok")
    time.sleep(TTL * 1.5)
    assert name in os.listdir(m.path / "vision")
    server.set_faults(crafted={"files.list": BROKEN_BODIES[what]})
    time.sleep(TTL * 1.5)
    done = run(["ls", "-l", str(m.path / "vision")], timeout=FAST_FAIL_BOUND + 20, mountpoint=m.path)
    assert done.code == 0, done.error
    assert name in done.text, "the stale listing must still be served"
    assert "listing failed, serving the cached listing" in m.log()
    server.set_faults()
    later = f"after-{next(counter)}.txt"
    server.add_file("vision", later, b"ok")
    time.sleep(TTL * 1.5)
    deadline = time.monotonic() + FAST_FAIL_BOUND
    while later not in os.listdir(m.path / "vision") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert later in os.listdir(m.path / "vision"), "a good listing must be applied again"
    assert m.proc is not None and m.proc.poll() is None
    assert log_problems(m.log()) == []


# The content below is ASCII, so a crafted body can be a true prefix of it: a truncated body of the
# right bytes is what a broken connection delivers, and those bytes may be kept (wrong bytes of the
# right length cannot be told from right ones without a checksum, which the API does not offer).
TEXT = ("0123456789abcdef" * 1250).encode()
CONTENT_FAULTS = {
    "truncated body": {"body": TEXT[:10].decode(), "content_length": len(TEXT),
                       "content_type": "application/octet-stream"},
    "short complete body": {"body": "x" * 10, "content_type": "application/octet-stream"},
    "an error page as a 200": {"body": "<html>oops</html>", "content_type": "text/html"},
    "a 500 with a broken body": {"status": 500, "body": '{"error": ', "content_length": 100},
}


@pytest.mark.parametrize("what", list(CONTENT_FAULTS))
def test_broken_downloads_are_eio_and_never_cached(live: tuple[LocalServer, Mount, Path], what: str) -> None:
    server, m, tmp = live
    server.set_faults()
    data = TEXT
    name = f"content-{next(counter)}.bin"
    server.add_file("vision", name, data)
    time.sleep(TTL * 1.5)
    path = m.path / "vision" / name
    assert name in os.listdir(path.parent)
    server.set_faults(crafted={"files.content": CONTENT_FAULTS[what]})
    done = run(["cat", str(path)], timeout=FAST_FAIL_BOUND * 2 + 20, mountpoint=m.path)
    if done.code == 0:  # a body of exactly the promised size cannot be told apart from the real one
        assert what == "an error page as a 200" and len(done.out) == len(data), done.text
    else:
        assert os.strerror(errno.EIO) in done.error, done.error
        assert "download" in m.log()
    server.set_faults()
    if done.code != 0:
        assert sha256_of(path) == sha256(data), "a failed download must leave nothing behind that looks cached"
    assert m.proc is not None and m.proc.poll() is None
    assert log_problems(m.log()) == []
    _only_cache_files(tmp, m)


WRITE_FAULTS = {
    "files.create malformed": ("files.create", {"body": '{"id": "file-x", "bytes": '}),
    "files.create wrong types": ("files.create", {"json": {"id": 7, "filename": None}}),
    "files.create lying length": ("files.create", {"body": "{}", "content_length": 5000}),
    "files.delete malformed": ("files.delete", {"body": "deleted!"}),
}


@pytest.mark.parametrize("what", list(WRITE_FAULTS))
def test_broken_write_answers_are_eio(live: tuple[LocalServer, Mount, Path], what: str) -> None:
    server, m, tmp = live
    server.set_faults()
    route, crafted = WRITE_FAULTS[what]
    src = tmp / f"src-{next(counter)}.bin"
    src.write_bytes(payload(5000, next(counter)))
    target = m.path / "vision" / src.name
    kept_before = set((m.cache_dir / "failed-uploads").iterdir())
    if route == "files.delete":
        assert run(["cp", str(src), str(target)], timeout=60, mountpoint=m.path).code == 0
    server.set_faults(crafted={route: crafted})
    if route == "files.create":
        done = run(["cp", str(src), str(target)], timeout=FAST_FAIL_BOUND * 2 + 20, mountpoint=m.path)
        assert done.code != 0 and os.strerror(errno.EIO) in done.error, done.error
        new = set((m.cache_dir / "failed-uploads").iterdir()) - kept_before
        assert sorted(p.read_bytes() for p in new if not p.name.endswith(".json")) == [src.read_bytes()]
    else:
        done = run(["rm", str(target)], timeout=FAST_FAIL_BOUND * 2 + 20, mountpoint=m.path)
        assert done.code != 0 and os.strerror(errno.EIO) in done.error, done.error
        assert target.exists(), "a delete that failed keeps the entry"
    server.set_faults()
    if route == "files.delete":
        assert run(["rm", str(target)], timeout=60, mountpoint=m.path).code == 0
    assert m.proc is not None and m.proc.poll() is None
    assert log_problems(m.log()) == []
    _only_cache_files(tmp, m)


def _only_cache_files(tmp: Path, m: Mount) -> None:
    """Everything the mount wrote is under its cache dir, and there only in its own subdirectories."""
    assert sorted(os.listdir(m.cache_dir)) == ["content", "failed-uploads", "spool"]
    for p in (m.cache_dir / "content").iterdir():
        assert p.name in (".lock", "trash") or CACHE_NAME.fullmatch(p.name), p.name
    extra = set(os.listdir(tmp)) - {"data", "mnt", "cache", "mnt.log"} - {p.name for p in tmp.glob("src-*")}
    assert extra == set(), extra


def test_new_names_must_survive_the_upload(live: tuple[LocalServer, Mount, Path]) -> None:
    """The other direction: names a user gives new files. One the API would hand back changed (not
    UTF-8, control characters) is refused at once, so a file never vanishes after ``close``."""
    server, m, tmp = live
    server.set_faults()
    d = os.fsencode(m.path / "vision")
    kept_before = set(os.listdir(m.cache_dir / "failed-uploads"))
    for raw, code in ((b"bad\xff.txt", errno.EILSEQ), (b"\xed\xa0\x80.txt", errno.EILSEQ),
                      (b"line\nbreak.txt", errno.EINVAL), (b"tab\t.txt", errno.EINVAL)):
        with pytest.raises(OSError) as info:
            open(os.path.join(d, raw), "wb").close()
        assert info.value.errno == code, raw
    ok = "caf\u00e9 \uff0f \u240a (copy).txt"  # odd but valid: comes back exactly as given
    (m.path / "vision" / ok).write_bytes(b"x")
    src = m.path / "vision" / ok
    with pytest.raises(OSError) as info:
        os.rename(src, os.path.join(d, b"renamed\x01.txt"))
    assert info.value.errno == errno.EINVAL
    time.sleep(TTL * 1.5)
    assert src.read_bytes() == b"x" and ok in os.listdir(m.path / "vision")
    assert set(os.listdir(m.cache_dir / "failed-uploads")) == kept_before
    os.unlink(src)


def test_absurd_sizes_and_times(live: tuple[LocalServer, Mount, Path]) -> None:
    """Sizes and times no file can have: left out when they do not fit 64 bits, clamped for display
    otherwise, and opening one is EIO with one log line (never a traceback); df keeps working."""
    server, m, _ = live
    n = next(counter)
    sizes = [2**70, 2**63 - 1, 2**62, 2**44, 10]
    objs = [{"id": f"file-size{n}x{i}", "object": "file", "filename": f"size{n}-{i}", "purpose": "evals",
             "bytes": b, "created_at": (-(2**70), 2**70, -1, 0, 2**40)[i]} for i, b in enumerate(sizes)]
    _serve_listing(server, objs)
    time.sleep(TTL * 1.5)
    names = sorted(x for x in os.listdir(m.path / "evals") if x.startswith(f"size{n}-"))
    assert names == [f"size{n}-{i}" for i in range(1, 5)], names  # 2**70 bytes: left out, logged
    assert "impossible size" in m.log()
    for name in names:
        st_ = os.stat(m.path / "evals" / name)
        assert st_.st_size == sizes[int(name.rsplit("-", 1)[1])]
        with pytest.raises(OSError):
            with open(m.path / "evals" / name, "rb") as f:
                f.read(10)
    os.statvfs(m.path)
    server.set_faults()
    assert m.proc is not None and m.proc.poll() is None
    assert log_problems(m.log()) == []
