"""``openaifs demo``: a local server with a realistic generated account, mounted and ready to browse.

Owns the demo's seed data (generated here, never downloaded) and the life of its two child
processes: ``openaifs serve`` on 127.0.0.1 and ``openaifs mount -f``. Both are stopped by pid
on Ctrl-C, on SIGTERM, or right after the listing with ``--no-wait``; the mountpoint is removed
again if the demo created it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx

DEMO_KEY = "sk-demo-local"  # the demo server checks no key; the mount still needs one to send
LARGE_FILE_BYTES = 64 * 1024 * 1024  # large enough that streaming and lazy reads are visible


def _png(width: int, height: int, seed: int) -> bytes:
    """A small gradient PNG, written by hand (zlib + CRC), so no imaging library is needed."""
    rows = b"".join(
        b"\x00" + bytes(((x * 255 // width + seed * 40) % 256, (y * 255 // height) % 256, (seed * 70) % 256)
                        [c] for x in range(width) for c in range(3))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _pdf(text: str) -> bytes:
    """A one-page PDF showing ``text``, with a correct cross-reference table."""
    stream = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def seed_files() -> list[tuple[str, str, bytes, int]]:
    """(purpose, filename, bytes, created_at) of the demo account."""
    day = 86400
    # Two weeks back, so the files look lived-in but none has reached the server's 30-day default
    # expiry for batch files (an expired file vanishes from the listing, as on the hosted API).
    t0 = int(time.time()) - 14 * day
    requests = _jsonl([
        {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Summarise item {i}"}]}}
        for i in range(200)
    ])
    results = _jsonl([
        {"id": f"batch_req_{i}", "custom_id": f"req-{i}",
         "response": {"status_code": 200, "body": {"choices": [{"message": {"content": f"Item {i} in brief."}}]}}}
        for i in range(200)
    ])
    train = _jsonl([
        {"messages": [{"role": "system", "content": "You are terse."},
                      {"role": "user", "content": f"What is {i} + {i}?"},
                      {"role": "assistant", "content": str(2 * i)}]}
        for i in range(500)
    ])
    metrics = b"step,train_loss,train_accuracy\n" + b"".join(
        f"{s},{2.0 / (s + 1):.4f},{min(0.99, 0.5 + s / 200):.3f}\n".encode() for s in range(1, 101))
    large = bytearray()
    block = os.urandom(1 << 20)
    for i in range(LARGE_FILE_BYTES >> 20):
        large += i.to_bytes(8, "little") + block[8:]
    return [
        ("batch", "requests.jsonl", requests, t0),
        ("batch", "requests.jsonl", requests[: len(requests) // 2], t0 + 2 * day),  # same filename
        ("batch_output", "batch_output.jsonl", results, t0 + 3 * day),
        ("fine-tune", "train.jsonl", train, t0 + 4 * day),
        ("fine-tune-results", "step_metrics.csv", metrics, t0 + 5 * day),
        ("vision", "sunrise.png", _png(320, 200, 1), t0 + 6 * day),
        ("vision", "harbour.png", _png(320, 200, 2), t0 + 6 * day + 60),
        ("user_data", "quarterly report.pdf", _pdf("Quarterly report (demo)"), t0 + 7 * day),
        ("user_data", "notes.txt", b"Meeting notes\n- ship openaifs\n", t0 + 7 * day + 60),
        ("assistants", "handbook.pdf", _pdf("Employee handbook (demo)"), t0 + 8 * day),
        ("assistants", "faq.txt", b"Q: Where are my files?\nA: In ~/openai.\n", t0 + 8 * day + 60),
        ("assistants", "2024/Q3 summary.txt", b"A filename with a slash.\n", t0 + 9 * day),
        ("evals", "large-dataset.bin", bytes(large), t0 + 10 * day),
    ]


def _start_server(data_dir: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``openaifs serve`` on a free port; its output goes to a file (a pipe nobody drains would
    block it), where the line with its URL is awaited."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "openaifs", "serve", "--host", "127.0.0.1", "--port", "0", "--data", str(data_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if "http://127.0.0.1:" in text:
            return proc, text[text.index("http://"):].split()[0].rstrip("/")
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    _stop(proc)
    raise DemoError(f"the demo server did not start: {log_path.read_text(errors='replace').strip()}")


def _seed(base_url: str) -> None:
    root = base_url.removesuffix("/v1")
    with httpx.Client(timeout=60) as http:
        for purpose, name, data, created in seed_files():
            r = http.post(f"{root}/_admin/files", params={"purpose": purpose, "filename": name,
                                                          "created_at": created}, content=data)
            r.raise_for_status()


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class DemoError(Exception):
    """Why the demo could not start; str() is one line."""


STARTUP_SECONDS = 30.0  # server start + mount; both take well under a second on an idle machine

# (command, comment) pairs shown as things to try; {mnt} is the mountpoint as the user gave it.
TRY = [
    ("ls -l {mnt}/.by-id | head -3", "every file by id"),
    ("head -c 300 {mnt}/batch/requests.jsonl", "downloaded when read, then cached"),
    ("head -3 {mnt}/fine-tune-results/step_metrics.csv", ""),
    ("getfattr -d {mnt}/vision/sunrise.png", "user.openai.* (mounted with --xattrs)"),
    ("cp /etc/hostname {mnt}/user_data/", "uploaded when cp closes the file"),
    ("rm {mnt}/user_data/hostname", "deleted on the server"),
    ("cat {mnt}/assistants/faq.txt", "refused: the API allows no downloads of this purpose"),
    ("df -h {mnt}", ""),
]


def _tips(shown: str) -> str:
    commands = [c.format(mnt=shown) for c, _ in TRY]
    width = max(len(c) for c in commands)
    lines = [f"  {c.ljust(width)}  # {comment}".rstrip(" #") for c, (_, comment) in zip(commands, TRY, strict=True)]
    return "Try:\n" + "\n".join(lines)


def _show(command: list[str]) -> None:
    """Run ``command`` the way a user would type it, echoing it first (a short transcript)."""
    print("$ " + shlex.join(command), flush=True)
    subprocess.run(command, check=False)
    sys.stdout.flush()


def _wait_mounted(mount: subprocess.Popen[bytes], mountpoint: Path, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while not os.path.ismount(mountpoint):
        if mount.poll() is not None or time.monotonic() > deadline:
            lines = log_path.read_text(errors="replace").strip().splitlines() if log_path.exists() else []
            raise DemoError(f"the mount did not come up: {lines[-1] if lines else 'no log'}")
        time.sleep(0.05)


def run(mountpoint: Path, wait: bool = True) -> int:
    from openaifs.mount import MountError, check_mountpoint, mounted_fs_type

    given = str(mountpoint)  # relative stays relative, so the commands shown can be pasted
    shown = shlex.quote(given)
    mountpoint = mountpoint.resolve()
    # lexists is False for a dead mount too (ENOTCONN): ask /proc/mounts first.
    created = mounted_fs_type(mountpoint) is None and not os.path.lexists(mountpoint)
    work = Path(tempfile.mkdtemp(prefix="openaifs-demo-"))
    server = mount = None
    # Installed explicitly: a shell starts background jobs with SIGINT ignored, and Python then
    # leaves it ignored; the demo must stop cleanly on Ctrl-C and on SIGTERM either way.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if created:
            try:
                mountpoint.mkdir(parents=True)
            except OSError as exc:
                raise DemoError(f"cannot create mountpoint {mountpoint}: {exc.strerror}") from None
        check_mountpoint(mountpoint)
        print("openaifs demo: starting a local Files API server with a generated account...", flush=True)
        server, base_url = _start_server(work / "data", work / "server.log")
        _seed(base_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        env.update(OPENAI_API_KEY=DEMO_KEY, OPENAI_BASE_URL=base_url)
        mount = subprocess.Popen(
            [sys.executable, "-m", "openaifs", "mount", "-f", "--xattrs", str(mountpoint),
             "--cache-dir", str(work / "cache"), "--log-file", str(work / "mount.log")],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_mounted(mount, mountpoint, work / "mount.log")
        print(f"openaifs demo: {base_url} is mounted at {shown}\n", flush=True)
        _show(["ls", given])
        _show(["ls", "-l", f"{given}/batch", f"{given}/assistants", f"{given}/evals"])
        print("\n" + _tips(shown) + "\n", flush=True)
        if wait:
            print("Press Ctrl-C to unmount and stop the server.", flush=True)
            while True:
                signal.pause()
        print("openaifs demo: --no-wait: unmounting and stopping the server.", flush=True)
        return 0
    except KeyboardInterrupt:
        print("\nopenaifs demo: unmounting and stopping the server...", flush=True)
        return 0
    except MountError as exc:  # the mountpoint: a usage mistake, like `openaifs mount`
        print(f"openaifs demo: {exc}", file=sys.stderr)
        return 2
    except (DemoError, httpx.HTTPError) as exc:
        print(f"openaifs demo: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        try:
            _cleanup(mount, server, mountpoint, work, created)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _cleanup(mount: subprocess.Popen[bytes] | None, server: subprocess.Popen[bytes] | None,
             mountpoint: Path, work: Path, created: bool) -> None:
    if mount is not None and mount.poll() is None:
        done = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, check=False)
        if done.returncode != 0:  # busy (a shell's cwd is inside?): detach it now, it goes when freed
            print(f"openaifs demo: {mountpoint} is busy; detaching it lazily", file=sys.stderr)
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, check=False)
        try:
            mount.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _stop(mount)
    _stop(server)
    shutil.rmtree(work, ignore_errors=True)
    if created and not os.path.ismount(mountpoint):
        with contextlib.suppress(OSError):
            mountpoint.rmdir()  # leave no empty ./openai behind; a non-empty one is not ours to remove
