"""Changing a keystore: create one, add and remove slots. Every function takes an opened keystore (or
makes a new one) and returns a new, MAC'ed Keystore value with the generation advanced; writing it to
disk is storage.py's job, so a failed step never leaves a half-changed file.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

from unlocker.errors import InvalidInput
from unlocker.keystore import aead, kdf
from unlocker.keystore.fileformat import KEY_BYTES, KEYSTORE_ID_BYTES, MAX_SLOTS, Dek, Keystore, Slot
from unlocker.keystore.slots import EnrollOptions, Params, Secrets, slot_type
from unlocker.keystore.unlock import DEK_WRAP_LABEL, Unlocked, dek_aad, header_mac, slot_aad
from unlocker.memory import wipe


def finish(keystore: Keystore, store_key: bytearray) -> Keystore:
    """Advance the generation and compute the header MAC."""
    advanced = replace(keystore, generation=keystore.generation + 1, mac=b"")
    return replace(advanced, mac=header_mac(advanced, store_key))


def _wrap_dek(keystore_id: bytes, store_key: bytearray, dek_id: int, key: bytearray,
              template: Dek | None = None) -> Dek:
    template = template or Dek(dek_id, "primary", int(time.time()), b"", b"")
    wrap_key = kdf.hkdf(store_key, keystore_id, DEK_WRAP_LABEL)
    try:
        nonce, wrapped = aead.seal(wrap_key, key, dek_aad(keystore_id, template))
    finally:
        wipe(wrap_key)
    return replace(template, nonce=nonce, wrapped_key=wrapped)


def wrap_slot(keystore_id: bytes, store_key: bytearray, index: int, type_name: str, params: Params,
              slot_key: bytearray) -> Slot:
    """A slot line: the store key wrapped under slot_key, bound to the slot's index, type and params."""
    template = Slot(index, type_name, params, b"", b"")
    nonce, wrapped = aead.seal(slot_key, store_key, slot_aad(keystore_id, template))
    return replace(template, nonce=nonce, wrapped_key=wrapped)


def _new_slot(keystore: Keystore, store_key: bytearray, index: int, type_name: str,
              secrets: Secrets, options: EnrollOptions) -> Slot:
    params, slot_key = slot_type(type_name).create(secrets, keystore.id, options)
    try:
        return wrap_slot(keystore.id, store_key, index, type_name, params, slot_key)
    finally:
        wipe(slot_key)


def create(type_name: str, secrets: Secrets, options: EnrollOptions) -> Unlocked:
    """A new keystore with a random store key, DEK version 1, and one slot."""
    store_key = bytearray(os.urandom(KEY_BYTES))
    dek = bytearray(os.urandom(KEY_BYTES))
    keystore_id = os.urandom(KEYSTORE_ID_BYTES)
    try:
        empty = Keystore(keystore_id, 0, (), (_wrap_dek(keystore_id, store_key, 1, dek),))
    finally:
        wipe(dek)
    slot = _new_slot(empty, store_key, 0, type_name, secrets, options)
    return Unlocked(finish(empty.with_slots((slot,)), store_key), store_key, slot_index=0)


def add_slot(opened: Unlocked, type_name: str, secrets: Secrets, options: EnrollOptions) -> Keystore:
    keystore = opened.keystore
    if len(keystore.slots) >= MAX_SLOTS:
        raise InvalidInput(f"the keystore already has {MAX_SLOTS} slots; wipe one first")
    slot = _new_slot(keystore, opened.store_key, keystore.free_slot_index(), type_name, secrets, options)
    return finish(keystore.with_slots((*keystore.slots, slot)), opened.store_key)


def remove_slot(opened: Unlocked, index: int) -> Keystore:
    """Remove a slot. Refused when it would leave no slot proven to work: the slot that opened the
    keystore for this call must be another one."""
    keystore = opened.keystore
    if any(d.index == index for d in keystore.damaged):
        remaining_damaged = tuple(d for d in keystore.damaged if d.index != index)
        return finish(keystore.with_slots(keystore.slots, remaining_damaged), opened.store_key)
    if index not in {s.index for s in keystore.slots}:
        raise InvalidInput(f"there is no slot {index}")
    if index == opened.slot_index:
        others = len(keystore.slots) - 1
        raise InvalidInput(
            f"refusing to wipe slot {index}: it is the slot you unlocked with"
            + (f"; unlock with one of the other {others} slot(s) to prove it works" if others else
               ", and the last one; the keystore would never open again")
        )
    remaining = tuple(s for s in keystore.slots if s.index != index)
    return finish(keystore.with_slots(remaining), opened.store_key)


