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
import json
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "uk1"
NONCE_BYTES = 12
AAD_LABEL = b"unlocker field v1\0"
MAX_KEY_ID = 2**31 - 1  # the keystore's DEK ids; a token carries it in 4 bytes
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
        self._aead = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._by_prefix = {key_id.to_bytes(4, "big"): aead for key_id, aead in self._aead.items()}
        self._primary_prefix = primary.to_bytes(4, "big")

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
        if len(token) < 4 + NONCE_BYTES + 16:
            raise KeyringError("token too short")
        aead = self._by_prefix.get(token[:4])  # the hot path: one slice, one lookup
        if aead is None:
            key_id = int.from_bytes(token[:4], "big")
            raise KeyringError(f"key {key_id} is not in this keyring (retired, or not delivered to this unit)")
        try:
            return aead.decrypt(token[4 : 4 + NONCE_BYTES], token[4 + NONCE_BYTES :], aad)
        except InvalidTag:
            raise KeyringError("the value does not decrypt here: wrong table, column or row, or tampered") from None

    def encrypt(self, plaintext: bytes, aad: bytes) -> str:
        raw = self.encrypt_bytes(plaintext, aad)
        return f"{PREFIX}:{int.from_bytes(raw[:4], 'big')}:{base64.b64encode(raw[4:]).decode()}"

    def decrypt(self, token: str, aad: bytes) -> bytes:
        prefix, _, rest = token.partition(":")
        key_id, _, body = rest.partition(":")
        if prefix != PREFIX or not _KEY_ID.fullmatch(key_id) or int(key_id) > MAX_KEY_ID:
            raise KeyringError("not an unlocker field token")
        try:
            raw = base64.b64decode(body, validate=True)
        except ValueError:  # binascii.Error, or a character that is not ASCII
            raise KeyringError("malformed token") from None
        if base64.b64encode(raw).decode() != body:
            raise KeyringError("malformed token (non-canonical base64)")
        return self.decrypt_bytes(int(key_id).to_bytes(4, "big") + raw, aad)


def _key_id(value: object) -> int:
    """A key id as the json format writes it: an integer 1..2^31-1 (not a bool, float or string)."""
    if type(value) is not int or not 1 <= value <= MAX_KEY_ID:
        raise ValueError("bad key id")
    return value
