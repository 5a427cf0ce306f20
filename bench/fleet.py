"""Network-bound unlock time, in one run, side by side: unlocker's native clevis decryption in-process and
Debian's `clevis decrypt` (clevis 19), through one Tang server and through sss 2-of-3, with real tangd
under socat on loopback (the test fixture's servers, stopped by process group at the end).

    .venv/bin/python bench/fleet.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from tang_fixture import KEYGEN, Tang, require_tang  # noqa: E402

from unlocker.clevis import pins  # noqa: E402

SECRET = bytes(range(32))


def _time(fn, runs: int) -> dict[str, float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    p90 = sorted(times)[math.ceil(runs * 0.9) - 1]
    return {"median_ms": round(statistics.median(times), 2), "p90_ms": round(p90, 2), "runs": runs}


def _clevis_decrypt(jwe: str) -> None:
    p = subprocess.run(["clevis", "decrypt"], input=jwe.encode(), capture_output=True, timeout=60)
    assert p.returncode == 0 and p.stdout == SECRET, p.stderr


def _native(jwe: str) -> None:
    assert pins.decrypt(jwe) == SECRET


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        require_tang()
    except BaseException:
        sys.exit("bench/fleet.py needs tang, clevis, jose and socat (scripts/setup installs them)")
    servers: list[Tang] = []
    with tempfile.TemporaryDirectory(prefix="unlocker-bench-") as tmp:
        try:
            for i in range(3):
                db = Path(tmp) / f"tang{i}"
                db.mkdir()
                subprocess.run([KEYGEN, str(db)], check=True, capture_output=True)
                servers.append(Tang(db).start())
            jwes = {
                "tang": pins.encrypt("tang", servers[0].config(), SECRET),
                "sss 2 of 3": pins.encrypt("sss", {"t": 2, "pins": {"tang": [s.config() for s in servers]}}, SECRET),
            }
            results: dict[str, dict] = {}
            for name, jwe in jwes.items():
                # Interleaved per run would be fairer against drift; sequential keeps the output simple and
                # both see the same servers in the same state.
                native = _time(lambda j=jwe: _native(j), args.runs)
                clevis = _time(lambda j=jwe: _clevis_decrypt(j), args.runs)
                results[name] = {"unlocker in-process": native, "clevis decrypt": clevis,
                                 "ratio": round(native["median_ms"] / clevis["median_ms"], 3)}
        finally:
            for server in servers:
                server.stop()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, row in results.items():
        for tool in ("unlocker in-process", "clevis decrypt"):
            r = row[tool]
            print(f"{name:<11} {tool:<20} median {r['median_ms']:>8.2f} ms   p90 {r['p90_ms']:>8.2f} ms"
                  f"   ({r['runs']} runs)")
        print(f"{name:<11} {'ratio (unlocker / clevis)':<27} {row['ratio']:>8.3f}")


if __name__ == "__main__":
    main()
