"""Network-bound slots: the slot stores a standard clevis JWE (tang pin, or sss over tang pins) of a
random 32-byte secret S. `clevis decrypt` opens that JWE, and so does unlocker, natively, with timeouts.

`clevis`: slot key = HKDF(S). Unattended: whoever holds the keystore and reaches enough Tang servers
unlocks it. That is the premise of Tang; the network must be one only this machine's peers reach.
`clevis+passphrase`: slot key = HKDF(Argon2id(passphrase) || S): the network AND a person.
`clevis+tpm2` (clevis_tpm2.py): the network AND this machine's TPM.
"""

from __future__ import annotations

import os

from unlocker.clevis import pins
from unlocker.errors import InvalidInput, NetworkUnlockFailed
from unlocker.keystore import kdf
from unlocker.keystore.fileformat import Slot, b64decode, b64encode, format_argon2, parse_argon2
from unlocker.keystore.slots import EnrollOptions, Params, Secrets, SlotType
from unlocker.memory import wipe

SECRET_BYTES = 32


def network_secret(slot: Slot, secrets: Secrets) -> bytearray:
    """S from the slot's JWE. Raises NetworkUnlockFailed (naming each server), WrongSecret (tampered)."""
    assert secrets.network is not None
    secret = pins.decrypt(slot.param("jwe"), secrets.network)
    if len(secret) != SECRET_BYTES:
        wipe(secret)
        raise NetworkUnlockFailed("the JWE does not hold a 32-byte slot secret", [])
    return secret


def bind(options: EnrollOptions, secrets: Secrets, secret: bytearray) -> str:
    """A new JWE of `secret` for the pin and configuration the administrator gave."""
    pin, config = options.extra.get("pin"), options.extra.get("config")
    if not pin or config is None:
        raise InvalidInput("a clevis slot needs a PIN and a CONFIG: unlocker enroll clevis tang '{\"url\": ...}'")
    assert secrets.network is not None
    return pins.encrypt(pin, pins.parse_config(config), secret, secrets.network)


def joined(first: bytearray, second: bytearray) -> bytearray:
    ikm = bytearray(len(first) + len(second))
    ikm[: len(first)] = first
    ikm[len(first):] = second
    return ikm


class ClevisSlot(SlotType):
    name = "clevis"
    needs_passphrase = False
    needs_network = True

    def derive(self, slot: Slot, secrets: Secrets, keystore_id: bytes) -> bytearray:
        secret = network_secret(slot, secrets)
        try:
            return kdf.hkdf(secret, keystore_id, self.label())
        finally:
            wipe(secret)

    def create(self, secrets: Secrets, keystore_id: bytes, options: EnrollOptions) -> tuple[Params, bytearray]:
        secret = bytearray(os.urandom(SECRET_BYTES))
        try:
            return (("jwe", bind(options, secrets, secret)),), kdf.hkdf(secret, keystore_id, self.label())
        finally:
            wipe(secret)


class ClevisPassphraseSlot(SlotType):
    name = "clevis+passphrase"
    needs_passphrase = True
    needs_network = True

    def _slot_key(self, secrets: Secrets, salt: bytes, params: kdf.Argon2Params, secret: bytearray,
                  keystore_id: bytes) -> bytearray:
        assert secrets.passphrase is not None
        k1 = kdf.argon2id(secrets.passphrase, salt, params, 32)
        ikm = joined(k1, secret)
        try:
            return kdf.hkdf(ikm, keystore_id, self.label())
        finally:
            wipe(k1, ikm)

    def derive(self, slot: Slot, secrets: Secrets, keystore_id: bytes) -> bytearray:
        secret = network_secret(slot, secrets)
        try:
            return self._slot_key(secrets, b64decode(slot.param("salt")), parse_argon2(slot.param("argon2id")),
                                  secret, keystore_id)
        finally:
            wipe(secret)

    def create(self, secrets: Secrets, keystore_id: bytes, options: EnrollOptions) -> tuple[Params, bytearray]:
        argon2, salt = options.argon2_params(), os.urandom(kdf.SALT_BYTES)
        secret = bytearray(os.urandom(SECRET_BYTES))
        try:
            params: Params = (("argon2id", format_argon2(argon2)), ("salt", b64encode(salt)),
                              ("jwe", bind(options, secrets, secret)))
            return params, self._slot_key(secrets, salt, argon2, secret, keystore_id)
        finally:
            wipe(secret)
