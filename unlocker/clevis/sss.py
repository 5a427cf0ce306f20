"""The sss pin: Shamir's secret sharing over a 256-bit prime field between child pins, as clevis does it
(src/pins/sss/sss.c): a random safe prime p, the key is the polynomial's constant term, each child pin
encrypts one point x‖y (32 bytes each). Unlike clevis, which waits for its children without a timeout,
decryption asks every child at once and returns as soon as the threshold answered, or names why each
missing one failed once too few are left or the deadline passed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from Crypto.Util.number import isPrime

from unlocker.clevis.http import ServerFailed, Timeouts
from unlocker.clevis.jose import CompactJwe, JoseError, b64url, open_, seal, unb64url
from unlocker.errors import InvalidInput, NetworkUnlockFailed, UnlockerError
from unlocker.memory import wipe

KEY_BYTES = 32
_SMALL_PRIMES = [p for p in range(3, 2000) if all(p % q for q in range(2, int(p**0.5) + 1))]


def safe_prime(bits: int = 8 * KEY_BYTES) -> int:
    """A random prime p of exactly `bits` bits with (p-1)/2 prime too (what BN_generate_prime_ex(safe=1)
    makes). Sieving both numbers by small primes first keeps this to a fraction of a second."""
    while True:
        q = secrets.randbits(bits - 1) | (1 << (bits - 2)) | 1
        p = 2 * q + 1
        if any(q % s == 0 or p % s == 0 for s in _SMALL_PRIMES if s < q):
            continue
        if pow(2, p - 1, p) == 1 and isPrime(q) and isPrime(p):
            return p


def split(threshold: int, count: int, p: int) -> tuple[int, list[tuple[int, int]]]:
    """(key, `count` points) of a random polynomial of degree threshold-1 over GF(p)."""
    coefficients = [secrets.randbelow(p) for _ in range(threshold)]
    points = []
    for _ in range(count):
        x = 1 + secrets.randbelow(p - 1)  # never 0: that point would be the key itself
        points.append((x, sum(c * pow(x, i, p) for i, c in enumerate(coefficients)) % p))
    return coefficients[0], points


def combine(points: list[tuple[int, int]], p: int) -> int:
    """Lagrange interpolation at 0, modulo p."""
    key = 0
    for i, (xi, yi) in enumerate(points):
        acc = 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                acc = acc * (-xj) * pow(xi - xj, -1, p) % p
        key = (key + acc * yi) % p
    return key


def pin_configs(config: dict[str, Any]) -> list[tuple[str, Any]]:
    pins = config.get("pins")
    if not isinstance(pins, dict) or not pins:
        raise InvalidInput("the sss pin needs \"pins\": {\"tang\": [{...}, ...]}")
    out = []
    for name, configs in pins.items():
        for child in configs if isinstance(configs, list) else [configs]:
            out.append((name, child))
    return out


def encrypt(config: dict[str, Any], plaintext: bytes | bytearray,
            encrypt_child: Callable[[str, Any, bytes], str]) -> str:
    """`clevis encrypt sss CONFIG`; each child JWE is made by encrypt_child(pin, config, point)."""
    children = pin_configs(config)
    t = config.get("t", 1)
    if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= len(children):
        raise InvalidInput(f"sss \"t\" must be 1..{len(children)} (the number of pins)")
    p = safe_prime()
    key, points = split(t, len(children), p)
    jwes = [encrypt_child(name, child, x.to_bytes(KEY_BYTES, "big") + y.to_bytes(KEY_BYTES, "big"))
            for (name, child), (x, y) in zip(children, points, strict=True)]
    header = {"alg": "dir", "enc": "A256GCM",
              "clevis": {"pin": "sss", "sss": {"t": t, "p": b64url(p.to_bytes(KEY_BYTES, "big")), "jwe": jwes}}}
    return seal(header, key.to_bytes(KEY_BYTES, "big"), plaintext)


def parameters(jwe: CompactJwe) -> tuple[int, int, list[str]]:
    """(t, p, child JWEs) of an sss JWE."""
    header = jwe.header
    sss = header.get("clevis", {}).get("sss") if isinstance(header.get("clevis"), dict) else None
    if header.get("alg") != "dir" or not isinstance(sss, dict):
        raise JoseError("not an sss JWE (alg dir and clevis.sss needed)")
    t, p, children = sss.get("t"), sss.get("p"), sss.get("jwe")
    if not isinstance(children, list) or not all(isinstance(c, str) for c in children) or not children:
        raise JoseError("sss: no child JWEs")
    if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= len(children) or not isinstance(p, str):
        raise JoseError("sss: bad threshold or prime")
    prime = int.from_bytes(unb64url(p), "big")
    if prime.bit_length() < 8 * KEY_BYTES - 1 or len(unb64url(p)) != KEY_BYTES:
        raise JoseError("sss: the prime is not 256 bits")
    return t, prime, children


def decrypt(jwe: CompactJwe, deadline: float, timeouts: Timeouts,
            decrypt_child: Callable[[str, float, Timeouts], bytearray]) -> bytearray:
    """Ask every child at once; combine the first t points. Raises NetworkUnlockFailed with each
    failed child's reason when fewer than t answer before the deadline."""
    t, p, children = parameters(jwe)
    points: list[tuple[int, int]] = []
    failures: list[str] = []
    pool = ThreadPoolExecutor(max_workers=len(children), thread_name_prefix="clevis-sss")
    try:
        pending: set[Future[bytearray]] = {pool.submit(decrypt_child, c, deadline, timeouts) for c in children}
        while pending and len(points) < t and len(points) + len(pending) >= t:
            # Each child keeps the deadline itself and then says which server timed out; the grace is
            # for a child that somehow does not.
            done, pending = wait(pending, timeout=max(deadline - time.monotonic(), 0) + 1.0,
                                 return_when=FIRST_COMPLETED)
            if not done:
                failures += ["a pin timed out"] * len(pending)
                break
            for future in done:
                try:
                    point = future.result()
                except ServerFailed as e:
                    failures.append(str(e))
                    continue
                except UnlockerError as e:  # a nested sss, a tampered child
                    failures.append(str(e))
                    continue
                if len(point) != 2 * KEY_BYTES:
                    failures.append("a child's point has the wrong size")
                    continue
                points.append((int.from_bytes(point[:KEY_BYTES], "big"), int.from_bytes(point[KEY_BYTES:], "big")))
                wipe(point)
    finally:
        # The children still running stop at the deadline on their own; nobody waits for them.
        pool.shutdown(wait=False, cancel_futures=True)
    if len(points) < t:
        raise NetworkUnlockFailed(f"sss needs {t} of {len(children)} pins, {len(points)} answered", failures)
    encoded = combine(points[:t], p).to_bytes(KEY_BYTES, "big")
    key = bytearray(encoded)
    wipe(encoded)
    try:
        return open_(jwe, key)
    finally:
        wipe(key)
