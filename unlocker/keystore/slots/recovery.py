"""`recovery` slot: a generated key, shown once, for the day the passphrase or the TPM is gone.

It is 30 random bytes (240 bits, so no stretching is needed) and a 2-byte checksum, written in modhex
(the alphabet "cbdefghijklnrtuv", which types the same on most keyboard layouts, as systemd's recovery
keys do) in 8 groups of 8. The checksum catches a mistyped key before it counts as a wrong one.
"""

from __future__ import annotations

import hashlib
import os

from unlocker.errors import InvalidInput
from unlocker.keystore import kdf
from unlocker.keystore.fileformat import Slot
from unlocker.keystore.slots import EnrollOptions, Params, Secrets, SlotType
from unlocker.memory import wipe

MODHEX = "cbdefghijklnrtuv"
RANDOM_BYTES = 30
KEY_BYTES = RANDOM_BYTES + 2
_DECODE = {c: i for i, c in enumerate(MODHEX)}


def _checksum(key: bytes | bytearray) -> bytes:
    return hashlib.sha256(b"unlocker recovery key" + key).digest()[:2]


def generate() -> bytearray:
    key = bytearray(os.urandom(RANDOM_BYTES))
    key += _checksum(key)
    return key


def format_key(key: bytearray) -> bytearray:
    """The printable form: 8 dash-separated groups of 8 modhex characters."""
    out = bytearray()
    for i, byte in enumerate(key):
        if i and i % 4 == 0:
            out += b"-"
        out += (MODHEX[byte >> 4] + MODHEX[byte & 15]).encode("ascii")
    return out


def parse_key(typed: bytes | bytearray) -> bytearray | None:
    """The key bytes, or None when the text is not shaped like a recovery key at all. Raises
    InvalidInput when it is shaped like one but the checksum says it was mistyped."""
    chars = [chr(c) for c in bytes(typed).lower() if chr(c) not in "- \t"]
    if len(chars) != KEY_BYTES * 2 or any(c not in _DECODE for c in chars):
        return None
    key = bytearray(_DECODE[chars[i]] << 4 | _DECODE[chars[i + 1]] for i in range(0, len(chars), 2))
    chars.clear()
    if _checksum(key[:RANDOM_BYTES]) != key[RANDOM_BYTES:]:
        wipe(key)
        raise InvalidInput("that recovery key is mistyped (its checksum does not match); check each group")
    return key


class RecoverySlot(SlotType):
    name = "recovery"
    needs_passphrase = True

    def accepts(self, secrets: Secrets) -> bool:
        return secrets.passphrase is not None and parse_key(secrets.passphrase) is not None

    def derive(self, slot: Slot, secrets: Secrets, keystore_id: bytes) -> bytearray:
        assert secrets.passphrase is not None
        key = parse_key(secrets.passphrase)
        if key is None:
            raise InvalidInput("not a recovery key (8 groups of 8 characters from cbdefghijklnrtuv)")
        try:
            return kdf.hkdf(key, keystore_id, self.label())
        finally:
            wipe(key)

    def create(self, secrets: Secrets, keystore_id: bytes, options: EnrollOptions) -> tuple[Params, bytearray]:
        """`secrets.passphrase` must hold the formatted key from generate()/format_key()."""
        return (), self.derive(Slot(0, self.name, (), b"", b""), secrets, keystore_id)
