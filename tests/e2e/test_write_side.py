"""Write rows of DESIGN.md §1 over a real mount, checked on the server side with the official SDK."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import blob
from tests.support.mount import Mount
from tests.support.server import LocalServer

pytestmark = pytest.mark.e2e


def sdk(server: LocalServer) -> openai.OpenAI:
    """A client to use in ``with``: one left to the garbage collector leaks its sockets (a ResourceWarning,
    which this suite treats as an error, raised in whichever test happens to be running then)."""
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test-mount-key", max_retries=0)


def remote(server: LocalServer) -> dict[tuple[str, str], list[str]]:
    """(purpose, filename) -> ids, from the server's own listing."""
    out: dict[tuple[str, str], list[str]] = {}
    with sdk(server) as c:
        for f in c.files.list():
            out.setdefault((f.purpose, f.filename), []).append(f.id)
    return out


def content(server: LocalServer, fid: str) -> bytes:
    with sdk(server) as c:
        return c.files.content(fid).read()


def sh(cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture
def rw(server: LocalServer, mount_factory: Callable[..., Mount]) -> tuple[LocalServer, Mount]:
    server.configure(refuse_downloads=[])  # so the tests can read back what they wrote, any purpose
    return server, mount_factory(server)


def test_cp_cat_echo_python_dd_touch_create_exact_files(rw: tuple[LocalServer, Mount], tmp_path: Path) -> None:
    server, m = rw
    src = tmp_path / "src.bin"
    src.write_bytes(blob(3 * 1024 * 1024 + 7, 1))
    ud = m.path / "user_data"
    assert sh(f"cp {src} {ud}/cp.bin").returncode == 0
    assert sh(f"cp -p {src} {ud}/cp-p.bin").returncode == 0
    assert sh(f"printf 'hello\\n' | cat > {ud}/cat.txt").returncode == 0
    assert sh(f"echo appended >> {ud}/echo.txt").returncode == 0
    with open(ud / "py.bin", "wb") as f:
        f.write(b"x" * 100_000)
    assert sh(f"dd if={src} of={ud}/dd.bin bs=1M status=none").returncode == 0
    assert sh(f"touch {ud}/touched.txt").returncode == 0
    want = {
        "cp.bin": src.read_bytes(), "cp-p.bin": src.read_bytes(), "cat.txt": b"hello\n",
        "echo.txt": b"appended\n", "py.bin": b"x" * 100_000, "dd.bin": src.read_bytes(), "touched.txt": b"",
    }
    files = remote(server)
    assert set(files) == {("user_data", n) for n in want}, files
    for name, data in want.items():
        (fid,) = files[("user_data", name)]
        assert content(server, fid) == data, name
        # read-your-writes: visible at once with its final mode, and served without a download
        st = os.stat(ud / name)
        assert st.st_size == len(data) and oct(st.st_mode & 0o777) == "0o444"
    server.reset_stats()
    assert (ud / "cp.bin").read_bytes() == src.read_bytes()
    assert server.requests("files.content") == 0
    assert os.readlink(m.path / ".by-id" / files[("user_data", "cp.bin")][0]) == "../user_data/cp.bin"


def test_rsync_leaves_exactly_the_final_names(rw: tuple[LocalServer, Mount], tmp_path: Path) -> None:
    server, m = rw
    src = tmp_path / "tree"
    src.mkdir()
    for i in range(20):
        (src / f"doc{i:02d}.txt").write_bytes(blob(500 + i * 37, i))
    out = sh(f"rsync -a {src}/ {m.path}/user_data/")
    assert out.returncode == 0, out.stderr
    files = remote(server)
    assert set(files) == {("user_data", f"doc{i:02d}.txt") for i in range(20)}, files
    for i in range(20):
        (fid,) = files[("user_data", f"doc{i:02d}.txt")]
        assert content(server, fid) == (src / f"doc{i:02d}.txt").read_bytes()


def test_large_file_goes_through_the_uploads_api(
    server_factory: Callable[..., LocalServer], mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    server = server_factory("--allow-all-downloads")
    limit = 4 * 1024 * 1024
    m = mount_factory(server, env={"OPENAIFS_SINGLE_UPLOAD_LIMIT": str(limit), "OPENAIFS_PART_SIZE": str(1 << 20)})
    data = blob(limit * 2 + 12345, 5)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    server.reset_stats()
    assert sh(f"cp {src} {m.path}/vision/big.bin").returncode == 0
    stats = server.stats()["requests"]
    assert stats.get("uploads.complete") == 1 and stats.get("files.create", 0) == 0, stats
    (fid,) = remote(server)[("vision", "big.bin")]
    assert hashlib.sha256(content(server, fid)).digest() == hashlib.sha256(data).digest()


def test_mv_within_and_across_purposes_and_rm(rw: tuple[LocalServer, Mount]) -> None:
    server, m = rw
    data = b'{"a": 1}\n'
    (m.path / "batch" / "one.jsonl").write_bytes(data)
    assert sh(f"mv {m.path}/batch/one.jsonl {m.path}/batch/two.jsonl").returncode == 0
    assert sh(f"mv {m.path}/batch/two.jsonl {m.path}/fine-tune/three.jsonl").returncode == 0
    files = remote(server)
    assert set(files) == {("fine-tune", "three.jsonl")}
    assert content(server, files[("fine-tune", "three.jsonl")][0]) == data
    assert sorted(os.listdir(m.path / "batch")) == []
    assert (m.path / "fine-tune" / "three.jsonl").read_bytes() == data
    assert sh(f"rm {m.path}/fine-tune/three.jsonl").returncode == 0
    assert remote(server) == {}
    assert not (m.path / "fine-tune" / "three.jsonl").exists()


def test_rm_of_a_file_another_process_has_open(server: LocalServer, mount_factory: Callable[..., Mount]) -> None:
    fid = server.add_file("batch_output", "res.jsonl", b"{}\n" * 1000)["id"]
    m = mount_factory(server)
    path = m.path / "batch_output" / "res.jsonl"
    with open(path, "rb") as f:
        head = f.read(10)
        os.unlink(path)
        assert not path.exists()
        assert head + f.read() == b"{}\n" * 1000
    assert fid not in {i for ids in remote(server).values() for i in ids}


def test_invalid_jsonl_into_batch_fails_close_and_keeps_bytes(rw: tuple[LocalServer, Mount], tmp_path: Path) -> None:
    server, m = rw
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"ok": 1}\nnot json\n')
    out = sh(f"cp {bad} {m.path}/batch/bad.jsonl")
    assert out.returncode != 0
    assert "Invalid argument" in out.stderr
    assert not (m.path / "batch" / "bad.jsonl").exists()
    assert remote(server) == {}
    failed = m.cache_dir / "failed-uploads"
    kept = [p for p in failed.rglob("*") if p.is_file() and p.read_bytes() == bad.read_bytes()]
    assert kept, list(failed.rglob("*"))


def test_server_failing_every_upload_gives_eio_and_keeps_bytes(rw: tuple[LocalServer, Mount]) -> None:
    server, m = rw
    server.set_faults(error_rate={"files.create": 1.0}, error_status=500)
    with pytest.raises(OSError) as info:
        with open(m.path / "vision" / "x.png", "wb") as f:
            f.write(b"png bytes")
    assert info.value.errno == errno.EIO
    server.set_faults()
    assert remote(server) == {}
    kept = [p for p in (m.cache_dir / "failed-uploads").rglob("*") if p.is_file() and p.read_bytes() == b"png bytes"]
    assert kept


def test_drops_mid_request_leave_each_file_exactly_once(rw: tuple[LocalServer, Mount]) -> None:
    server, m = rw
    server.set_faults(drop_after_request_rate={"files.create": 0.3}, seed=3)
    for i in range(10):
        (m.path / "user_data" / f"f{i}.txt").write_bytes(f"file {i}\n".encode())
    server.set_faults()
    files = remote(server)
    assert {k: len(v) for k, v in files.items()} == {("user_data", f"f{i}.txt"): 1 for i in range(10)}


def test_server_only_purposes_refuse_new_files(rw: tuple[LocalServer, Mount]) -> None:
    _, m = rw
    for purpose in ("batch_output", "fine-tune-results", "assistants_output"):
        with pytest.raises(PermissionError):
            (m.path / purpose / "x.txt").write_bytes(b"x")


def test_read_only_mount_refuses_every_write(server: LocalServer, mount_factory: Callable[..., Mount]) -> None:
    server.add_file("batch", "a.jsonl", b"{}\n")
    m = mount_factory(server, "--read-only")
    for call in (lambda: (m.path / "batch" / "new.jsonl").write_bytes(b"{}\n"),
                 lambda: os.unlink(m.path / "batch" / "a.jsonl")):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EROFS
    assert (m.path / "batch" / "a.jsonl").read_bytes() == b"{}\n"


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_1_gib_copy_keeps_the_mount_rss_flat(
    server_factory: Callable[..., LocalServer], mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    server = server_factory("--allow-all-downloads")
    m = mount_factory(server, env={"OPENAIFS_SINGLE_UPLOAD_LIMIT": str(256 * 1024 * 1024)})
    src = tmp_path / "gib.bin"
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    with open(src, "wb") as f:
        for i in range(1024):
            chunk = i.to_bytes(8, "little") + block[8:]
            f.write(chunk)
            digest.update(chunk)
    assert m.proc is not None
    before = _peak_rss_kib(m.proc.pid)
    assert sh(f"cp {src} {m.path}/vision/gib.bin").returncode == 0
    growth_mib = (_peak_rss_kib(m.proc.pid) - before) / 1024
    assert growth_mib < 64, f"the mount's peak RSS grew by {growth_mib:.0f} MiB for a 1 GiB copy"
    (fid,) = remote(server)[("vision", "gib.bin")]
    got = hashlib.sha256()
    with sdk(server) as c, c.files.with_streaming_response.content(fid) as r:
        for chunk in r.iter_bytes(1 << 20):
            got.update(chunk)
    assert got.digest() == digest.digest()


# -- uploads that overlap the writing (OPENAIFS_STREAM_UPLOAD_FROM) ------------------------------------

STREAM_ENV = {"OPENAIFS_STREAM_UPLOAD_FROM": str(1 << 20)}


@pytest.fixture
def streaming(server: LocalServer, mount_factory: Callable[..., Mount]) -> tuple[LocalServer, Mount]:
    server.configure(refuse_downloads=[])
    return server, mount_factory(server, env=STREAM_ENV)


def test_cp_and_rsync_of_big_files_upload_while_writing(streaming: tuple[LocalServer, Mount], tmp_path: Path) -> None:
    server, m = streaming
    src = tmp_path / "big.bin"
    src.write_bytes(blob(12 * 1024 * 1024 + 5, 21))
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(3):
        (tree / f"part{i}.bin").write_bytes(blob(3 * 1024 * 1024 + i, 30 + i))
    server.reset_stats()
    assert sh(f"cp {src} {m.path}/vision/big.bin").returncode == 0
    out = sh(f"rsync -a {tree}/ {m.path}/user_data/")
    assert out.returncode == 0, out.stderr
    stats = server.stats()
    # Each file was sent while it was written (chunked: no length known yet). rsync writes a temporary
    # name and renames it, and a rename is one more (ordinary) upload under the final name.
    assert stats["chunked_requests"]["files.create"] == 4
    assert stats["requests"]["files.create"] == 4 + 3
    files = remote(server)
    assert set(files) == {("vision", "big.bin"), *(("user_data", f"part{i}.bin") for i in range(3))}
    assert content(server, files[("vision", "big.bin")][0]) == src.read_bytes()
    for i in range(3):
        assert content(server, files[("user_data", f"part{i}.bin")][0]) == (tree / f"part{i}.bin").read_bytes()
    assert sh(f"cmp {src} {m.path}/vision/big.bin").returncode == 0  # read back through the mount


def test_a_writer_that_goes_back_still_uploads_exactly_its_bytes(streaming: tuple[LocalServer, Mount]) -> None:
    """The stream is cut off when the writer seeks back; close() uploads the final bytes, once."""
    server, m = streaming
    first, patch, rest = blob(3 * 1024 * 1024, 40), b"PATCHED", blob(2 * 1024 * 1024, 41)
    server.reset_stats()
    with open(m.path / "vision" / "edited.bin", "wb") as f:
        f.write(first)
        f.flush()
        f.seek(100)
        f.write(patch)
        f.seek(0, os.SEEK_END)
        f.write(rest)
    want = first[:100] + patch + first[107:] + rest
    files = remote(server)
    assert list(files) == [("vision", "edited.bin")] and len(files[("vision", "edited.bin")]) == 1
    assert content(server, files[("vision", "edited.bin")][0]) == want
    stats = server.stats()
    assert stats["requests"]["files.create"] == 2 and stats["chunked_requests"]["files.create"] == 1


def test_streamed_uploads_whose_answers_are_lost_are_not_duplicated(
    streaming: tuple[LocalServer, Mount], tmp_path: Path
) -> None:
    server, m = streaming
    srcs = []
    for i in range(6):
        srcs.append(tmp_path / f"s{i}.bin")
        srcs[-1].write_bytes(blob(2 * 1024 * 1024 + i, 50 + i))
    server.set_faults(drop_after_request_rate={"files.create": 0.5}, drop_rate={"files.create": 0.2}, seed=5)
    for src in srcs:
        assert sh(f"cp {src} {m.path}/vision/{src.name}").returncode == 0
    server.set_faults()
    files = remote(server)
    assert {k: len(v) for k, v in files.items()} == {("vision", s.name): 1 for s in srcs}
    for src in srcs:
        assert content(server, files[("vision", src.name)][0]) == src.read_bytes()
