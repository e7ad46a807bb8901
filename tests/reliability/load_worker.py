"""One load worker (a process of its own, so a hang cannot take the test runner with it).

    python -m tests.reliability.load_worker MOUNT SPEC.json SECONDS SEED

SPEC maps paths relative to MOUNT to the sha256 of their content. For SECONDS the worker picks
operations at random: ls (+ lstat of a few entries), stat, a whole read checked against SPEC, a new
file written, closed (uploaded), read back and checked, and rm of a file it wrote. It prints one JSON
line: counts per operation and every error (an error is any failure; nothing here may fail).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path


def main() -> None:
    root, spec_path, seconds, seed = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    spec: dict[str, str] = json.loads(spec_path.read_text())
    paths = sorted(spec)
    rng = random.Random(seed)
    mine: list[Path] = []
    counts: dict[str, int] = {}
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        op = rng.choice(["ls", "ls", "stat", "stat", "read", "read", "write", "rm"])
        try:
            if op == "ls":
                d = root / rng.choice(["vision", "evals", "batch", ".by-id", ""])
                names = os.listdir(d)
                for name in rng.sample(names, min(3, len(names))):
                    try:
                        os.lstat(d / name)
                    except FileNotFoundError:
                        pass  # another worker's file, removed since the listing: fine
            elif op == "stat":
                st = os.stat(root / rng.choice(paths))
                assert st.st_mode & 0o777 == 0o444, oct(st.st_mode)
            elif op == "read":
                rel = rng.choice(paths)
                digest = hashlib.sha256((root / rel).read_bytes()).hexdigest()
                assert digest == spec[rel], f"{rel}: wrong content"
            elif op == "write":
                data = rng.randbytes(rng.choice([0, 1, 100, 4096, 70_000, 300_000]))
                path = root / "vision" / f"w{seed}-{i}.bin"
                i += 1
                with open(path, "wb") as f:
                    f.write(data)
                assert path.read_bytes() == data, f"{path.name}: read back differs"
                mine.append(path)
            elif op == "rm" and mine:
                path = mine.pop(rng.randrange(len(mine)))
                os.unlink(path)
                assert not path.exists(), f"{path.name} still there after rm"
            counts[op] = counts.get(op, 0) + 1
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none may happen
            errors.append(f"{op}: {type(exc).__name__}: {exc}")
    for path in mine:  # leave the account as found
        try:
            os.unlink(path)
        except OSError as exc:
            errors.append(f"cleanup: {exc}")
    print(json.dumps({"counts": counts, "errors": errors}))


if __name__ == "__main__":
    main()
