#!/usr/bin/env python3
"""Benchmarks of openaifs against what a program would get without it (issue 7).

Starts ``openaifs serve`` on 127.0.0.1 with generated data, mounts it (``openaifs mount -f``, a fresh
cache directory per cold measurement) and measures, with repetitions and medians, each number next to
its baseline from the same run:

1. cold sequential read of a large file through the mount (``dd bs=1M``) vs a direct streaming
   download (httpx; curl as a second reference), with the server honouring Range and ignoring it;
2. time to the first 4 KiB (``head -c 4096``) and the last 4 KiB (``tail -c 4096``), cold, with the
   requests and body bytes the server counted for them;
3. re-read after a remount with the same cache directory vs ``dd`` of the cache file itself (both
   with the cache file evicted from the page cache, i.e. from disk; and both from the page cache);
4. ``ls -l`` of a purpose directory of 1,000 / 10,000 / 100,000 files, cold (mount start to
   ``ls`` done, on a fresh mount) and warm, vs the listing API calls alone (httpx, all pages);
5. ``cp`` of a file into the mount vs the official SDK: ``files.create`` below the 512 MB
   single-request limit, ``uploads.upload_file_chunked`` above it;
6. 8 parallel readers over 200 files of 1 MiB vs 8 parallel direct downloads;
7. peak RSS (VmHWM) of the mount process during 1 and 5.

Prints one table (measure, ours, baseline, ratio, target, pass/fail) and writes it, with every
sample, as JSON under ``bench-results/``. ``--quick`` runs smaller files and fewer repetitions
(under two minutes). Needs root (FUSE, the mount's read-ahead setting, posix_fadvise on its cache).

    .venv/bin/python scripts/bench.py [--quick] [--reps N] [--only read,head,reread,ls,upload,parallel]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.support.mount import answers, in_proc_mounts, unmount  # noqa: E402
from tests.support.processes import end  # noqa: E402
from tests.support.server import LocalServer  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
API_KEY = "sk-bench"
CONTENT = "files.content"
LIST = "files.list"
SECTIONS = ("read", "head", "reread", "ls", "upload", "parallel")


@dataclass
class Profile:
    reps: int
    read_size: int
    single_upload: int  # below the 512 MB single-request limit: POST /files
    multi_upload: int  # above it: the Uploads API
    upload_reps: int
    ls_sizes: tuple[int, ...]
    small_files: int
    small_size: int = 1 * MiB
    readers: int = 8
    mount_env: dict[str, str] = field(default_factory=dict)


FULL = Profile(reps=5, read_size=512 * MiB, single_upload=488 * MiB, multi_upload=1536 * MiB, upload_reps=3,
               ls_sizes=(1000, 10000, 100000), small_files=200)
# --quick: the multi-part case uses a lowered single-request limit in the mount (the SDK's chunked
# helper works at any size), so the Uploads API path is exercised with a small file.
QUICK = Profile(reps=2, read_size=64 * MiB, single_upload=48 * MiB, multi_upload=160 * MiB, upload_reps=1,
                ls_sizes=(1000, 10000), small_files=50,
                mount_env={"OPENAIFS_SINGLE_UPLOAD_LIMIT": str(100 * MiB)})


# -- results ---------------------------------------------------------------------------------------
@dataclass
class Row:
    measure: str
    ours: str
    baseline: str
    ratio: float | None
    target: str
    passed: bool | None  # None: informational, no target
    samples: dict[str, Any] = field(default_factory=dict)

    def verdict(self) -> str:
        return "-" if self.passed is None else ("pass" if self.passed else "FAIL")


class Results:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  {row.measure}: ours {row.ours} | baseline {row.baseline} | ratio "
              f"{_fmt_ratio(row.ratio)} | {row.target} | {row.verdict()}", flush=True)

    def table(self) -> str:
        head = ("measure", "ours", "baseline", "ratio", "target", "result")
        lines = [(r.measure, r.ours, r.baseline, _fmt_ratio(r.ratio), r.target, r.verdict()) for r in self.rows]
        widths = [max(len(str(x[i])) for x in [head, *lines]) for i in range(len(head))]
        out = [" | ".join(str(h).ljust(w) for h, w in zip(head, widths, strict=True))]
        out.append("-+-".join("-" * w for w in widths))
        out += [" | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
        return "\n".join(out)


def _fmt_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def med(values: list[float]) -> float:
    return statistics.median(values)


def rate(nbytes: int, seconds: float) -> float:
    return nbytes / MiB / seconds


def fmt_rate(mib_s: float) -> str:
    return f"{mib_s:.0f} MiB/s"


def fmt_s(seconds: float) -> str:
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_bytes(n: int) -> str:
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n / KiB:.0f} KiB"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- processes -------------------------------------------------------------------------------------
class BenchMount:
    """``openaifs mount -f`` as a child process; readiness polled every 2 ms (cold timings)."""

    def __init__(self, server: LocalServer, path: Path, cache_dir: Path, env: dict[str, str] | None = None):
        self.server = server
        self.path = path
        self.cache_dir = cache_dir
        self.extra_env = env or {}
        self.log_path = cache_dir.parent / f"{cache_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BenchMount:
        self.path.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI")}
        env.update(OPENAI_API_KEY=API_KEY, OPENAI_BASE_URL=self.server.base_url, **self.extra_env)
        cmd = [sys.executable, "-m", "openaifs", "mount", "-f", str(self.path), "--cache-dir", str(self.cache_dir),
               "--log-file", str(self.log_path)]
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 120
        while not answers(self.path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"openaifs mount exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("openaifs mount did not come up in time\n" + self.log())
            time.sleep(0.002)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def received(self) -> int | None:
        """Bytes the mount read from its sockets, from its unmount summary (after ``stop``)."""
        found = re.findall(r"; ([0-9.]+) MiB down", self.log())
        return int(float(found[-1]) * MiB) if found else None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        try:
            unmount(self.path)
        finally:
            if proc is not None:
                end(proc, wait=120)

    def __enter__(self) -> BenchMount:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RssPeak:
    """Polls /proc/PID/status while running; ``peak`` is the larger of VmHWM and the polled VmRSS."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                self.peak = max(self.peak, int(line.split()[1]) * KiB)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssPeak:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class Workspace:
    """A temporary directory for data, caches and mountpoints; mounts are counted for cleanup."""

    def __init__(self, keep: bool) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="openaifs-bench-"))
        self.keep = keep
        self._n = 0

    def fresh(self, name: str) -> Path:
        self._n += 1
        return self.dir / f"{name}-{self._n}"

    def mount(self, server: LocalServer, cache_dir: Path | None = None, env: dict[str, str] | None = None
              ) -> BenchMount:
        return BenchMount(server, self.dir / "mnt", cache_dir or self.fresh("cache"), env)

    def cleanup(self) -> None:
        for mnt in self.dir.glob("mnt*"):
            if in_proc_mounts(mnt):
                unmount(mnt)
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


