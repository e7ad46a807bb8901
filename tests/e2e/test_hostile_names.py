"""Hostile filenames from the server: every listing works, names are unique and safe, each resolves."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.mount import Mount
from tests.support.server import LocalServer

pytestmark = pytest.mark.e2e
TTL = 0.2

names = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40),
    st.sampled_from(["", ".", "..", "/", "a/b/c", "../../etc/passwd", "x\n\x00y", "\x7f", " ", "dup.jsonl"]),
    st.text(st.sampled_from("é中/.\n"), min_size=200, max_size=400),  # 400-1000+ UTF-8 bytes
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, Mount]]:
    if not os.path.exists("/dev/fuse"):
        pytest.fail("no /dev/fuse") if os.environ.get("CI") == "true" else pytest.skip("no /dev/fuse")
    tmp = tmp_path_factory.mktemp("hostile")
    server = LocalServer(tmp / "data").start()
    mount = None
    try:
        mount = Mount(server, tmp / "mnt", tmp / "cache", ["--metadata-ttl", str(TTL)]).start()
        yield server, mount
    finally:
        if mount is not None:
            mount.stop()
        server.stop()


counter = itertools.count()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(names, min_size=1, max_size=12))
def test_any_filenames_list_uniquely_and_resolve(live: tuple[LocalServer, Mount], filenames: list[str]) -> None:
    server, m = live
    purpose = f"hostile{next(counter)}"  # a new unknown purpose per example: a directory of its own
    sizes = {}
    for i, name in enumerate(filenames):
        rec = server.add_file(purpose, name, b"x" * i)
        sizes[rec["id"]] = i
    time.sleep(TTL * 1.5)
    listing = os.listdir(m.path / purpose)
    assert len(listing) == len(filenames) == len(set(listing))
    for entry in listing:
        raw = os.fsencode(entry)
        assert 0 < len(raw) <= 255 and "/" not in entry and entry not in (".", "..")
    for fid, size in sizes.items():
        target = os.readlink(m.path / ".by-id" / fid)
        path = (m.path / ".by-id" / target)
        assert Path(os.path.normpath(path)).parent == m.path / purpose  # cannot point anywhere else
        assert os.stat(path).st_size == size
        assert os.path.basename(target) in listing
