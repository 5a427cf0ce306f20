"""TPM2 slots.

`tpm2+passphrase`: Argon2id(passphrase) = K1 || K2. A random share S is sealed in the TPM with K2 as its
authValue under PolicyAuthValue + PolicyPCR; slot key = HKDF(K1 || S). Neither the passphrase without
this TPM nor the TPM without the passphrase opens the slot, and every wrong guess is counted by the TPM's
dictionary-attack protection (the sealed object is not noDA).

`tpm2`: S sealed under PolicyPCR only; slot key = HKDF(S). For machines that must boot unattended: anyone
who can boot this machine into the same PCR state gets the key.
"""

from __future__ import annotations

import os

from unlocker.keystore import kdf
from unlocker.keystore.fileformat import (
    Slot,
    b64decode,
    b64encode,
    format_argon2,
    format_pcrs,
    parse_argon2,
    parse_pcrs,
)
from unlocker.keystore.slots import EnrollOptions, Params, Secrets, SlotType
from unlocker.memory import wipe
from unlocker.tpm import esapi

SHARE_BYTES = 32


def sealed_from(slot: Slot, with_auth: bool) -> esapi.Sealed:
    return esapi.Sealed(
        public=b64decode(slot.param("public")),
        private=b64decode(slot.param("private")),
        pcrs=parse_pcrs(slot.param("pcrs")),
        bank=slot.param("bank"),
        with_auth=with_auth,
        parent_name=b64decode(slot.param("parent")),
    )


def sealed_params(sealed: esapi.Sealed) -> Params:
    return (
        ("pcrs", format_pcrs(sealed.pcrs)),
        ("bank", sealed.bank),
        ("parent", b64encode(sealed.parent_name)),
        ("public", b64encode(sealed.public)),
        ("private", b64encode(sealed.private)),
    )


def sealed_to_current_pcrs(slot: Slot, tcti: str) -> bool:
    """Whether the TPM would unseal this slot's share today as far as the PCRs go (the passphrase aside):
    `unlocker doctor` catches a changed firmware or boot chain before a boot finds out. Raises TpmError."""
    return esapi.policy_matches(tcti, sealed_from(slot, with_auth=slot.type == Tpm2PassphraseSlot.name))


class Tpm2Slot(SlotType):
    name = "tpm2"
    needs_passphrase = False
    needs_tpm = True

    def derive(self, slot: Slot, secrets: Secrets, keystore_id: bytes) -> bytearray:
        assert secrets.tcti is not None
        share = bytearray(SHARE_BYTES)
        try:
            esapi.unseal(secrets.tcti, sealed_from(slot, with_auth=False), None, share)
            return kdf.hkdf(share, keystore_id, self.label())
        finally:
            wipe(share)

    def create(self, secrets: Secrets, keystore_id: bytes, options: EnrollOptions) -> tuple[Params, bytearray]:
        assert secrets.tcti is not None
        share = bytearray(os.urandom(SHARE_BYTES))
        try:
            sealed = esapi.seal(secrets.tcti, share, None, options.pcrs, options.bank)
            return sealed_params(sealed), kdf.hkdf(share, keystore_id, self.label())
        finally:
            wipe(share)


class Tpm2PassphraseSlot(SlotType):
    name = "tpm2+passphrase"
    needs_passphrase = True
    needs_tpm = True

    def _stretch(self, secrets: Secrets, salt: bytes, params: kdf.Argon2Params) -> bytearray:
        assert secrets.passphrase is not None
        return kdf.argon2id(secrets.passphrase, salt, params, 64)  # K1 || K2

    def _slot_key(self, stretched: bytearray, share: bytearray, keystore_id: bytes) -> bytearray:
        # Assembled in place: slicing would leave unwiped copies behind.
        ikm = bytearray(64)
        ikm[:32] = memoryview(stretched)[:32]
        ikm[32:] = share
        try:
            return kdf.hkdf(ikm, keystore_id, self.label())
        finally:
            wipe(ikm)

    def derive(self, slot: Slot, secrets: Secrets, keystore_id: bytes) -> bytearray:
        assert secrets.tcti is not None
        params = parse_argon2(slot.param("argon2id"))
        stretched = self._stretch(secrets, b64decode(slot.param("salt")), params)
        share = bytearray(SHARE_BYTES)
        auth = stretched[32:]
        try:
            esapi.unseal(secrets.tcti, sealed_from(slot, with_auth=True), auth, share)
            return self._slot_key(stretched, share, keystore_id)
        finally:
            wipe(stretched, share, auth)

    def create(self, secrets: Secrets, keystore_id: bytes, options: EnrollOptions) -> tuple[Params, bytearray]:
        assert secrets.tcti is not None
        argon2, salt = options.argon2_params(), os.urandom(kdf.SALT_BYTES)
        stretched = self._stretch(secrets, salt, argon2)
        share = bytearray(os.urandom(SHARE_BYTES))
        auth = stretched[32:]
        try:
            sealed = esapi.seal(secrets.tcti, share, auth, options.pcrs, options.bank)
            params: Params = (
                ("argon2id", format_argon2(argon2)),
                ("salt", b64encode(salt)),
                *sealed_params(sealed),
            )
            return params, self._slot_key(stretched, share, keystore_id)
        finally:
            wipe(stretched, share, auth)