# -- data ------------------------------------------------------------------------------------------
def generate(path: Path, size: int, seed: int) -> str:
    """Write ``size`` pseudo-random bytes (each MiB different) to ``path``; returns their sha256."""
    block = bytearray(os.urandom(MiB))
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        written, i = 0, 0
        while written < size:
            block[:16] = seed.to_bytes(8, "little") + i.to_bytes(8, "little")
            piece = block[: min(MiB, size - written)]
            f.write(piece)
            digest.update(piece)
            written += len(piece)
            i += 1
    return digest.hexdigest()


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            yield chunk


def admin_add(server: LocalServer, purpose: str, filename: str, content: bytes | Iterator[bytes],
              client: httpx.Client | None = None) -> dict[str, Any]:
    c = client or httpx.Client(timeout=600)
    try:
        r = c.post(f"{server.root_url}/_admin/files", params={"purpose": purpose, "filename": filename},
                   content=content)
        r.raise_for_status()
        return r.json()
    finally:
        if client is None:
            c.close()


def seed_many(server: LocalServer, purpose: str, n: int, content: Callable[[int], bytes],
              name: Callable[[int], str], threads: int = 4) -> list[dict[str, Any]]:
    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    def one(i: int) -> dict[str, Any]:
        c = getattr(local, "client", None)
        if c is None:
            c = local.client = httpx.Client(timeout=60)
            with lock:
                clients.append(c)
        return admin_add(server, purpose, name(i), content(i), c)

    try:
        with concurrent.futures.ThreadPoolExecutor(threads) as ex:
            return list(ex.map(one, range(n)))
    finally:
        for c in clients:
            c.close()


