"""AES-256-GCM with 96-bit random nonces, writing plaintext into caller-owned buffers.

Every failure to open becomes the one WrongSecret error: the caller cannot (and must not) tell a wrong
key from a tampered ciphertext.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from unlocker.errors import WrongSecret

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


def seal(key: bytes | bytearray, plaintext: bytes | bytearray, aad: bytes) -> tuple[bytes, bytes]:
    """Encrypt under a fresh random nonce; returns (nonce, ciphertext || tag)."""
    nonce = os.urandom(NONCE_BYTES)
    out = bytearray(len(plaintext) + TAG_BYTES)
    AESGCM(key).encrypt_into(nonce, plaintext, aad, out)
    return nonce, bytes(out)


def open_into(key: bytes | bytearray, nonce: bytes, ciphertext: bytes, aad: bytes, out: bytearray) -> None:
    """Decrypt into `out` (exactly the plaintext length). Raises WrongSecret on any mismatch."""
    if len(nonce) != NONCE_BYTES or len(ciphertext) != len(out) + TAG_BYTES:
        raise WrongSecret()
    try:
        AESGCM(key).decrypt_into(nonce, ciphertext, aad, out)
    except InvalidTag:
        out[:] = bytes(len(out))
        raise WrongSecret() from None
