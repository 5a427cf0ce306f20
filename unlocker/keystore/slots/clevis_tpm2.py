"""`clevis+tpm2` slot: slot key = HKDF(S || S_tpm). S comes from the clevis JWE (the network), S_tpm is
sealed to this TPM under the PCR policy: the network AND this machine in its measured state, what clevis
users build with a nested sss of tpm2 and tang (clevis#365). Kept apart from clevis.py so that a plain
clevis unlock never loads the TPM stack.
"""

from __future__ import annotations

import os

from unlocker.keystore import kdf
from unlocker.keystore.fileformat import Slot
from unlocker.keystore.slots import EnrollOptions, Params, Secrets, SlotType
from unlocker.keystore.slots.clevis import SECRET_BYTES, bind, joined, network_secret
from unlocker.keystore.slots.tpm2 import sealed_from, sealed_params
from unlocker.memory import wipe
from unlocker.tpm import esapi


class ClevisTpm2Slot(SlotType):
    name = "clevis+tpm2"
    needs_passphrase = False
    needs_tpm = True
    needs_network = True

    def _slot_key(self, secret: bytearray, share: bytearray, keystore_id: bytes) -> bytearray:
        ikm = joined(secret, share)
        try:
            return kdf.hkdf(ikm, keystore_id, self.label())
        finally:
            wipe(ikm)

    def derive(self, slot: Slot, secrets: Secrets, keystore_id: bytes) -> bytearray:
        assert secrets.tcti is not None
        share = bytearray(SECRET_BYTES)
        secret = None
        try:
            # The TPM first: it is local and fast, and a machine in the wrong state need not ask the network.
            esapi.unseal(secrets.tcti, sealed_from(slot, with_auth=False), None, share)
            secret = network_secret(slot, secrets)
            return self._slot_key(secret, share, keystore_id)
        finally:
            wipe(share, secret)

    def create(self, secrets: Secrets, keystore_id: bytes, options: EnrollOptions) -> tuple[Params, bytearray]:
        assert secrets.tcti is not None
        share, secret = bytearray(os.urandom(SECRET_BYTES)), bytearray(os.urandom(SECRET_BYTES))
        try:
            jwe = bind(options, secrets, secret)
            sealed = esapi.seal(secrets.tcti, share, None, options.pcrs, options.bank)
            return (*sealed_params(sealed), ("jwe", jwe)), self._slot_key(secret, share, keystore_id)
        finally:
            wipe(share, secret)
