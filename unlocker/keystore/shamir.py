"""Shamir's secret sharing over GF(2^8), byte by byte, in the share format of OpenBao and Vault
(sdk/helper/shamir): a share is the y bytes followed by its x coordinate (1..255, never 0).

The field arithmetic is branch-free and table-free, as OpenBao's is: multiplication by shift-and-add
with masks instead of branches, the inverse as a^254 by a fixed chain. Secret-indexed log/exp tables
(older Vault, most Python libraries) leak through the cache. Python integers make no hard constant-time
promise; this keeps at least the algorithm free of secret-dependent branches and lookups.
"""

from __future__ import annotations

import secrets


def _mul(a: int, b: int) -> int:
    """a·b in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1 (AES's polynomial)."""
    r = 0
    for i in range(7, -1, -1):
        r = (-(b >> i & 1) & a) ^ (-(r >> 7) & 0x1B) ^ ((r + r) & 0xFF)
    return r


def _inverse(a: int) -> int:
    """a^254 = a^-1 (and 0 for 0), by a fixed sequence of multiplications."""
    b = _mul(a, a)
    c = _mul(a, b)
    b = _mul(c, c)
    b = _mul(b, b)
    c = _mul(b, c)
    b = _mul(b, b)
    b = _mul(b, b)
    b = _mul(b, c)
    b = _mul(b, b)
    b = _mul(a, b)
    return _mul(b, b)


def _evaluate(coefficients: list[int], x: int) -> int:
    """Horner's rule; coefficients[0] is the intercept."""
    out = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        out = _mul(out, x) ^ c
    return out


def split(secret: bytes | bytearray, count: int, threshold: int) -> list[bytearray]:
    """`count` shares of which any `threshold` recover `secret`. Raises ValueError on bad parameters."""
    if not 2 <= threshold <= count <= 255 or not secret:
        raise ValueError("need 2 <= threshold <= shares <= 255 and a non-empty secret")
    xs = list(range(1, 256))
    for i in range(len(xs) - 1, 0, -1):  # Fisher-Yates: the x coordinates in a random order
        j = secrets.randbelow(i + 1)
        xs[i], xs[j] = xs[j], xs[i]
    shares = [bytearray(len(secret) + 1) for _ in range(count)]
    for share, x in zip(shares, xs, strict=False):
        share[-1] = x
    coefficients = [0] * threshold
    for k, byte in enumerate(secret):
        coefficients[0] = byte
        for i in range(1, threshold):
            coefficients[i] = secrets.randbelow(256)
        for share in shares:
            share[k] = _evaluate(coefficients, share[-1])
    coefficients[:] = [0] * threshold
    return shares


def combine(shares: list[bytearray]) -> bytearray:
    """The secret from `threshold` or more shares (Lagrange interpolation at 0). With too few, or a wrong
    share, the result is simply a different value: callers check it (the quorum slot does, per share).
    Raises ValueError for shares of different lengths or repeated x coordinates."""
    if len(shares) < 2 or len({len(s) for s in shares}) != 1 or len(shares[0]) < 2:
        raise ValueError("need at least two shares of the same length")
    xs = [s[-1] for s in shares]
    if len(set(xs)) != len(xs) or 0 in xs:
        raise ValueError("the shares' x coordinates must be distinct and non-zero")
    out = bytearray(len(shares[0]) - 1)
    basis = []
    for i, xi in enumerate(xs):
        b = 1
        for j, xj in enumerate(xs):
            if i != j:
                b = _mul(b, _mul(xj, _inverse(xi ^ xj)))
        basis.append(b)
    for k in range(len(out)):
        acc = 0
        for share, b in zip(shares, basis, strict=True):
            acc ^= _mul(share[k], b)
        out[k] = acc
    return out
