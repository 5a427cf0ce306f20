"""Key derivation: Argon2id for passphrases, HKDF-SHA256 for everything derived from a key.

Outputs are written into bytearrays the caller owns and wipes (derive_into), never into immutable bytes.
"""

from __future__ import annotations

import os
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from unlocker import logs
from unlocker.errors import InvalidInput, KdfCostRefused
from unlocker.keystore.fileformat import (  # the format's, so that reading a keystore needs no crypto
    MAX_ITERATIONS,
    MAX_MEMORY_KIB,
    MIN_ITERATIONS,
    MIN_MEMORY_KIB,
    Argon2Params,
)

log = logs.logger()

SALT_BYTES = 16
# Checked before deriving, on top of the format's bounds: memory x passes at most 64 GiB (about 45 s on
# a 2-core 2026 server; 4 GiB x 1000 passes, inside the format's bounds, ran for about an hour), and
# memory at most half of this machine's RAM. A slot beyond either is refused, never run.
MAX_WORK_KIB = 64 * 1024 * 1024
MAX_KDF_TIME_MS = 60_000
# OWASP's floor for Argon2id (19 MiB with 2 passes, or the same memory x passes): below it `calibrate`
# warns. RFC 9106 recommends more (64 MiB, 3 passes, when memory is constrained).
OWASP_MIN_MEMORY_KIB = 19 * 1024
OWASP_MIN_WORK_KIB = 2 * 19 * 1024


def ram_kib() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024


def check_affordable(params: Argon2Params) -> None:
    """Raise KdfCostRefused when deriving with these costs would take this machine down or take minutes."""
    half_ram = ram_kib() // 2
    if params.memory_kib > half_ram:
        raise KdfCostRefused(f"Argon2id asks for {params.memory_kib // 1024} MiB, more than half of this "
                             f"machine's RAM ({half_ram // 1024} MiB); refusing to derive")
    if params.memory_kib * params.iterations > MAX_WORK_KIB:
        raise KdfCostRefused(f"Argon2id asks for {params.memory_kib // 1024} MiB x {params.iterations} passes, "
                             f"more than the ceiling of {MAX_WORK_KIB // 1024 // 1024} GiB x passes; "
                             "refusing to derive")


def argon2id(secret: bytes | bytearray, salt: bytes, params: Argon2Params, length: int) -> bytearray:
    """Argon2id(secret, salt) into a new bytearray of `length` bytes. Raises ValueError on params outside
    the format's bounds, KdfCostRefused on costs this machine will not spend."""
    params.check()
    check_affordable(params)
    out = bytearray(length)
    kdf = Argon2id(
        salt=salt, length=length, iterations=params.iterations, lanes=params.lanes,
        memory_cost=params.memory_kib,
    )
    kdf.derive_into(secret, out)  # type: ignore[arg-type]  # takes any buffer; the stub says bytes
    return out


def hkdf(ikm: bytes | bytearray, salt: bytes, info: bytes, length: int = 32) -> bytearray:
    """HKDF-SHA256 into a new bytearray."""
    out = bytearray(length)
    HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive_into(ikm, out)
    return out


def default_max_memory_kib() -> int:
    """1 GiB, but never more than half of this machine's RAM (cryptsetup's rule)."""
    return max(MIN_MEMORY_KIB, min(1024 * 1024, ram_kib() // 2))


def _time_once(params: Argon2Params) -> float:
    start = time.perf_counter()
    wipe_me = argon2id(b"calibration", b"\0" * SALT_BYTES, params, 32)
    elapsed = time.perf_counter() - start
    wipe_me[:] = bytes(32)
    return elapsed


def calibrate(target_ms: int, max_memory_kib: int | None = None) -> Argon2Params:
    """Pick Argon2id costs that take about target_ms on this machine.

    Like cryptsetup: memory first (it is what makes guessing expensive on GPUs), doubling up to the cap
    while a single pass stays under a third of the target, then iterations to fill the time. A run costs
    a fixed part (allocating and touching the memory) plus one part per pass, so both are measured.
    """
    if not 1 <= target_ms <= MAX_KDF_TIME_MS:
        raise InvalidInput(f"--kdf-time must be between 1 and {MAX_KDF_TIME_MS} ms")
    cap = max_memory_kib or default_max_memory_kib()
    if not MIN_MEMORY_KIB <= cap <= MAX_MEMORY_KIB:
        raise InvalidInput(f"--kdf-memory must be between {MIN_MEMORY_KIB} and {MAX_MEMORY_KIB} KiB")
    target = target_ms / 1000
    memory = MIN_MEMORY_KIB
    one_pass = _time_once(Argon2Params(memory, 1))
    while memory * 2 <= cap and one_pass * 2 < target / 3:
        memory *= 2
        one_pass = _time_once(Argon2Params(memory, 1))
    # The first run at a size pays for faulting in fresh pages; measure again now that it is warm.
    one_pass = min(_time_once(Argon2Params(memory, 1)), _time_once(Argon2Params(memory, 1)))
    four_passes = _time_once(Argon2Params(memory, 4))
    per_pass = max((four_passes - one_pass) / 3, one_pass / 4)
    fixed = max(one_pass - per_pass, 0.0)
    iterations = round((target - fixed) / per_pass)
    params = Argon2Params(memory, max(MIN_ITERATIONS, min(MAX_ITERATIONS, MAX_WORK_KIB // memory, iterations)))
    if params.memory_kib < OWASP_MIN_MEMORY_KIB or params.memory_kib * params.iterations < OWASP_MIN_WORK_KIB:
        log.warning("warning: Argon2id calibrated to %d MiB x %d passes, below OWASP's minimum (19 MiB x 2) "
                    "and RFC 9106's recommendation (64 MiB x 3): each guess at this passphrase costs an "
                    "attacker little; use --kdf-time 2000 (the default) or more", params.memory_kib // 1024,
                    params.iterations)
    return params
