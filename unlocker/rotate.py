"""Rotations: change a secret or roll keys, crash-safe, then hand the new generation to a running broker.

Each rotation holds the keystore lock from start to end, so a second rotation fails at once instead of
interleaving. A passphrase rotation writes twice (new slot added, then moved into the old slot's place),
so a crash in between leaves both passphrases working and never neither. After any rotation of a secret
the backup generation is replaced by the new one: the old secret must not keep opening a copy on disk.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from unlocker import audit, changes, control, storage
from unlocker.errors import InvalidInput, UnlockerError
from unlocker.keystore import Keystore
from unlocker.memory import wipe
from unlocker.slots import EnrollOptions, Secrets, slot_type
from unlocker.unlock import Unlocked

ROTATABLE = ("passphrase", "tpm2+passphrase")


def who() -> str:
    """The administrator behind this command, for the audit record."""
    return os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name


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


def notify_broker(store_key: bytearray | None = None) -> str:
    """Have a running broker take the new generation. Returns what happened, for the administrator."""
    try:
        # After `rotate kek` the broker's own store key no longer opens the file: hand it the new one.
        reply = control.request("reload", timeout=30, secret=store_key)
    except control.BrokerUnavailable:
        return "no broker running: the next boot uses the new keys"
    except UnlockerError as e:
        return f"the running broker did not take the new keys ({e}); restart unlocker.service"
    if reply.get("state") == "locked":
        return "the broker is locked: it will use the new keys when unlocked"
    return f"the running broker now serves generation {reply.get('generation')}"


def record(what: str, before: Keystore, after: Keystore) -> None:
    audit.rotated(what, before.generation, after.generation, by=who())
