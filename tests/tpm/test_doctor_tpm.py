"""`unlocker doctor`'s TPM checks against a real swtpm: presence, lockout counter, PCR bank, and whether the
TPM slots are still sealed to the current PCR values, all without spending a dictionary-attack try."""

from __future__ import annotations

import pytest
from conftest import FAST

from unlocker.errors import WrongSecret
from unlocker.keystore import changes
from unlocker.keystore.fileformat import Keystore
from unlocker.keystore.slots import Secrets, recovery
from unlocker.keystore.unlock import open_keystore
from unlocker.service.doctor import tpm_checks
from unlocker.service.health import Check, Verdict

pytestmark = pytest.mark.tpm
PASS = b"doctor passphrase"


def keystore_with(tcti: str, *types: str) -> Keystore:
    """Slot 0 of the first type, then one slot of each further type."""
    secrets = {"tpm2": Secrets(None, tcti), "tpm2+passphrase": Secrets(bytearray(PASS), tcti),
               "recovery": Secrets(recovery.format_key(recovery.generate()))}
    opened = changes.create(types[0], secrets[types[0]], FAST)
    keystore = opened.keystore
    for t in types[1:]:
        keystore = changes.add_slot(opened, t, secrets[t], FAST)
        opened = open_keystore(keystore, Secrets(bytearray(PASS), tcti), only_slot=0)
    return keystore


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_a_healthy_tpm_passes_every_check(fresh_swtpm):
    keystore = keystore_with(fresh_swtpm.tcti, "tpm2+passphrase", "tpm2")
    checks = by_name(tpm_checks(keystore, fresh_swtpm.tcti))
    assert set(checks) == {"tpm", "tpm.lockout", "tpm.bank.sha256", "tpm.slot0", "tpm.slot1"}
    assert all(c.verdict == Verdict.ok for c in checks.values()), checks
    assert "PCRs 7" in checks["tpm.slot0"].message
    assert fresh_swtpm.loaded_handles() == []  # the primary and trial sessions were flushed (a raw swtpm)


def test_a_changed_pcr_is_caught_before_the_reboot_and_costs_no_try(fresh_swtpm):
    keystore = keystore_with(fresh_swtpm.tcti, "tpm2+passphrase", "tpm2")
    fresh_swtpm.extend_pcr(7, b"a firmware update")
    checks = by_name(tpm_checks(keystore, fresh_swtpm.tcti))
    for slot in ("tpm.slot0", "tpm.slot1"):
        assert checks[slot].verdict == Verdict.error
        assert checks[slot].fix.endswith("unlocker rotate tpm2")
    assert fresh_swtpm.da_state() == (0, False)  # compared, never unsealed: no authorization was tried
    assert checks["tpm.lockout"].verdict == Verdict.ok


def test_a_pcr_the_slot_is_not_bound_to_does_not_matter(fresh_swtpm):
    keystore = keystore_with(fresh_swtpm.tcti, "tpm2+passphrase")
    fresh_swtpm.extend_pcr(4, b"another boot loader")
    assert by_name(tpm_checks(keystore, fresh_swtpm.tcti))["tpm.slot0"].verdict == Verdict.ok


def test_failed_tries_warn_and_a_lockout_is_an_error(fresh_swtpm):
    keystore = keystore_with(fresh_swtpm.tcti, "tpm2+passphrase", "recovery")
    fresh_swtpm.set_da(max_tries=2)
    with pytest.raises(WrongSecret):
        open_keystore(keystore, Secrets(bytearray(b"wrong"), fresh_swtpm.tcti), only_slot=0)
    lockout = by_name(tpm_checks(keystore, fresh_swtpm.tcti))["tpm.lockout"]
    assert lockout.verdict == Verdict.warning and "counted 1 failed" in lockout.message
    with pytest.raises(WrongSecret):
        open_keystore(keystore, Secrets(bytearray(b"wrong again"), fresh_swtpm.tcti), only_slot=0)
    lockout = by_name(tpm_checks(keystore, fresh_swtpm.tcti))["tpm.lockout"]
    assert lockout.verdict == Verdict.error and "lockout" in lockout.message
    assert fresh_swtpm.da_state() == (2, True)  # the doctor itself added nothing


def test_a_cleared_tpm_shows_as_slots_that_no_longer_belong_to_it(fresh_swtpm):
    keystore = keystore_with(fresh_swtpm.tcti, "tpm2+passphrase", "recovery")
    fresh_swtpm.clear()
    # The policy digest depends only on the PCRs: the comparison alone would still say "match".
    checks = by_name(tpm_checks(keystore, fresh_swtpm.tcti))
    assert checks["tpm"].verdict == Verdict.ok
    assert checks["tpm.slot0"].verdict == Verdict.error
    assert "does not belong to the TPM" in checks["tpm.slot0"].message


def test_tpm_slots_without_a_tpm_are_an_error(fresh_swtpm):
    keystore = keystore_with(fresh_swtpm.tcti, "tpm2+passphrase", "recovery")
    tcti = fresh_swtpm.tcti
    fresh_swtpm.kill()
    (check,) = tpm_checks(keystore, tcti)
    assert check.name == "tpm" and check.verdict == Verdict.error and "slot(s) 0 need it" in check.message


def test_no_tpm_and_no_tpm_slot_is_fine():
    keystore = changes.create("passphrase", Secrets(bytearray(PASS)), FAST).keystore
    (check,) = tpm_checks(keystore, None)
    assert check.verdict == Verdict.ok
