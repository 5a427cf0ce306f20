"""`passphrase` slot: slot key = HKDF(Argon2id(passphrase, salt), keystore id, label)."""

from __future__ import annotations

import os

from unlocker.keystore import kdf
from unlocker.keystore.fileformat import Slot, b64decode, b64encode, format_argon2, parse_argon2
from unlocker.keystore.slots import EnrollOptions, Params, Secrets, SlotType
from unlocker.memory import wipe


class PassphraseSlot(SlotType):
    name = "passphrase"
    needs_passphrase = True

    def derive(self, slot: Slot, secrets: Secrets, keystore_id: bytes) -> bytearray:
        assert secrets.passphrase is not None
        params = parse_argon2(slot.param("argon2id"))
        stretched = kdf.argon2id(secrets.passphrase, b64decode(slot.param("salt")), params, 32)
        try:
            return kdf.hkdf(stretched, keystore_id, self.label())
        finally:
            wipe(stretched)

    def create(self, secrets: Secrets, keystore_id: bytes, options: EnrollOptions) -> tuple[Params, bytearray]:
        params: Params = (
            ("argon2id", format_argon2(options.argon2_params())),
            ("salt", b64encode(os.urandom(kdf.SALT_BYTES))),
        )
        probe = Slot(0, self.name, params, b"", b"")
        return params, self.derive(probe, secrets, keystore_id)
