"""Credential formats: how a grant's DEK versions are written into a unit's credential. Pure.

Each render returns a new bytearray that the caller sends and then wipes.

- raw:     the primary DEK, 32 bytes.
- hex:     the primary DEK, 64 lowercase hex digits and a newline.
- base64:  the primary DEK, standard base64 and a newline.
- mariadb: MariaDB's file_key_management key file: one "<id>;<64 hex>" line per delivered DEK version,
           key id = DEK version (stable: the key behind an id never changes). Id 1 must be present.
- json:    {"primary": <id>, "keys": [{"id": <id>, "state": "...", "key": "<base64>"}, ...]}
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from enum import StrEnum

from unlocker.memory import wipe


class Format(StrEnum):
    raw = "raw"
    hex = "hex"
    base64 = "base64"
    mariadb = "mariadb"
    json = "json"


@dataclass(frozen=True)
class KeyVersion:
    id: int
    state: str  # primary or active: retired versions are never delivered
    key: bytearray


class FormatUnavailable(ValueError):
    pass


def _hex(key: bytearray) -> bytearray:
    encoded = binascii.hexlify(key)  # returns immutable bytes: copy it out, then scrub it
    out = bytearray(encoded)
    wipe(encoded)
    return out


def _b64(key: bytearray) -> bytearray:
    encoded = binascii.b2a_base64(key, newline=False)
    out = bytearray(encoded)
    wipe(encoded)
    return out


def render(fmt: Format, versions: list[KeyVersion]) -> bytearray:
    """The credential's bytes. Raises FormatUnavailable when the versions cannot satisfy the format."""
    primary = next((v for v in versions if v.state == "primary"), None)
    if primary is None:
        raise FormatUnavailable("no primary DEK")
    if fmt == Format.raw:
        return bytearray(primary.key)
    if fmt == Format.hex:
        return _scrubbed(_hex(primary.key), b"\n")
    if fmt == Format.base64:
        return _scrubbed(_b64(primary.key), b"\n")
    if fmt == Format.mariadb:
        if not any(v.id == 1 for v in versions):
            raise FormatUnavailable("mariadb needs key id 1 (DEK version 1), which is no longer delivered")
        out = bytearray()
        for v in sorted(versions, key=lambda v: v.id):
            out = _scrubbed(out, b"%d;" % v.id, _hex(v.key), b"\n")
        return out
    parts: list[bytes | bytearray] = [b'{"primary": %d, "keys": [' % primary.id]
    for i, v in enumerate(sorted(versions, key=lambda v: v.id)):
        parts += [b", " if i else b"", b'{"id": %d, "state": "%s", "key": "' % (v.id, v.state.encode()),
                  _b64(v.key), b'"}']
    parts.append(b"]}\n")
    return _scrubbed(bytearray(), *parts)


def _scrubbed(first: bytearray, *rest: bytes | bytearray) -> bytearray:
    """Concatenate into one exact-size buffer and wipe the pieces (they may hold key material)."""
    out = bytearray(len(first) + sum(len(p) for p in rest))
    view = memoryview(out)
    pos = 0
    for part in (first, *rest):
        view[pos : pos + len(part)] = part
        pos += len(part)
        if isinstance(part, bytearray):
            wipe(part)
    view.release()
    return out
