"""Opening a parsed keystore: find a slot that opens, check the header MAC, unwrap DEKs. Pure crypto
on values; reading the file is storage.py's job.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from unlocker.clevis.jose import JoseError
from unlocker.errors import InvalidInput, KdfCostRefused, NetworkUnlockFailed, TpmError, TpmLockout, WrongSecret
from unlocker.keystore import aead, kdf
from unlocker.keystore.fileformat import KEY_BYTES, Dek, FormatError, Keystore, Slot
from unlocker.keystore.slots import Secrets, slot_type
from unlocker.memory import wipe

SLOT_AAD = b"unlocker/v1 slot\n"
DEK_AAD = b"unlocker/v1 dek\n"
MAC_LABEL = b"unlocker/v1 header mac"
DEK_WRAP_LABEL = b"unlocker/v1 dek wrap"


def slot_aad(keystore_id: bytes, slot: Slot) -> bytes:
    return SLOT_AAD + keystore_id + slot.header().encode("ascii")


def dek_aad(keystore_id: bytes, dek: Dek) -> bytes:
    return DEK_AAD + keystore_id + dek.header().encode("ascii")


def header_mac(keystore: Keystore, store_key: bytearray) -> bytes:
    mac_key = kdf.hkdf(store_key, keystore.id, MAC_LABEL)
    try:
        return hmac.new(mac_key, keystore.authenticated_bytes(), hashlib.sha256).digest()
    finally:
        wipe(mac_key)


@dataclass
class Unlocked:
    """An opened keystore. Holds the store key until close(); DEKs are unwrapped on demand."""

    keystore: Keystore
    store_key: bytearray
    slot_index: int  # the slot that opened; proves that this slot works

    def dek(self, dek_id: int) -> bytearray:
        """The DEK with this id, in a new bytearray the caller wipes."""
        dek = next(d for d in self.keystore.deks if d.id == dek_id)
        wrap_key = kdf.hkdf(self.store_key, self.keystore.id, DEK_WRAP_LABEL)
        out = bytearray(KEY_BYTES)
        try:
            aead.open_into(wrap_key, dek.nonce, dek.wrapped_key, dek_aad(self.keystore.id, dek), out)
        except WrongSecret:
            # The header MAC was fine, so this is not damage anyone could make by accident.
            raise FormatError(f"dek {dek_id} fails authentication") from None
        finally:
            wipe(wrap_key)
        return out

    def close(self) -> None:
        wipe(self.store_key)


def _try_slot(keystore: Keystore, slot: Slot, secrets: Secrets) -> bytearray:
    slot_key = slot_type(slot.type).derive(slot, secrets, keystore.id)
    store_key = bytearray(KEY_BYTES)
    try:
        aead.open_into(slot_key, slot.nonce, slot.wrapped_key, slot_aad(keystore.id, slot), store_key)
    finally:
        wipe(slot_key)
    return store_key


def open_keystore(keystore: Keystore, secrets: Secrets, only_slot: int | None = None) -> Unlocked:
    """Try each slot that takes these secrets, in order, until one opens; then authenticate the whole
    header. Raises WrongSecret when none opens, the first TPM or network error when such a slot failed for
    a reason other than the passphrase (so "PCRs changed" or "Tang refused" is not reported as "wrong
    passphrase"), TpmLockout at once (trying further TPM slots would only burn attempts), KdfCostRefused
    when the only slots that could open ask for more Argon2id memory or work than this machine spends,
    FormatError when the header MAC fails.
    """
    if only_slot is not None and any(d.index == only_slot for d in keystore.damaged):
        raise FormatError(f"slot {only_slot} is damaged")
    candidates = [
        s for s in keystore.slots
        if (only_slot is None or s.index == only_slot) and slot_type(s.type).accepts(secrets)
    ]
    # A recovery key goes to recovery slots first; a secret shaped like one may still be a passphrase,
    # so passphrase slots come next, but never TPM slots when a recovery slot took it: a recovery key
    # that does not fit must not cost a try at a TPM's dictionary-attack counter. Slots that cost nothing
    # to try go before TPM slots for the same reason, and before network slots, which cost a round trip.
    if any(s.type == "recovery" for s in candidates):
        candidates = [s for s in candidates if not slot_type(s.type).needs_tpm]
    candidates.sort(key=lambda s: (s.type != "recovery", slot_type(s.type).needs_tpm,
                                   slot_type(s.type).needs_network, s.index))
    if not candidates:
        if keystore.damaged:
            raise FormatError(f"no intact slot takes what was supplied, and slot(s) {damaged_list(keystore)} "
                              "are damaged (the secret may belong to one of them)")
        which = f"slot {only_slot}" if only_slot is not None else "no slot"
        raise InvalidInput(f"{which} of this keystore can be opened with what was supplied")
    device_error: TpmError | NetworkUnlockFailed | JoseError | None = None
    cost_error: KdfCostRefused | None = None
    mistyped: InvalidInput | None = None
    for slot in candidates:
        try:
            store_key = _try_slot(keystore, slot, secrets)
        except WrongSecret:
            continue
        except KdfCostRefused as e:
            # Costs are read before the MAC can be checked: a forged slot costs only that slot.
            cost_error = cost_error or KdfCostRefused(f"slot {slot.index}: {e}")
            continue
        except InvalidInput as e:
            if slot.type != "recovery":
                raise
            mistyped = e  # shaped like a recovery key with a bad checksum: maybe a passphrase
            continue
        except TpmLockout:
            raise
        except (TpmError, NetworkUnlockFailed, JoseError) as e:
            device_error = device_error or e
            continue
        if not hmac.compare_digest(header_mac(keystore, store_key), keystore.mac):
            wipe(store_key)
            raise FormatError("header authentication failed: the file was modified")
        return Unlocked(keystore, store_key, slot.index)
    if device_error is not None:
        raise device_error
    if cost_error is not None:
        raise cost_error
    if mistyped is not None:
        raise mistyped
    if keystore.damaged:
        raise FormatError(
            f"no intact slot opened, and slot(s) {damaged_list(keystore)} are damaged "
            "(the secret may belong to one of them)"
        )
    raise WrongSecret()


def unattended_slots(keystore: Keystore) -> list[Slot]:
    """The slots that open with no person present (tpm2, clevis, clevis+tpm2), in index order."""
    return [s for s in keystore.slots if not slot_type(s.type).needs_passphrase]


def open_unattended(keystore: Keystore, secrets: Secrets) -> tuple[Unlocked | None, list[tuple[Slot, str]]]:
    """Try each unattended slot on its own; the first that opens wins. Returns it (or None) and, for each
    slot tried that did not open, why (its TPM error, each Tang server's failure, or "wrong secret").
    TpmLockout still ends the attempt at once."""
    reasons: list[tuple[Slot, str]] = []
    for slot in unattended_slots(keystore):
        if not slot_type(slot.type).accepts(secrets):
            reasons.append((slot, "not tried: " + ("no TPM found" if secrets.tcti is None else "no network")))
            continue
        try:
            return open_keystore(keystore, secrets, only_slot=slot.index), reasons
        except TpmLockout:
            raise
        except (WrongSecret, TpmError, NetworkUnlockFailed, JoseError) as e:
            reasons.append((slot, str(e)))
    return None, reasons


def damaged_list(keystore: Keystore) -> str:
    return ", ".join(str(d.index) for d in keystore.damaged)


def with_store_key(keystore: Keystore, store_key: bytearray) -> Unlocked:
    """Open a keystore with a store key already held (the broker's, after a rotation on disk).
    Raises FormatError when the MAC does not verify: the file was changed by someone without that key,
    or the store key itself was rotated."""
    if not hmac.compare_digest(header_mac(keystore, store_key), keystore.mac):
        raise FormatError("header authentication failed with the store key held in memory")
    return Unlocked(keystore, bytearray(store_key), slot_index=-1)
