"""Opening keystores and changing slots, in-process through the library."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from conftest import FAST

from unlocker.errors import InvalidInput, KdfCostRefused, WrongSecret
from unlocker.keystore import changes, kdf, storage
from unlocker.keystore.fileformat import FormatError, parse
from unlocker.keystore.slots import Secrets, recovery
from unlocker.keystore.unlock import open_keystore


def test_each_slot_opens_to_the_same_dek(two_slot_keystore):
    path, first, second = two_slot_keystore
    keystore = storage.read(path)
    a = open_keystore(keystore, Secrets(bytearray(first)))
    b = open_keystore(keystore, Secrets(bytearray(second)))
    assert (a.slot_index, b.slot_index) == (0, 1)
    assert a.dek(1) == b.dek(1)
    assert len(a.dek(1)) == 32


def test_wrong_passphrase_is_one_generic_error(two_slot_keystore):
    path, _, _ = two_slot_keystore
    with pytest.raises(WrongSecret) as e:
        open_keystore(storage.read(path), Secrets(bytearray(b"not it")))
    assert str(e.value) == "no keyslot opened with that passphrase or key"


def test_only_slot_restricts_the_attempt(two_slot_keystore):
    path, first, _ = two_slot_keystore
    with pytest.raises(WrongSecret):
        open_keystore(storage.read(path), Secrets(bytearray(first)), only_slot=1)


def test_recovery_key_opens_and_tolerates_case_and_spacing():
    shown = recovery.format_key(recovery.generate())
    opened = changes.create("recovery", Secrets(bytearray(shown)), FAST)
    typed = bytearray(bytes(shown).upper().replace(b"-", b" "))
    again = open_keystore(opened.keystore, Secrets(typed))
    assert again.dek(1) == opened.dek(1)


def test_mistyped_recovery_key_is_caught_by_its_checksum():
    shown = recovery.format_key(recovery.generate())
    opened = changes.create("recovery", Secrets(bytearray(shown)), FAST)
    typo = bytearray(shown)
    typo[0] = ord("c") if typo[0] != ord("c") else ord("b")
    with pytest.raises(InvalidInput, match="mistyped"):
        open_keystore(opened.keystore, Secrets(typo))


def test_a_different_valid_recovery_key_is_a_wrong_secret():
    opened = changes.create("recovery", Secrets(recovery.format_key(recovery.generate())), FAST)
    with pytest.raises(WrongSecret):
        open_keystore(opened.keystore, Secrets(recovery.format_key(recovery.generate())))


def test_adding_a_slot_leaves_deks_untouched_and_advances_the_generation(two_slot_keystore):
    path, first, _ = two_slot_keystore
    before = storage.read(path)
    opened = open_keystore(before, Secrets(bytearray(first)))
    after = changes.add_slot(opened, "passphrase", Secrets(bytearray(b"third")), FAST)
    assert after.deks == before.deks
    assert after.slots[:2] == before.slots
    assert after.generation == before.generation + 1
    assert open_keystore(after, Secrets(bytearray(b"third"))).slot_index == 2


def test_wipe_slot_refuses_the_slot_that_unlocked(two_slot_keystore):
    path, first, _ = two_slot_keystore
    opened = open_keystore(storage.read(path), Secrets(bytearray(first)))
    with pytest.raises(InvalidInput, match="the slot you unlocked with"):
        changes.remove_slot(opened, 0)


def test_wipe_slot_refuses_the_last_slot():
    opened = changes.create("passphrase", Secrets(bytearray(b"only")), FAST)
    with pytest.raises(InvalidInput, match="never open again"):
        changes.remove_slot(opened, 0)


def test_wiped_slot_no_longer_opens(two_slot_keystore):
    path, first, second = two_slot_keystore
    opened = open_keystore(storage.read(path), Secrets(bytearray(second)))
    keystore = changes.remove_slot(opened, 0)
    with pytest.raises(WrongSecret):
        open_keystore(keystore, Secrets(bytearray(first)))


def test_damaged_slot_is_skipped_and_can_be_wiped(two_slot_keystore):
    path, first, second = two_slot_keystore
    data = bytearray(path.read_bytes())
    data[data.index(b"slot 0 ") + 40] ^= 0x01
    path.write_bytes(bytes(data))
    keystore = storage.read(path)
    assert [d.index for d in keystore.damaged] == [0]
    with pytest.raises(FormatError, match="damaged"):
        open_keystore(keystore, Secrets(bytearray(first)))
    opened = open_keystore(keystore, Secrets(bytearray(second)))
    repaired = changes.remove_slot(opened, 0)
    assert repaired.damaged == () and [s.index for s in repaired.slots] == [1]
    assert open_keystore(repaired, Secrets(bytearray(second))).dek(1) == opened.dek(1)


def _with_costs(keystore, index: int, costs: str):
    """The keystore with slot `index` asking for other Argon2id costs, as a forged file would."""
    slot = keystore.slot(index)
    params = tuple((k, costs if k == "argon2id" else v) for k, v in slot.params)
    forged = replace(slot, params=params)
    return keystore.with_slots(tuple(forged if s.index == index else s for s in keystore.slots))


def test_a_forged_hour_long_kdf_cost_is_refused_before_deriving(two_slot_keystore):
    path, first, second = two_slot_keystore
    # 4 GiB x 1000 passes is inside the format's bounds and ran for about an hour per try.
    keystore = _with_costs(storage.read(path), 0, "4194304,1000,4")
    start = time.monotonic()
    with pytest.raises(KdfCostRefused, match=r"slot 0: .*4096 MiB x 1000 passes.*refusing to derive"):
        open_keystore(keystore, Secrets(bytearray(first)))
    assert time.monotonic() - start < 5
    # The forged slot costs only itself: the other slot is tried, opens, and its MAC reveals the forgery.
    with pytest.raises(FormatError, match="header authentication failed"):
        open_keystore(keystore, Secrets(bytearray(second)))


def test_a_kdf_cost_beyond_half_the_ram_is_refused(two_slot_keystore, monkeypatch):
    path, first, _ = two_slot_keystore
    monkeypatch.setattr(kdf, "ram_kib", lambda: 64 * 1024)
    keystore = _with_costs(storage.read(path), 0, "65536,1,4")
    with pytest.raises(KdfCostRefused, match=r"slot 0: .*64 MiB, more than half of this machine's RAM \(32 MiB\)"):
        open_keystore(keystore, Secrets(bytearray(first)))


def _recovery_shaped_passphrase(valid_checksum: bool) -> bytearray:
    shown = recovery.format_key(recovery.generate())  # a valid key: of no slot of the keystore below
    if not valid_checksum:
        shown[0] = ord("c") if shown[0] != ord("c") else ord("b")
    return shown


@pytest.mark.parametrize("valid_checksum", [True, False])
def test_a_passphrase_shaped_like_a_recovery_key_opens_its_own_slot(valid_checksum):
    passphrase = _recovery_shaped_passphrase(valid_checksum)
    opened = changes.create("passphrase", Secrets(bytearray(passphrase)), FAST)
    shown = recovery.format_key(recovery.generate())
    keystore = changes.add_slot(opened, "recovery", Secrets(bytearray(shown)), FAST)
    assert open_keystore(keystore, Secrets(bytearray(passphrase))).slot_index == 0
    assert open_keystore(keystore, Secrets(bytearray(shown))).slot_index == 1


def test_a_mistyped_recovery_key_is_still_named_mistyped_when_passphrase_slots_exist():
    opened = changes.create("passphrase", Secrets(bytearray(b"a passphrase")), FAST)
    shown = recovery.format_key(recovery.generate())
    keystore = changes.add_slot(opened, "recovery", Secrets(bytearray(shown)), FAST)
    typo = bytearray(shown)
    typo[0] = ord("c") if typo[0] != ord("c") else ord("b")
    with pytest.raises(InvalidInput, match="mistyped"):
        open_keystore(keystore, Secrets(typo))


def test_when_the_typed_passphrases_own_slot_is_damaged_the_error_says_so():
    # A passphrase slot (damaged) and a recovery slot: the passphrase fits no intact slot at all.
    opened = changes.create("passphrase", Secrets(bytearray(b"a passphrase")), FAST)
    keystore = changes.add_slot(opened, "recovery", Secrets(recovery.format_key(recovery.generate())), FAST)
    data = bytearray(keystore.serialize())
    data[data.index(b"slot 0 ") + 40] ^= 0x01
    damaged = parse(bytes(data))
    with pytest.raises(FormatError, match=r"slot\(s\) 0 are damaged \(the secret may belong to one of them\)"):
        open_keystore(damaged, Secrets(bytearray(b"a passphrase")))
