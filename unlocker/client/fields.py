"""For applications: read the keyring unlocker delivered, and encrypt fields with it.

    from unlocker.client import Keyring, field_aad
    keyring = Keyring.load()                         # $CREDENTIALS_DIRECTORY/dek, json format
    aad = field_aad("notes", "body", row_id)
    token = keyring.encrypt(b"secret text", aad)     # str, safe for a VARCHAR/TEXT column
    keyring.decrypt(token, aad)                      # -> b"secret text"

A token is "uk1:<key id>:<base64(nonce || ciphertext || tag)>", AES-256-GCM with a random 96-bit nonce.
The key id lets values written before `unlocker rotate dek` decrypt after it; new values use the primary.
The associated data binds a value to where it is stored (table, column, row id): a value copied to
another row or column does not decrypt. The PHP recipe (docs/recipes/php-nginx.md) writes the same tokens.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from pathlib import Path
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "uk1"
NONCE_BYTES = 12
AAD_LABEL = b"unlocker field v1\0"
MAX_KEY_ID = 2**31 - 1  # the keystore's DEK ids; a token carries it in 4 bytes
TAG_BYTES = 16
_KEY_ID = re.compile(r"[1-9][0-9]{0,9}")


class KeyringError(Exception):
    """The credential is missing, empty or malformed; or a token does not decrypt."""


def field_aad(table: str, column: str, row_id: str | int) -> bytes:
    """Associated data for a value stored at table.column in row row_id."""
    parts = [table, column, str(row_id)]
    if any("\0" in p for p in parts):
        raise ValueError("table, column and row id must not contain NUL")
    return AAD_LABEL + "\0".join(parts).encode()


class Keyring:
    def __init__(self, keys: dict[int, bytes], primary: int) -> None:
        if any(type(k) is not int or not 1 <= k <= MAX_KEY_ID for k in keys):
            raise KeyringError(f"key ids must be integers 1..{MAX_KEY_ID}")
        if primary not in keys:
            raise KeyringError("the keyring names a primary key it does not contain")
        self.primary = primary
        # One AESGCM per key version, made once; decrypt looks its bound method up by the token's key id
        # as each token spells it (4 bytes big-endian; "uk1:<decimal>", as encrypt writes it).
        self._aead = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._decrypt_by_prefix = {key_id.to_bytes(4, "big"): aead.decrypt for key_id, aead in self._aead.items()}
        self._decrypt_by_head = {f"{PREFIX}:{key_id}": aead.decrypt for key_id, aead in self._aead.items()}
        self._primary_prefix = primary.to_bytes(4, "big")
        self._primary_head = f"{PREFIX}:{primary}"

    @classmethod
    def load(cls, name: str = "dek", directory: str | os.PathLike[str] | None = None) -> Keyring:
        """Read the json-format credential `name` from $CREDENTIALS_DIRECTORY (or `directory`)."""
        where = directory or os.environ.get("CREDENTIALS_DIRECTORY")
        if not where:
            raise KeyringError("CREDENTIALS_DIRECTORY is not set: is this unit granted "
                               "('unlocker grant UNIT --format json') and started by systemd?")
        path = Path(where) / name
        try:
            data = path.read_bytes()
        except OSError as e:
            raise KeyringError(f"cannot read the credential {path}: {e.strerror}") from None
        return cls.from_bytes(data, f"the credential {path}")

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "the credential") -> Keyring:
        """A keyring from the json format's bytes. Raises KeyringError (naming `source`) and nothing else."""
        if not data.strip():
            raise KeyringError(f"{source} is empty: the unit must not run without its key")
        try:
            doc = json.loads(data)
            keys = {_key_id(k["id"]): base64.b64decode(k["key"], validate=True) for k in doc["keys"]}
            primary = _key_id(doc["primary"])
        except (ValueError, KeyError, TypeError, RecursionError):  # binascii.Error is a ValueError
            raise KeyringError(f"{source} is not unlocker's json format") from None
        if any(len(k) != 32 for k in keys.values()):
            raise KeyringError(f"{source} holds a key that is not 32 bytes")
        return cls(keys, primary)

    def encrypt_bytes(self, plaintext: bytes, aad: bytes) -> bytes:
        """Binary token: key id (4 bytes, big-endian) || nonce || ciphertext || tag."""
        nonce = os.urandom(NONCE_BYTES)
        return self._primary_prefix + nonce + self._aead[self.primary].encrypt(nonce, plaintext, aad)

    def decrypt_bytes(self, token: bytes, aad: bytes) -> bytes:
        # The hot path, a few hundred nanoseconds beside AES-GCM's own: one 4-byte slice and one lookup
        # for the key, the two slices AESGCM takes. A token too short for a nonce and a tag fails inside
        # AESGCM, so its length is checked after that failure, not on every call (~40 ns, 3% of one).
        decrypt = self._decrypt_by_prefix.get(token[:4])
        if decrypt is None:
            _refuse_bytes(token)
        try:
            return decrypt(token[4 : 4 + NONCE_BYTES], token[4 + NONCE_BYTES :], aad)
        except (InvalidTag, ValueError) as e:
            _refuse_sealed(len(token) - 4, e)

    def encrypt(self, plaintext: bytes, aad: bytes) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self.primary].encrypt(nonce, plaintext, aad)
        return self._primary_head + ":" + binascii.b2a_base64(nonce + sealed, newline=False).decode("ascii")

    def decrypt(self, token: str, aad: bytes) -> bytes:
        # "uk1:<key id>" is looked up whole: base64 has no ':', so a head found here is a well-formed
        # prefix and key id of this keyring, and the body is all that is left to check. Any token is
        # checked in one order, the faults named as they come: its prefix and key id, its base64, its
        # length, then its key.
        head, _, body = token.rpartition(":")
        decrypt = self._decrypt_by_head.get(head)
        if decrypt is None:
            key_id, body = _split_text(token)  # the body after the second ':', which may hold a ':'
        # Strict, canonical base64, written out here: a call would cost ~40 ns, 2% of a decrypt. Strict
        # decoding leaves one freedom, the unused bits before the padding: checked by the characters that
        # carry them (re-encoding to compare would cost a quarter of the decryption itself).
        try:
            raw = binascii.a2b_base64(body, strict_mode=True)  # what base64.b64decode(validate=True) calls
        except ValueError:  # binascii.Error (a ':' in the body too), or a character that is not ASCII
            raise KeyringError("malformed token") from None
        if body[-1:] == "=" and (body[-3] not in _LOW4_CLEAR if body[-2] == "=" else body[-2] not in _LOW2_CLEAR):
            raise KeyringError("malformed token (non-canonical base64)")
        if decrypt is None:
            _refuse_key(key_id, len(raw))
        try:
            return decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
        except (InvalidTag, ValueError) as e:
            _refuse_sealed(len(raw), e)


