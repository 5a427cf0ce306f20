"""The elliptic-curve arithmetic of the McCallum-Relyea exchange: point addition and subtraction, which
`cryptography` does not offer and pycryptodome does (in C). Points arrive from the network, so every
one is checked to be on its curve (pycryptodome refuses one that is not).
"""

from __future__ import annotations

from Crypto.PublicKey import ECC

from unlocker.clevis.jose import CURVES, JoseError

Point = ECC.EccPoint


def point(crv: str, x: int, y: int) -> Point:
    try:
        p = ECC.EccPoint(x, y, curve=CURVES[crv][1])
    except ValueError:
        raise JoseError("a point that is not on its curve") from None
    if p.is_point_at_infinity():
        raise JoseError("the point at infinity")
    return p


def ephemeral(crv: str) -> tuple[int, Point]:
    """A fresh key pair (d, d·G)."""
    key = ECC.generate(curve=CURVES[crv][1])
    return int(key.d), key.pointQ


def mul(p: Point, scalar: int) -> Point:
    return p * scalar


def add(a: Point, b: Point) -> Point:
    return a + b


def sub(a: Point, b: Point) -> Point:
    return a + (-b)


def xy(p: Point) -> tuple[int, int]:
    return int(p.x), int(p.y)


def x_bytes(crv: str, p: Point) -> bytes:
    """The shared secret Z of ECDH: the x coordinate, as many bytes as the field."""
    return int(p.x).to_bytes(CURVES[crv][2], "big")
