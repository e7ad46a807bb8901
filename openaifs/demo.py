"""``openaifs demo``: a local server with a realistic generated account, mounted and ready to browse.

Owns the demo's seed data (generated here, never downloaded) and the life of its two child
processes: ``openaifs serve`` on 127.0.0.1 and ``openaifs mount -f``. Both are stopped by pid
on Ctrl-C, on SIGTERM, or right after the check with ``--no-wait``.
"""

from __future__ import annotations

import json
import os
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
    t0 = int(time.time()) - 30 * day
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


def _start_server(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "openaifs", "serve", "--host", "127.0.0.1", "--port", "0", "--data", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "http://127.0.0.1:" in line:
            return proc, line[line.index("http://"):].split()[0].rstrip("/")
    proc.wait()
    raise RuntimeError("the demo server exited before it listened")


def _seed(base_url: str) -> None:
    root = base_url.removesuffix("/v1")
    with httpx.Client(timeout=60) as http:
        for purpose, name, data, created in seed_files():
            r = http.post(f"{root}/_admin/files", params={"purpose": purpose, "filename": name,
                                                          "created_at": created}, content=data)
            r.raise_for_status()


def _stop(proc: subprocess.Popen | None) -> None:
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


TIPS = """
openaifs demo: a local OpenAI-compatible server with a generated account is mounted at {mnt}

Try:
  ls -l {mnt}/batch                      # one listing request served every directory
  ls -l {mnt}/.by-id | head              # every file by id
  head -c 300 {mnt}/batch/requests.jsonl
  cat {mnt}/fine-tune-results/step_metrics.csv | head
  getfattr -d {mnt}/vision/sunrise.png   # user.openai.* attributes (mounted with --xattrs)
  cp /etc/hostname {mnt}/user_data/      # uploaded when cp closes the file
  rm {mnt}/user_data/hostname            # deleted on the server
  cat {mnt}/assistants/faq.txt           # refused: the API does not allow downloads of this purpose

Press Ctrl-C to unmount and stop the server.
"""


def run(mountpoint: Path, wait: bool = True) -> int:
    mountpoint = mountpoint.resolve()
    mountpoint.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="openaifs-demo-"))
    server = mount = None
    try:
        server, base_url = _start_server(work / "data")
        _seed(base_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        env.update(OPENAI_API_KEY=DEMO_KEY, OPENAI_BASE_URL=base_url)
        mount = subprocess.Popen(
            [sys.executable, "-m", "openaifs", "mount", "-f", "--xattrs", str(mountpoint),
             "--cache-dir", str(work / "cache"), "--log-file", str(work / "mount.log")],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if mount.poll() is not None or time.monotonic() > deadline:
                err = mount.stderr.read().decode() if mount.stderr else ""
                print(f"openaifs demo: the mount did not come up: {err.strip()}", file=sys.stderr)
                return 1
            time.sleep(0.05)
        print(TIPS.format(mnt=mountpoint))
        subprocess.run(["ls", "-l", str(mountpoint / "batch")], check=False)
        sys.stdout.flush()
        if wait:
            signal.signal(signal.SIGTERM, _interrupt)
            try:
                while True:
                    signal.pause()
            except KeyboardInterrupt:
                print("\nunmounting and stopping the server...")
        return 0
    finally:
        if mount is not None and mount.poll() is None:
            subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, check=False)
            try:
                mount.wait(timeout=30)
            except subprocess.TimeoutExpired:
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, check=False)
                _stop(mount)
        _stop(server)
        shutil.rmtree(work, ignore_errors=True)
