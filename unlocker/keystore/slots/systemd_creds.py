"""`systemd-creds+passphrase` slot, for hosts that already use systemd credentials.

K1 = Argon2id(passphrase, salt). A random share S is kept as a systemd-creds credential encrypted with
--with-key=tpm2 (bound to PCR 7 by default); slot key = HKDF(K1 || S). The disk alone is not enough
(S needs this TPM) and the TPM alone is not enough (K1 needs the passphrase). The weakness, said plainly
in `unlocker slots` and docs/TPM.md: systemd-creds on systemd 252 takes no PIN, so the TPM does not see
the passphrase and does not count wrong guesses; only Argon2id slows them down.
"""

from __future__ import annotations

import os

from unlocker.keystore import kdf
from unlocker.keystore.fileformat import Slot, b64decode, b64encode, format_argon2, parse_argon2
from unlocker.keystore.slots import EnrollOptions, Params, Secrets, SlotType
from unlocker.memory import wipe
from unlocker.tpm import systemd_creds

CREDENTIAL_NAME = "unlocker-share"
SHARE_BYTES = 32


class SystemdCredsPassphraseSlot(SlotType):
    name = "systemd-creds+passphrase"
    needs_passphrase = True
    needs_tpm = True

    def _slot_key(self, passphrase: bytearray, salt: bytes, params: kdf.Argon2Params, share: bytearray,
                  keystore_id: bytes) -> bytearray:
        k1 = kdf.argon2id(passphrase, salt, params, 32)
        ikm = bytearray(64)
        ikm[:32], ikm[32:] = k1, share
        try:
            return kdf.hkdf(ikm, keystore_id, self.label())
        finally:
            wipe(k1, ikm)

    def derive(self, slot: Slot, secrets: Secrets, keystore_id: bytes) -> bytearray:
        assert secrets.passphrase is not None and secrets.tcti is not None
        share = bytearray(SHARE_BYTES)
        try:
            systemd_creds.decrypt(secrets.tcti, CREDENTIAL_NAME, b64decode(slot.param("credential")), share)
            return self._slot_key(secrets.passphrase, b64decode(slot.param("salt")),
                                  parse_argon2(slot.param("argon2id")), share, keystore_id)
        finally:
            wipe(share)

    def create(self, secrets: Secrets, keystore_id: bytes, options: EnrollOptions) -> tuple[Params, bytearray]:
        assert secrets.passphrase is not None and secrets.tcti is not None
        argon2, salt = options.argon2_params(), os.urandom(kdf.SALT_BYTES)
        share = bytearray(os.urandom(SHARE_BYTES))
        try:
            blob = systemd_creds.encrypt(secrets.tcti, CREDENTIAL_NAME, share, pcrs=options.pcrs)
            params: Params = (
                ("argon2id", format_argon2(argon2)),
                ("salt", b64encode(salt)),
                ("credential", b64encode(blob)),
            )
            return params, self._slot_key(secrets.passphrase, salt, argon2, share, keystore_id)
        finally:
            wipe(share)
