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
_SEPARATORS = b"- \t"
# byte -> its modhex value (either case), or -1: a table lookup, so no text copy of the key is made.
_DECODE_BYTE = [-1] * 256
for _i, _c in enumerate(MODHEX):
    _DECODE_BYTE[ord(_c)] = _DECODE_BYTE[ord(_c.upper())] = _i


def _checksum(key: bytes | bytearray | memoryview) -> bytes:
    h = hashlib.sha256(b"unlocker recovery key")
    h.update(key)  # no concatenated copy of the key
    return h.digest()[:2]


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
    InvalidInput when it is shaped like one but the checksum says it was mistyped.

    Reads the typed text byte by byte into wipeable buffers: a bytes() or lower() copy of it could not be
    wiped and would keep the key readable in memory for the rest of the process."""
    digits = bytearray(KEY_BYTES * 2)
    count = 0
    try:
        for c in typed:
            if c in _SEPARATORS:
                continue
            value = _DECODE_BYTE[c]
            if value < 0 or count == len(digits):
                return None
            digits[count] = value
            count += 1
        if count != len(digits):
            return None
        key = bytearray(KEY_BYTES)
        for i in range(KEY_BYTES):
            key[i] = digits[2 * i] << 4 | digits[2 * i + 1]
    finally:
        wipe(digits)
    if _checksum(memoryview(key)[:RANDOM_BYTES]) != key[RANDOM_BYTES:]:
        wipe(key)
        raise InvalidInput("that recovery key is mistyped (its checksum does not match); check each group")
    return key


class RecoverySlot(SlotType):
    name = "recovery"
    needs_passphrase = True

    def accepts(self, secrets: Secrets) -> bool:
        """Anything shaped like a recovery key, mistyped or not (derive says which)."""
        if secrets.passphrase is None:
            return False
        try:
            key = parse_key(secrets.passphrase)
        except InvalidInput:
            return True
        wipe(key)
        return key is not None

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
