"""Keystore benchmarks: Argon2id cost (time against memory) and what an unlock costs beyond the KDF.

    .venv/bin/python bench/keystore.py [--json] [--quick]

Baselines in the same run: raw cryptography Argon2id with the same parameters, and a plain file read
(what a credential without any unwrapping costs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from unlocker.keystore import changes, kdf, storage
from unlocker.keystore.slots import EnrollOptions, Secrets
from unlocker.keystore.unlock import open_keystore

RUNS = 5


def timed(fn, runs: int = RUNS) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def argon2_table(quick: bool) -> dict[str, object]:
    rows = []
    for mib in (8, 32) if quick else (8, 32, 64, 128, 256, 512, 1024):
        if mib * 1024 > kdf.default_max_memory_kib():
            break
        t1, t4 = (timed(lambda m=mib, t=t: kdf.argon2id(b"pw", b"\0" * 16, kdf.Argon2Params(m * 1024, t), 32), 3)
                  for t in (1, 4))
        rows.append({"memory_mib": mib, "t1_ms": round(t1 * 1000, 1), "t4_ms": round(t4 * 1000, 1)})
    calibrations = []
    for target in (100,) if quick else (500, 2000):
        start = time.perf_counter()
        params = kdf.calibrate(target)
        took = time.perf_counter() - start
        actual = timed(lambda p=params: kdf.argon2id(b"pw", b"\0" * 16, p, 32), 3)
        calibrations.append({"target_ms": target, "memory_kib": params.memory_kib, "iterations": params.iterations,
                             "calibration_ms": round(took * 1000), "derivation_ms": round(actual * 1000)})
    return {"argon2id": rows, "calibrate": calibrations}


def unlock_overhead(quick: bool) -> dict[str, object]:
    params = kdf.Argon2Params(8 * 1024, 1) if quick else kdf.Argon2Params(64 * 1024, 3)
    runs = 3 if quick else 9
    options = EnrollOptions(argon2=params)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "keystore"
        opened = changes.create("passphrase", Secrets(bytearray(b"bench passphrase")), options)
        keystore = changes.add_slot(opened, "passphrase", Secrets(bytearray(b"another one")), options)
        storage.write(path, keystore, None)
        plain = Path(d) / "plain"
        plain.write_bytes(os.urandom(32))

        def full_unlock() -> None:
            u = open_keystore(storage.read(path), Secrets(bytearray(b"bench passphrase")))
            u.dek(1)
            u.close()

        salt = bytes(16)

        def raw_kdf() -> None:
            Argon2id(salt=salt, length=32, iterations=params.iterations, lanes=params.lanes,
                     memory_cost=params.memory_kib).derive(b"bench passphrase")

        total, raw = timed(full_unlock, runs), timed(raw_kdf, runs)
        read = timed(lambda: plain.read_bytes(), runs)
    return {"memory_kib": params.memory_kib, "iterations": params.iterations, "runs": runs,
            "unlock_ms": round(total * 1000, 2), "raw_argon2id_ms": round(raw * 1000, 2),
            "overhead_ms": round((total - raw) * 1000, 2), "ratio_vs_raw_argon2id": round(total / raw, 3),
            "plain_file_read_ms": round(read * 1000, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="small memory sizes and few runs (a smoke test)")
    args = parser.parse_args()
    table, unlock = argon2_table(args.quick), unlock_overhead(args.quick)
    if args.json:
        print(json.dumps({**table, "unlock": unlock}, indent=2))
        return
    print("Argon2id cost on this machine (4 lanes, 1 and 4 passes; median of 3)")
    print(f"{'memory':>10} {'t=1 ms':>10} {'t=4 ms':>10}")
    for row in table["argon2id"]:  # type: ignore[attr-defined]
        print(f"{row['memory_mib']:>7} MiB {row['t1_ms']:>10.1f} {row['t4_ms']:>10.1f}")
    for c in table["calibrate"]:  # type: ignore[attr-defined]
        print(f"calibrate({c['target_ms']} ms) -> m={c['memory_kib']} KiB t={c['iterations']} "
              f"(calibration {c['calibration_ms']} ms, one derivation {c['derivation_ms']} ms)")
    print()
    print(f"Unlock of a 2-slot keystore with Argon2id m={unlock['memory_kib']} KiB t={unlock['iterations']} "
          f"(median of {unlock['runs']})")
    print(f"{'what':<44} {'ms':>8}")
    print(f"{'unlocker: read, parse, derive, unwrap, MAC':<44} {unlock['unlock_ms']:>8.2f}")
    print(f"{'raw cryptography Argon2id, same params':<44} {unlock['raw_argon2id_ms']:>8.2f}")
    print(f"{'overhead beyond the KDF (target < 20 ms)':<44} {unlock['overhead_ms']:>8.2f}")
    print(f"{'ratio to the raw KDF':<44} {unlock['ratio_vs_raw_argon2id']:>8.3f}")
    print(f"{'baseline: read a plain 32-byte key file':<44} {unlock['plain_file_read_ms']:>8.3f}")


if __name__ == "__main__":
    main()