_WRONG_PLACE = "the value does not decrypt here: wrong table, column or row, or tampered"


def _refuse_bytes(token: bytes) -> NoReturn:
    """Why a binary token whose key id is not one of this keyring's does not decrypt."""
    _refuse_key(int.from_bytes(token[:4], "big"), len(token) - 4)


def _split_text(token: str) -> tuple[str, str]:
    """The key id and body of a text token whose head is not one of this keyring's, if its head is
    well-formed."""
    prefix, _, rest = token.partition(":")
    key_id, _, body = rest.partition(":")
    if prefix != PREFIX or not _KEY_ID.fullmatch(key_id) or int(key_id) > MAX_KEY_ID:
        raise KeyringError("not an unlocker field token")
    return key_id, body


def _refuse_key(key_id: int | str, sealed_bytes: int) -> NoReturn:
    """A token under a key this keyring lacks; one too short to hold a nonce and a tag is that first."""
    if sealed_bytes < NONCE_BYTES + TAG_BYTES:
        raise KeyringError("token too short")
    raise KeyringError(f"key {key_id} is not in this keyring (retired, or not delivered to this unit)")


def _refuse_sealed(sealed_bytes: int, error: InvalidTag | ValueError) -> NoReturn:
    """Why AESGCM refused nonce || ciphertext || tag of `sealed_bytes` bytes."""
    if sealed_bytes < NONCE_BYTES + TAG_BYTES:  # AESGCM's ValueError (a nonce under 8 bytes), or InvalidTag
        raise KeyringError("token too short") from None
    if isinstance(error, InvalidTag):
        raise KeyringError(_WRONG_PLACE) from None
    raise error  # not the token's fault: associated data over AESGCM's 2^31-byte limit


# Before "==" (or "=") the last base64 character carries 4 (or 2) bits that encode nothing; the canonical
# encoding, the one encrypt writes, has them zero. These are the characters with those bits clear.
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_LOW4_CLEAR = frozenset(_B64_ALPHABET[::16])
_LOW2_CLEAR = frozenset(_B64_ALPHABET[::4])


def _key_id(value: object) -> int:
    """A key id as the json format writes it: an integer 1..2^31-1 (not a bool, float or string)."""
    if type(value) is not int or not 1 <= value <= MAX_KEY_ID:
        raise ValueError("bad key id")
    return value
