"""The demo as a newcomer meets it: ``scripts/demo`` and README's quick start, run as written.

``scripts/demo`` sources scripts/lib/bootstrap.sh, which is idempotent and quick once everything is
installed. (``scripts/test`` is never run from here: it would run this test again.)
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.mount import in_proc_mounts

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scripts" / "demo"
PURPOSES = ["assistants", "assistants_output", "batch", "batch_output", "evals", "fine-tune",
            "fine-tune-results", "user_data", "vision"]
LARGE = 64 * 1024 * 1024


def run_demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "VIRTUAL_ENV"))}
    return subprocess.run([str(DEMO), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=240)


def check_transcript(out: str, shown: str) -> None:
    """What the demo shows: the purposes, both requests.jsonl, the `/` name, the 64 MiB file."""
    assert f"is mounted at {shown}" in out
    listing = out[out.index(f"$ ls {shown}\n") + len(f"$ ls {shown}\n"):]
    assert listing.split()[:len(PURPOSES)] == PURPOSES
    assert f"$ ls -l {shown}/batch {shown}/assistants {shown}/evals" in out
    rows = {line.split(None, 8)[8]: line for line in out.splitlines()
            if line.startswith("-r--r--r-- ") and len(line.split(None, 8)) == 9}
    assert "requests.jsonl" in rows
    duplicates = [name for name in rows if re.fullmatch(r"requests \(file-[A-Za-z0-9]+\)\.jsonl", name)]
    assert len(duplicates) == 1, rows
    assert int(rows["requests.jsonl"].split()[4]) == 2 * int(rows[duplicates[0]].split()[4])  # the older is whole
    assert "2024\uff0fQ3 summary.txt" in rows  # the filename "2024/Q3 summary.txt"
    assert int(rows["large-dataset.bin"].split()[4]) == LARGE
    assert "Try:" in out and f"getfattr -d {shown}/vision/sunrise.png" in out


def check_nothing_left(out: str, mountpoint: Path) -> None:
    assert not in_proc_mounts(mountpoint)
    url = re.search(r"openaifs demo: (http://127\.0\.0\.1:\d+/v1) is mounted", out)
    assert url is not None
    with pytest.raises(httpx.ConnectError):  # the server is gone
        httpx.get(url.group(1) + "/files", timeout=5)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert str(mountpoint).encode() not in cmdline, f"process {pid} left behind: {cmdline!r}"


def test_scripts_demo_shows_the_account_and_cleans_up(tmp_path: Path, fuse_available: None) -> None:
    mnt = tmp_path / "demo-mnt"
    r = run_demo(str(mnt), "--no-wait", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    check_transcript(r.stdout, str(mnt))
    check_nothing_left(r.stdout, mnt)
    assert not mnt.exists()  # the demo made it, so the demo removed it


def test_readme_quick_start_as_written(tmp_path: Path, fuse_available: None) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start"):]
    section = section[:section.index("\n## ", 1)]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block is not None, "no code block in the quick start"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["scripts/demo", "scripts/test"]
    assert "./openai" in section  # where it says the demo mounts

    r = run_demo("--no-wait", cwd=tmp_path)  # scripts/demo from another directory: mounts at ./openai
    assert r.returncode == 0, r.stdout + r.stderr
    check_transcript(r.stdout, "openai")
    check_nothing_left(r.stdout, tmp_path / "openai")
    assert not (tmp_path / "openai").exists()


def test_demo_refuses_a_file_as_mountpoint(tmp_path: Path, fuse_available: None) -> None:
    target = tmp_path / "a-file"
    target.write_text("not a directory")
    r = run_demo(str(target), "--no-wait", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[-1] == f"openaifs demo: mountpoint {target} is not a directory", r.stderr
    assert "Traceback" not in r.stderr
    assert target.read_text() == "not a directory"