def content_url(server: LocalServer, file_id: str) -> str:
    return f"{server.base_url}/files/{file_id}/content"


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def evict_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cache_data_file(cache_dir: Path) -> Path:
    files = list((cache_dir / "content").glob("*.data"))
    if len(files) != 1:
        raise RuntimeError(f"expected one cache data file in {cache_dir}, found {len(files)}")
    return files[0]


def dd(path: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"], check=True)
    return time.perf_counter() - t


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


# -- baselines ------------------------------------------------------------------------------------
@contextlib.contextmanager
def warm_client(server: LocalServer) -> Iterator[httpx.Client]:
    """An httpx client with its connection already open, as the mount's is (its listing opened it):
    the baselines time requests, not building an SSL context or connecting."""
    with httpx.Client(timeout=120, headers=auth()) as c:
        c.get(f"{server.base_url}/files", params={"limit": 1}).raise_for_status()
        yield c


def httpx_download(server: LocalServer, file_id: str) -> float:
    with warm_client(server) as c:
        t = time.perf_counter()
        with c.stream("GET", content_url(server, file_id)) as r:
            r.raise_for_status()
            for _ in r.iter_raw():
                pass
        return time.perf_counter() - t


def curl_download(server: LocalServer, file_id: str) -> float:
    t = time.perf_counter()
    subprocess.run(["curl", "-sSf", "-o", "/dev/null", "-H", f"Authorization: Bearer {API_KEY}",
                    content_url(server, file_id)], check=True)
    return time.perf_counter() - t


def settle_stats(server: LocalServer, route: str = CONTENT, quiet: float = 0.2, limit: float = 5.0
                 ) -> dict[str, Any]:
    """Server stats once ``route``'s byte count stopped moving (an abandoned stream winds down)."""
    deadline = time.monotonic() + limit
    last = server.stats()
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = server.stats()
        if now["bytes_sent"].get(route) == last["bytes_sent"].get(route):
            return now
        last = now
    return last


# -- sections -------------------------------------------------------------------------------------
class Bench:
    def __init__(self, profile: Profile, ws: Workspace, results: Results) -> None:
        self.p = profile
        self.ws = ws
        self.results = results
        self.server: LocalServer | None = None
        self.big_id = ""
        self.big_sha = ""
        self.small_ids: list[str] = []
        self.complete_cache: Path | None = None  # a cache dir holding the whole big file

    # setup ---------------------------------------------------------------------------------------
    def start_server(self, sections: set[str]) -> LocalServer:
        self.server = LocalServer(self.ws.dir / "server-data", ["--allow-all-downloads"]).start()
        server = self.server
        if sections & {"read", "head", "reread"}:
            src = self.ws.dir / "big.bin"
            log(f"generating and seeding a {fmt_bytes(self.p.read_size)} file")
            self.big_sha = generate(src, self.p.read_size, 1)
            self.big_id = admin_add(server, "evals", "big.bin", file_chunks(src))["id"]
            src.unlink()
        if "parallel" in sections:
            log(f"seeding {self.p.small_files} files of {fmt_bytes(self.p.small_size)}")
            base = os.urandom(self.p.small_size)
            files = seed_many(server, "evals", self.p.small_files, lambda i: i.to_bytes(8, "little") + base[8:],
                              lambda i: f"small-{i:04d}.bin")
            self.small_ids = [f["id"] for f in files]
        return server

    def big_path(self, m: BenchMount) -> Path:
        return m.path / "evals" / "big.bin"

    # 1 + 7: cold sequential read -------------------------------------------------------------------
    def cold_read(self) -> None:
        server = self._server()
        size = self.p.read_size
        for ranged in (True, False):
            mode = "Range" if ranged else "no Range"
            server.set_faults(range=ranged)
            log(f"cold sequential read of {fmt_bytes(size)}, server {mode}")
            ours: list[float] = []
            base: list[float] = []
            curl: list[float] = []
            rss: list[int] = []
            verified = False
            for rep in range(self.p.reps):
                base.append(httpx_download(server, self.big_id))
                if shutil.which("curl"):
                    curl.append(curl_download(server, self.big_id))
                cache = self.ws.fresh("cache")
                with self.ws.mount(server, cache) as m, RssPeak(m.pid) as peak:
                    ours.append(dd(self.big_path(m)))
                    if not verified:  # a second, page-cached pass: checks the bytes, costs ~1 s
                        if sha256_of(self.big_path(m)) != self.big_sha:
                            raise RuntimeError(f"wrong content read through the mount ({mode})")
                        verified = True
                rss.append(peak.peak)
                if ranged and rep == self.p.reps - 1:
                    self.complete_cache = cache
                else:
                    shutil.rmtree(cache)
            o, b = rate(size, med(ours)), rate(size, med(base))
            floor = 0.9 if ranged else 0.8
            samples = {"ours_s": ours, "httpx_s": base, "curl_s": curl}
            self.results.add(Row(f"cold read {fmt_bytes(size)}, dd bs=1M ({mode}) vs httpx", fmt_rate(o),
                                 fmt_rate(b), o / b, f">= {floor:.2f}x", o / b >= floor, samples))
            if curl:
                c = rate(size, med(curl))
                self.results.add(Row(f"cold read ({mode}) vs curl", fmt_rate(o), fmt_rate(c), o / c, "(reference)",
                                     None, {"curl_s": curl}))
            self.results.add(Row(f"peak RSS of the mount, cold read ({mode})", fmt_bytes(max(rss)), "-", None,
                                 "< 150 MiB", max(rss) < 150 * MiB, {"rss_bytes": rss}))
        server.set_faults()

    # 2: head / tail --------------------------------------------------------------------------------
    def head_tail(self) -> None:
        server = self._server()
        local = self.ws.dir / "local-4k.bin"  # the same command on a local file: its own start-up cost
        local.write_bytes(os.urandom(MiB))
        for ranged in (True, False):
            mode = "Range" if ranged else "no Range"
            server.set_faults(range=ranged)
            for which in ("head", "tail"):
                log(f"{which} -c 4096, cold, server {mode}")
                ours: list[float] = []
                base: list[float] = []
                reqs: list[int] = []
                sent: list[int] = []
                got: list[int] = []
                spawn: list[float] = []
                for _ in range(self.p.reps):
                    base.append(self._direct_4k(which, ranged))
                    t = time.perf_counter()
                    subprocess.run([which, "-c", "4096", str(local)], check=True, stdout=subprocess.DEVNULL)
                    spawn.append(time.perf_counter() - t)
                    with self.ws.mount(server) as m:
                        server.reset_stats()
                        t = time.perf_counter()
                        out = subprocess.run([which, "-c", "4096", str(self.big_path(m))], check=True,
                                             stdout=subprocess.PIPE).stdout
                        ours.append(time.perf_counter() - t)
                        if len(out) != 4096:
                            raise RuntimeError(f"{which} read {len(out)} bytes")
                        stats = settle_stats(server)
                    shutil.rmtree(m.cache_dir)
                    reqs.append(stats["requests"].get(CONTENT, 0))
                    sent.append(stats["bytes_sent"].get(CONTENT, 0))
                    got.append(m.received() or 0)
                # "Transferred": what the server counted as sent. Without Range the server streams the
                # whole body, and by the time the mount hangs up its socket buffers (several MiB on
                # loopback) have taken more than the mount ever read; there the mount's own count of
                # bytes read (its unmount summary, listing included) is the measure, both are shown.
                moved = sent if ranged else got
                if which == "head":
                    target, ok = "1 request, <= 2 MiB", max(reqs) == 1 and max(moved) <= 2 * MiB
                elif ranged:
                    target, ok = "<= 2 requests", max(reqs) <= 2
                else:  # without Range the last bytes come only at the end of a whole download
                    target, ok = "(no target)", None
                direct = "httpx Range GET" if ranged else ("httpx stream, stop at 4 KiB" if which == "head"
                                                           else "httpx whole download")
                bytes_text = (f"sent {fmt_bytes(max(sent))}" if ranged
                              else f"mount read {fmt_bytes(max(got))}, server sent {fmt_bytes(max(sent))}")
                o, b = med(ours), med(base)
                self.results.add(Row(
                    f"{which} -c 4096 cold ({mode}) vs {direct}",
                    f"{fmt_s(o)} ({which} of a local file: {fmt_s(med(spawn))}); {max(reqs)} req, {bytes_text}",
                    fmt_s(b), o / b, target, ok,
                    {"ours_s": ours, "baseline_s": base, "local_file_s": spawn, "requests": reqs,
                     "server_bytes_sent": sent, "mount_bytes_read": got}))
        server.set_faults()

    def _direct_4k(self, which: str, ranged: bool) -> float:
        server = self._server()
        url = content_url(server, self.big_id)
        with warm_client(server) as c:
            t = time.perf_counter()
            if ranged:
                rng = "bytes=0-4095" if which == "head" else "bytes=-4096"
                r = c.get(url, headers={"Range": rng})
                r.raise_for_status()
                assert len(r.content) == 4096
            else:
                with c.stream("GET", url) as r:
                    got = 0
                    for chunk in r.iter_raw():
                        got += len(chunk)
                        if which == "head" and got >= 4096:
                            break
            return time.perf_counter() - t

    # 3: re-read from the cache after a remount -------------------------------------------------------
    def reread(self) -> None:
        server = self._server()
        size = self.p.read_size
        if self.complete_cache is None:
            log("filling a cache directory for the re-read")
            cache = self.ws.fresh("cache")
            with self.ws.mount(server, cache) as m:
                dd(self.big_path(m))
            self.complete_cache = cache
        cache = self.complete_cache
        data = cache_data_file(cache)
        for on_disk in (True, False):
            where = "from disk" if on_disk else "page-cached"
            log(f"re-read after remount, cache file {where}")
            ours: list[float] = []
            base: list[float] = []
            reqs: list[int] = []
            for _ in range(self.p.reps):
                if on_disk:
                    evict_from_page_cache(data)
                else:
                    dd(data)
                base.append(dd(data))
                if on_disk:
                    evict_from_page_cache(data)
                with self.ws.mount(server, cache) as m:
                    server.reset_stats()
                    ours.append(dd(self.big_path(m)))
                    reqs.append(server.requests(CONTENT))
            o, b = rate(size, med(ours)), rate(size, med(base))
            target, ok = (">= 0.80x, 0 requests", o / b >= 0.8 and max(reqs) == 0) if on_disk \
                else ("(reference), 0 requests", None if max(reqs) == 0 else False)
            self.results.add(Row(f"re-read after remount, cache file {where}, vs dd of the cache file",
                                 fmt_rate(o), fmt_rate(b), o / b, target, ok,
                                 {"ours_s": ours, "direct_s": base, "content_requests": reqs}))

    # 4: ls -l ------------------------------------------------------------------------------------------
    def listing(self) -> None:
        for n in self.p.ls_sizes:
            server = LocalServer(self.ws.fresh("ls-data"), []).start()
            try:
                log(f"seeding {n} files for ls -l")
                t = time.perf_counter()
                for k in range(0, n, 5000):  # many small files per request (POST /_admin/files/bulk)
                    server.add_files_bulk([{"purpose": "batch_output", "filename": f"out-{i:06d}.jsonl",
                                            "content": '{"id": 1}\n'} for i in range(k, min(n, k + 5000))])
                log(f"  seeded in {time.perf_counter() - t:.0f} s")
                self._listing(server, n)
            finally:
                server.stop()

    def _listing(self, server: LocalServer, n: int) -> None:
        reps = self.p.reps if n < 100000 else max(1, min(self.p.reps, 3))
        base: list[float] = []
        pages: list[int] = []
        cold: list[float] = []
        mounted: list[float] = []  # of which: until the mount answered (process start, listing, mount)
        warm: list[float] = []
        cold_reqs: list[dict[str, int]] = []
        for _ in range(reps):
            with warm_client(server) as c:
                t = time.perf_counter()
                params: dict[str, Any] = {"limit": 10000}
                count = got = 0
                while True:
                    page = c.get(f"{server.base_url}/files", params=params).json()
                    count += 1
                    got += len(page["data"])
                    if not page["data"] or not page["has_more"]:
                        break
                    params["after"] = page["data"][-1]["id"]
                base.append(time.perf_counter() - t)
            pages.append(count)
            assert got == n, got
            server.reset_stats()
            m = self.ws.mount(server)
            t = time.perf_counter()
            try:
                m.start()
                mounted.append(time.perf_counter() - t)
                lines = _ls(m.path / "batch_output")
                cold.append(time.perf_counter() - t)
                if lines != n:
                    raise RuntimeError(f"ls -l listed {lines} files, expected {n}")
                cold_reqs.append({k: v for k, v in server.stats()["requests"].items() if v})
                for _ in range(3):
                    t = time.perf_counter()
                    _ls(m.path / "batch_output")
                    warm.append(time.perf_counter() - t)
            finally:
                m.stop()
                shutil.rmtree(m.cache_dir, ignore_errors=True)
        b, c, w = med(base), med(cold), med(warm)
        exact = all(r == {LIST: pages[0]} for r in cold_reqs)
        req_text = f"{cold_reqs[0].get(LIST, 0)} list req" + ("" if exact else f" {cold_reqs}")
        samples = {"cold_s": cold, "mount_start_s": mounted, "warm_s": warm, "api_s": base, "api_pages": pages,
                   "cold_requests": cold_reqs}
        if n == 10000:
            target, ok = "<= 1.5x API + 0.3 s, only list reqs", c <= 1.5 * b + 0.3 and exact
        elif n >= 100000:
            target, ok = "works, only list reqs", exact
        else:
            target, ok = "(no target), only list reqs", exact
        self.results.add(Row(f"ls -l {n} files cold (mount start + ls) vs listing API",
                             f"{fmt_s(c)} (mounted after {fmt_s(med(mounted))}); {req_text}",
                             f"{fmt_s(b)}; {pages[0]} pages", c / b, target, ok, samples))
        wt, wok = ("<= 0.2 s", w <= 0.2) if n <= 10000 else ("(no target)", None)
        self.results.add(Row(f"ls -l {n} files warm", fmt_s(w), "-", None, wt, wok, {"warm_s": warm}))

    # 5 + 7: uploads --------------------------------------------------------------------------------------
    def uploads(self) -> None:
        server = self._server()
        from openai import OpenAI  # the official SDK: only this section needs it

        sdk = OpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=0, timeout=600)
        try:
            for size, kind in ((self.p.single_upload, "single"), (self.p.multi_upload, "multi")):
                src = self.ws.dir / f"upload-{kind}.bin"
                log(f"upload of {fmt_bytes(size)} ({kind}): generating")
                generate(src, size, 7)
                ours: list[float] = []
                base: list[float] = []
                base_md5: list[float] = []
                rss: list[int] = []
                for rep in range(self.p.upload_reps):
                    if kind == "multi":
                        # openaifs sends the md5 of the whole file with `complete` (the server then
                        # checks it); the SDK helper only when given one. The same, done with the SDK:
                        log(f"  rep {rep + 1}: SDK, with md5")
                        t = time.perf_counter()
                        md5 = _md5_of(src)
                        up = sdk.uploads.upload_file_chunked(file=src, mime_type="application/octet-stream",
                                                             purpose="user_data", md5=md5)
                        base_md5.append(time.perf_counter() - t)
                        assert up.file is not None
                        self._check_and_delete(up.file.id, size)
                    log(f"  rep {rep + 1}: SDK")
                    t = time.perf_counter()
                    if kind == "single":
                        with open(src, "rb") as f:
                            fid = sdk.files.create(file=f, purpose="user_data").id
                    else:
                        up = sdk.uploads.upload_file_chunked(file=src, mime_type="application/octet-stream",
                                                             purpose="user_data")
                        assert up.file is not None
                        fid = up.file.id
                    base.append(time.perf_counter() - t)
                    self._check_and_delete(fid, size)
                    log(f"  rep {rep + 1}: cp into the mount")
                    with self.ws.mount(server, env=self.p.mount_env) as m, RssPeak(m.pid) as peak:
                        name = f"bench-{kind}-{rep}.bin"
                        server.reset_stats()
                        t = time.perf_counter()
                        subprocess.run(["cp", str(src), str(m.path / "user_data" / name)], check=True)
                        ours.append(time.perf_counter() - t)
                        routes = {k: v for k, v in server.stats()["requests"].items() if v}
                    rss.append(peak.peak)
                    shutil.rmtree(m.cache_dir)
                    fid = self._find(name)
                    self._check_and_delete(fid, size)
                src.unlink()
                o, b = rate(size, med(ours)), rate(size, med(base))
                sdk_call = "files.create" if kind == "single" else "uploads.upload_file_chunked"
                self.results.add(Row(f"cp {fmt_bytes(size)} into the mount vs SDK {sdk_call}",
                                     f"{fmt_rate(o)} ({', '.join(sorted(routes))})", fmt_rate(b), o / b,
                                     ">= 0.90x", o / b >= 0.9, {"ours_s": ours, "sdk_s": base}))
                if base_md5:
                    m5 = rate(size, med(base_md5))
                    self.results.add(Row(f"cp {fmt_bytes(size)} into the mount vs SDK {sdk_call} with md5",
                                         fmt_rate(o), fmt_rate(m5), o / m5, "(reference)", None,
                                         {"ours_s": ours, "sdk_md5_s": base_md5}))
                self.results.add(Row(f"peak RSS of the mount, cp {fmt_bytes(size)}", fmt_bytes(max(rss)), "-", None,
                                     "< 150 MiB", max(rss) < 150 * MiB, {"rss_bytes": rss}))
        finally:
            sdk.close()

    def _find(self, filename: str) -> str:
        with httpx.Client(timeout=60, headers=auth()) as c:
            data = c.get(f"{self._server().base_url}/files", params={"purpose": "user_data"}).json()["data"]
        ids = [f["id"] for f in data if f["filename"] == filename]
        if len(ids) != 1:
            raise RuntimeError(f"expected one uploaded {filename}, found {len(ids)}")
        return ids[0]

    def _check_and_delete(self, file_id: str, size: int) -> None:
        with httpx.Client(timeout=60, headers=auth()) as c:
            got = c.get(f"{self._server().base_url}/files/{file_id}").json()["bytes"]
            if got != size:
                raise RuntimeError(f"uploaded {file_id} has {got} bytes, expected {size}")
            c.delete(f"{self._server().base_url}/files/{file_id}").raise_for_status()

    # 6: parallel small reads -------------------------------------------------------------------------------
    def parallel(self) -> None:
        server = self._server()
        n, size, k = self.p.small_files, self.p.small_size, self.p.readers
        log(f"{k} parallel readers over {n} files of {fmt_bytes(size)}")
        ours: list[float] = []
        base: list[float] = []
        for _ in range(self.p.reps):
            with contextlib.ExitStack() as stack:
                clients = [stack.enter_context(warm_client(server)) for _ in range(k)]
                base.append(_parallel(k, n, lambda i, c: _download_discard(c, content_url(server, self.small_ids[i])),
                                      clients.pop))
            with self.ws.mount(server) as m:
                names = [m.path / "evals" / f"small-{i:04d}.bin" for i in range(n)]
                t = _parallel(k, n, lambda i, _c, names=names: _read_file(names[i], size), lambda: None)
                ours.append(t)
            shutil.rmtree(m.cache_dir)
        total = n * size
        o, b = rate(total, med(ours)), rate(total, med(base))
        self.results.add(Row(f"{k} parallel readers, {n} x {fmt_bytes(size)} vs {k} parallel httpx downloads",
                             fmt_rate(o), fmt_rate(b), o / b, ">= 0.80x", o / b >= 0.8,
                             {"ours_s": ours, "httpx_s": base}))

    def _server(self) -> LocalServer:
        assert self.server is not None
        return self.server


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def _ls(path: Path) -> int:
    out = subprocess.run(["ls", "-l", str(path)], check=True, stdout=subprocess.PIPE).stdout
    return out.count(b"\n") - 1  # minus the "total" line


