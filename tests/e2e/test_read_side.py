"""One e2e test per read-side row of DESIGN.md §1, driven by real tools over a real mount."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
from pathlib import Path

import pytest

from openaifs.config import KNOWN_PURPOSES
from tests.e2e.conftest import T0, Account

pytestmark = pytest.mark.e2e


def run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


def readable(account: Account) -> dict[str, bytes]:
    """Files whose purpose the server lets us download (assistants and user_data are refused)."""
    return {p: d for p, d in account.files.items() if p.split("/")[0] not in ("assistants", "user_data")}


def test_ls_root_shows_every_purpose_and_by_id(account: Account) -> None:
    out = run("ls", "-a", str(account.root)).stdout.split()
    assert set(KNOWN_PURPOSES) <= set(out)
    assert ".by-id" in out
    st = os.stat(account.root / "batch")
    assert oct(st.st_mode & 0o7777) == "0o755"


def test_ls_l_names_sizes_modes_and_times(account: Account) -> None:
    lines = run("ls", "-l", "--time-style=+%s", str(account.root / "batch")).stdout.splitlines()[1:]
    entries = {line.split(None, 6)[6]: line.split() for line in lines}
    assert set(entries) == {p.split("/", 1)[1] for p in account.files if p.startswith("batch/")}
    plain = entries["requests.jsonl"]
    assert plain[0] == "-r--r--r--"
    assert int(plain[4]) == len(account.files["batch/requests.jsonl"])
    assert plain[5] == str(T0)
    st = os.stat(account.root / "batch" / "requests.jsonl")
    assert st.st_uid == os.getuid() and st.st_blksize == 1024 * 1024


def test_every_file_reads_back_exactly_with_sha256sum(account: Account) -> None:
    for rel, data in readable(account).items():
        out = run("sha256sum", str(account.root / rel))
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[0] == hashlib.sha256(data).hexdigest(), rel


def test_cat_head_and_tail(account: Account) -> None:
    big = account.files["evals/big.bin"]
    path = str(account.root / "evals" / "big.bin")
    assert subprocess.run(["head", "-c", "4096", path], capture_output=True).stdout == big[:4096]
    assert subprocess.run(["tail", "-c", "4096", path], capture_output=True).stdout == big[-4096:]
    assert subprocess.run(["cat", str(account.root / "batch_output/out.jsonl")],
                          capture_output=True).stdout == account.files["batch_output/out.jsonl"]


def test_python_seek_and_read_at_random_offsets(account: Account) -> None:
    big = account.files["evals/big.bin"]
    rng = random.Random(7)
    with open(account.root / "evals" / "big.bin", "rb", buffering=0) as f:
        for _ in range(60):
            off = rng.randrange(0, len(big) + 10)
            n = rng.choice([1, 100, 4096, 131072, 1 << 20])
            f.seek(off)
            assert f.read(n) == big[off:off + n]


def test_downloads_refused_by_purpose_give_eacces(account: Account) -> None:
    for rel in ("assistants/manual.pdf", "user_data/notes.txt"):
        with pytest.raises(PermissionError):
            with open(account.root / rel, "rb") as f:
                f.read()
        assert os.stat(account.root / rel).st_size == len(account.files[rel])  # metadata still there


def test_uploaded_files_refuse_writes_and_truncate_even_for_root(account: Account) -> None:
    path = account.root / "batch" / "requests.jsonl"
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND, os.O_RDONLY | os.O_TRUNC):
        with pytest.raises(PermissionError):
            os.close(os.open(path, flags))
    with pytest.raises(PermissionError):
        os.truncate(path, 0)
    assert os.stat(path).st_size == len(account.files["batch/requests.jsonl"])


def test_directories_links_and_xattrs_cannot_be_made(account: Account) -> None:
    batch = account.root / "batch"
    for call, code in (
        (lambda: os.mkdir(batch / "sub"), errno.EPERM),
        (lambda: os.rmdir(batch), errno.EPERM),
        (lambda: os.symlink("x", batch / "link"), errno.EPERM),
        (lambda: os.link(batch / "requests.jsonl", batch / "hard"), errno.EPERM),
        (lambda: os.setxattr(batch / "requests.jsonl", "user.x", b"1"), errno.ENOTSUP),
    ):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == code


def test_missing_names_are_enoent(account: Account) -> None:
    for name in (".hidden", ".Trash-1000", "desktop.ini", "nope.jsonl"):
        assert not (account.root / "batch" / name).exists()
    with pytest.raises(FileNotFoundError):
        os.stat(account.root / "no-such-purpose")


def test_by_id_symlinks_point_at_the_files(account: Account) -> None:
    byid = account.root / ".by-id"
    links = os.listdir(byid)
    assert len(links) == len(account.files)
    for fid in links:
        target = os.readlink(byid / fid)
        assert target.startswith("../")
        assert (byid / target).resolve().relative_to(account.root.resolve())
        assert (byid / fid).exists()


def test_find_grep_and_cp_out(account: Account, tmp_path: Path) -> None:
    found = run("find", str(account.root), "-type", "f").stdout.splitlines()
    assert {str(Path(p).relative_to(account.root)) for p in found} == set(account.files)
    grep = run("grep", "-rl", "custom_id", str(account.root / "batch"))
    assert sorted(Path(p).name for p in grep.stdout.split("\n") if p) == sorted(
        p.split("/")[1] for p in account.files if p.startswith("batch/") and b"custom_id" in account.files[p])
    dest = tmp_path / "copy.png"
    assert run("cp", str(account.root / "vision" / "cat.png"), str(dest)).returncode == 0
    assert dest.read_bytes() == account.files["vision/cat.png"]


def test_df_works(account: Account) -> None:
    out = run("df", "-B1", str(account.root))
    assert out.returncode == 0, out.stderr
    st = os.statvfs(account.root)
    assert st.f_namemax == 255 and st.f_blocks > 0
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    assert used >= sum(len(d) for d in account.files.values())


def test_xattrs_off_by_default(account: Account) -> None:
    with pytest.raises(OSError) as info:
        os.getxattr(account.root / "batch" / "requests.jsonl", "user.openai.id")
    assert info.value.errno in (errno.ENOTSUP, errno.ENODATA)