def replace_slot(opened: Unlocked, index: int, type_name: str, secrets: Secrets, options: EnrollOptions) -> Keystore:
    """A new slot of the given type at the same index, replacing the old one in one atomic write (so a
    crash leaves the old slot or the new one, never neither)."""
    keystore = opened.keystore
    if index not in {s.index for s in keystore.slots}:
        raise InvalidInput(f"there is no slot {index}")
    slot = _new_slot(keystore, opened.store_key, index, type_name, secrets, options)
    others = tuple(s for s in keystore.slots if s.index != index)
    return finish(keystore.with_slots((*others, slot)), opened.store_key)


def add_dek(opened: Unlocked) -> Keystore:
    """A new random DEK version becomes primary; the old primary stays available as `active`."""
    keystore = opened.keystore
    new_id = max(d.id for d in keystore.deks) + 1
    key = bytearray(os.urandom(KEY_BYTES))
    try:
        new = _wrap_dek(keystore.id, opened.store_key, new_id, key)
    finally:
        wipe(key)
    demoted = tuple(replace(d, state="active") if d.state == "primary" else d for d in keystore.deks)
    return finish(keystore.with_deks((*demoted, new)), opened.store_key)


def retire_dek(opened: Unlocked, dek_id: int) -> Keystore:
    """Stop delivering a DEK version; it stays in the keystore until purged."""
    dek = _dek(opened.keystore, dek_id)
    if dek.state == "primary":
        raise InvalidInput(f"DEK {dek_id} is the primary; run 'unlocker rotate dek' first")
    if dek.state == "retired":
        raise InvalidInput(f"DEK {dek_id} is already retired")
    deks = tuple(replace(d, state="retired") if d.id == dek_id else d for d in opened.keystore.deks)
    return finish(opened.keystore.with_deks(deks), opened.store_key)


def purge_dek(opened: Unlocked, dek_id: int) -> Keystore:
    """Destroy a retired DEK version for good."""
    if _dek(opened.keystore, dek_id).state != "retired":
        raise InvalidInput(f"DEK {dek_id} is not retired; retire it first ('unlocker retire {dek_id}')")
    deks = tuple(d for d in opened.keystore.deks if d.id != dek_id)
    return finish(opened.keystore.with_deks(deks), opened.store_key)


def _dek(keystore: Keystore, dek_id: int) -> Dek:
    for d in keystore.deks:
        if d.id == dek_id:
            return d
    raise InvalidInput(f"there is no DEK {dek_id}")


def new_store_key(opened: Unlocked, slots: dict[int, Secrets], options: EnrollOptions) -> Unlocked:
    """Re-key: a new store key, every DEK re-wrapped under it, and every slot in `slots` re-created at its
    index with the secrets given. Slots not in `slots` are dropped (the caller decides, and asks)."""
    keystore = opened.keystore
    store_key = bytearray(os.urandom(KEY_BYTES))
    deks = []
    for d in keystore.deks:
        key = opened.dek(d.id)
        try:  # same id, state and timestamp (the timestamp is in the AAD), new wrapping
            deks.append(_wrap_dek(keystore.id, store_key, d.id, key, replace(d, nonce=b"", wrapped_key=b"")))
        finally:
            wipe(key)
    new_slots = tuple(
        _new_slot(keystore, store_key, s.index, s.type, slots[s.index], options)
        for s in keystore.slots if s.index in slots
    )
    if not new_slots:
        wipe(store_key)
        raise InvalidInput("no slot would be left; the keystore would never open again")
    rekeyed = replace(keystore, slots=new_slots, deks=tuple(deks), damaged=(), mac=b"")
    return Unlocked(finish(rekeyed, store_key), store_key, slot_index=new_slots[0].index)
