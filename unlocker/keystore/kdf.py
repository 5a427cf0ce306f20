"""Key derivation: Argon2id for passphrases, HKDF-SHA256 for everything derived from a key.

Outputs are written into bytearrays the caller owns and wipes (derive_into), never into immutable bytes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from unlocker.errors import InvalidInput

# Bounds enforced before anything is allocated: a keystore edited to ask for 1 TiB of memory or a
# billion passes must be refused, not obeyed.
MIN_MEMORY_KIB = 8 * 1024
MAX_MEMORY_KIB = 4 * 1024 * 1024
MIN_ITERATIONS = 1
MAX_ITERATIONS = 1000
LANES = 4
MAX_LANES = 16
SALT_BYTES = 16


@dataclass(frozen=True)
class Argon2Params:
    memory_kib: int
    iterations: int
    lanes: int = LANES

    def check(self) -> None:
        """Raise ValueError when a parameter is out of the accepted range."""
        if not MIN_MEMORY_KIB <= self.memory_kib <= MAX_MEMORY_KIB:
            raise ValueError(f"argon2id memory {self.memory_kib} KiB outside {MIN_MEMORY_KIB}..{MAX_MEMORY_KIB}")
        if not MIN_ITERATIONS <= self.iterations <= MAX_ITERATIONS:
            raise ValueError(f"argon2id iterations {self.iterations} outside {MIN_ITERATIONS}..{MAX_ITERATIONS}")
        if not 1 <= self.lanes <= MAX_LANES:
            raise ValueError(f"argon2id lanes {self.lanes} outside 1..{MAX_LANES}")


def argon2id(secret: bytes | bytearray, salt: bytes, params: Argon2Params, length: int) -> bytearray:
    """Argon2id(secret, salt) into a new bytearray of `length` bytes. Raises ValueError on bad params."""
    params.check()
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
    total_kib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
    return max(MIN_MEMORY_KIB, min(1024 * 1024, total_kib // 2))


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
    if target_ms < 1:
        raise InvalidInput("--kdf-time must be at least 1 ms")
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
    return Argon2Params(memory, max(MIN_ITERATIONS, min(MAX_ITERATIONS, iterations)))
