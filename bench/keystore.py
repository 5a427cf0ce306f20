"""Keystore benchmarks: Argon2id cost (time against memory) and what an unlock costs beyond the KDF.

    .venv/bin/python bench/keystore.py

Baselines in the same run: raw cryptography Argon2id with the same parameters, and a plain file read
(what a credential without any unwrapping costs).
"""

from __future__ import annotations

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


def argon2_table() -> None:
    print("Argon2id cost on this machine (4 lanes, 1 and 4 passes; median of 3)")
    print(f"{'memory':>10} {'t=1 ms':>10} {'t=4 ms':>10}")
    for mib in (8, 32, 64, 128, 256, 512, 1024):
        if mib * 1024 > kdf.default_max_memory_kib():
            break
        row = [timed(lambda m=mib, t=t: kdf.argon2id(b"pw", b"\0" * 16, kdf.Argon2Params(m * 1024, t), 32), 3)
               for t in (1, 4)]
        print(f"{mib:>7} MiB {row[0] * 1000:>10.1f} {row[1] * 1000:>10.1f}")
    for target in (500, 2000):
        start = time.perf_counter()
        params = kdf.calibrate(target)
        took = time.perf_counter() - start
        actual = timed(lambda p=params: kdf.argon2id(b"pw", b"\0" * 16, p, 32), 3)
        print(f"calibrate({target} ms) -> m={params.memory_kib} KiB t={params.iterations} "
              f"(calibration {took * 1000:.0f} ms, one derivation {actual * 1000:.0f} ms)")


def unlock_overhead() -> None:
    params = kdf.Argon2Params(64 * 1024, 3)
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

        total, raw = timed(full_unlock, 9), timed(raw_kdf, 9)
        read = timed(lambda: plain.read_bytes(), 9)
    print()
    print(f"Unlock of a 2-slot keystore with Argon2id m={params.memory_kib} KiB t={params.iterations} (median of 9)")
    print(f"{'what':<44} {'ms':>8}")
    print(f"{'unlocker: read, parse, derive, unwrap, MAC':<44} {total * 1000:>8.2f}")
    print(f"{'raw cryptography Argon2id, same params':<44} {raw * 1000:>8.2f}")
    print(f"{'overhead beyond the KDF (target < 20 ms)':<44} {(total - raw) * 1000:>8.2f}")
    print(f"{'baseline: read a plain 32-byte key file':<44} {read * 1000:>8.3f}")


if __name__ == "__main__":
    argon2_table()
    unlock_overhead()