def _read_file(path: Path, size: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        got = 0
        while chunk := os.read(fd, MiB):
            got += len(chunk)
    finally:
        os.close(fd)
    if got != size:
        raise RuntimeError(f"read {got} bytes of {path}, expected {size}")


def _download_discard(client: Any, url: str) -> None:
    with client.stream("GET", url) as r:
        r.raise_for_status()
        for _ in r.iter_raw():
            pass


def _parallel(workers: int, n: int, job: Callable[[int, Any], None], make: Callable[[], Any]) -> float:
    """Run ``job(i, per-worker resource)`` for i in range(n) on ``workers`` threads; the wall time."""
    lock = threading.Lock()
    next_i = [0]

    def worker() -> None:
        res = make()  # the caller owns (and closes) it
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= n:
                return
            job(i, res)

    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        for f in [ex.submit(worker) for _ in range(workers)]:
            f.result()
    return time.perf_counter() - t


# -- main -----------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small files, few repetitions (under two minutes)")
    ap.add_argument("--reps", type=int, help="repetitions per measurement (default 5, --quick 2)")
    ap.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (data, caches, logs)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results", help="where the JSON goes")
    args = ap.parse_args()
    profile = QUICK if args.quick else FULL
    if args.reps:
        profile.reps = args.reps
        profile.upload_reps = min(profile.upload_reps, args.reps)
    sections = set(SECTIONS) if not args.only else set(args.only.split(","))
    unknown = sections - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        print("note: not root; the mount cannot raise its read-ahead, the page-cache eviction may fail",
              file=sys.stderr)

    results = Results()
    ws = Workspace(args.keep)
    bench = Bench(profile, ws, results)
    started = time.time()
    try:
        if sections & {"read", "head", "reread", "upload", "parallel"}:
            bench.start_server(sections)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("read", bench.cold_read), ("head", bench.head_tail), ("reread", bench.reread),
            ("ls", bench.listing), ("upload", bench.uploads), ("parallel", bench.parallel),
        ]
        for name, step in steps:
            if name in sections:
                step()
    finally:
        if bench.server is not None:
            bench.server.stop()
        ws.cleanup()
    elapsed = time.time() - started
    print()
    print(results.table())
    print(f"\n{'quick' if args.quick else 'full'} run, {elapsed:.0f} s, {os.cpu_count()} CPUs, "
          f"{platform.release()}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps({
        "quick": args.quick, "profile": asdict(profile), "sections": sorted(sections), "seconds": elapsed,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "rows": [asdict(r) | {"result": r.verdict()} for r in results.rows],
    }, indent=2))
    print(f"written to {out}")
    failed = [r for r in results.rows if r.passed is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
