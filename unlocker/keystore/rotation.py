"""Changing a slot's passphrase in place, crash-safe.

Each rotation holds the keystore lock from start to end, so a second rotation fails at once instead of
interleaving. A passphrase rotation writes twice (new slot added, then moved into the old slot's place),
so a crash in between leaves both passphrases working and never neither. After any rotation of a secret
the backup generation is replaced by the new one: the old secret must not keep opening a copy on disk.
"""

from __future__ import annotations

from pathlib import Path

from unlocker.errors import InvalidInput
from unlocker.keystore import changes, storage
from unlocker.keystore.fileformat import Keystore
from unlocker.keystore.slots import EnrollOptions, Secrets, slot_type
from unlocker.keystore.unlock import Unlocked
from unlocker.memory import wipe

ROTATABLE = ("passphrase", "tpm2+passphrase")


def passphrase(path: Path, opened: Unlocked, new: Secrets, options: EnrollOptions) -> Keystore:
    """Give the slot that opened `opened` a new passphrase, at the same index. Caller holds the lock."""
    keystore, index = opened.keystore, opened.slot_index
    old = keystore.slot(index)
    if old.type not in ROTATABLE:
        raise InvalidInput(f"slot {index} is a {old.type} slot, which has no passphrase to change")
    params, slot_key = slot_type(old.type).create(new, keystore.id, options)
    try:
        # Step 1: the new passphrase in a slot of its own, beside the old one.
        spare = keystore.free_slot_index()
        added = changes.finish(keystore.with_slots((*keystore.slots, changes.wrap_slot(
            keystore.id, opened.store_key, spare, old.type, params, slot_key))), opened.store_key)
        storage.write(path, added, keystore.generation, lock=False)
        # Step 2: the new slot takes the old one's index; the old passphrase is gone.
        others = tuple(s for s in keystore.slots if s.index != index)
        moved = changes.wrap_slot(keystore.id, opened.store_key, index, old.type, params, slot_key)
        final = changes.finish(added.with_slots((*others, moved)), opened.store_key)
        storage.write(path, final, added.generation, lock=False, rotate_backup=True)
    finally:
        wipe(slot_key)
    return final
