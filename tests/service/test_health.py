"""The verdicts of `unlocker doctor`: facts in, ok / warning / error and a fix out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from unlocker.client.formats import Format
from unlocker.service import grants, health
from unlocker.service.health import Check, Verdict

W, E, OK = Verdict.warning, Verdict.error, Verdict.ok


def test_exit_code_is_the_worst_verdict():
    assert health.exit_code([]) == 0
    assert health.exit_code([health.ok("a", "fine")]) == 0
    assert health.exit_code([health.ok("a", "fine"), Check("b", W, "hm", "do x")]) == 1
    assert health.exit_code([Check("b", W, "hm", "x"), Check("c", E, "no", "y"), health.ok("a", "")]) == 2


@pytest.mark.parametrize(("load", "file_state", "verdict", "fix"), [
    ("loaded", "enabled", OK, ""),
    ("loaded", "disabled", E, "systemctl enable unlocker.service"),
    ("not-found", "unknown", E, "unlocker install"),
])
def test_unit_installed_and_enabled(load, file_state, verdict, fix):
    c = health.unit(load, file_state)
    assert (c.verdict, c.fix) == (verdict, fix)


@pytest.mark.parametrize(("mode", "uid", "verdict"), [
    (0o100600, 0, OK), (0o100400, 0, OK), (0o100640, 0, E), (0o100604, 0, E), (0o100600, 1000, E)])
def test_keystore_mode_and_owner(mode, uid, verdict):
    c = health.keystore_file("/k", True, mode, uid)
    assert c.verdict == verdict
    if verdict == E:
        assert c.fix == "chown root:root /k && chmod 0600 /k"
        assert f"{mode & 0o7777:04o}" in c.message


def test_missing_keystore_is_an_error_that_says_init():
    c = health.keystore_file("/k", False, None, None)
    assert c.verdict == E and c.fix.startswith("unlocker init")


def test_parse_failure_points_at_the_backup_and_damaged_slots_at_wipe_slot():
    assert health.keystore_parses("/k", "keystore /k is damaged: line 3", ()).fix.startswith("unlocker restore-backup")
    c = health.keystore_parses("/k", None, [2])
    assert c.verdict == W and c.fix.startswith("unlocker wipe-slot 2")
    assert health.keystore_parses("/k", None, []).verdict == OK


def test_backup():
    assert health.backup("/k.bak", True).verdict == OK
    assert health.backup("/k.bak", False).verdict == W


NEEDS_TPM = {"passphrase": False, "recovery": False, "tpm2": True, "tpm2+passphrase": True}


@pytest.mark.parametrize(("types", "verdict"), [
    (["tpm2+passphrase", "recovery"], OK),
    (["passphrase"], OK),
    (["tpm2+passphrase"], W),
    (["tpm2", "tpm2+passphrase"], W),
    ([], E),
])
def test_a_slot_that_opens_without_the_tpm(types, verdict):
    c = health.slots(types, NEEDS_TPM)
    assert c.verdict == verdict
    if verdict == W:
        assert c.fix.startswith("unlocker enroll recovery")


def test_no_tpm_is_fine_only_when_no_slot_needs_one():
    assert health.tpm_absent(None, [], None).verdict == OK
    c = health.tpm_absent("device:/dev/tpmrm0", [0], "no TPM answers")
    assert c.verdict == E and "slot(s) 0 need it" in c.message


def test_lockout_counter():
    assert health.tpm_lockout("t", 0, 3, 1000, False).verdict == OK
    assert health.tpm_lockout("t", 1, 3, 1000, False).verdict == W
    c = health.tpm_lockout("t", 3, 3, 1000, True)
    assert c.verdict == E and "recovery key" in c.fix


def test_pcr_mismatch_is_an_error_that_says_rotate_tpm2():
    assert health.tpm_slot_pcrs(0, (7,), True).verdict == OK
    c = health.tpm_slot_pcrs(0, (0, 7), False)
    assert c.verdict == E and "PCRs 0,7" in c.message and c.fix.endswith("unlocker rotate tpm2")
    assert health.tpm_slot_pcrs(1, (7,), None).verdict == OK  # systemd-creds keeps its policy to itself
    assert health.tpm_slot_pcrs(1, (7,), None, "the TPM rejects it").verdict == E


DROPIN = grants.dropin(grants.Grant("db.service", "dek", Format.raw))
GOOD = health.GrantFacts("db.service", "dek", "/etc/systemd/system/db.service.d/50-unlocker-dek.conf",
                         DROPIN, DROPIN, "loaded")


def test_a_grant_with_its_drop_in_and_unit():
    assert [c.verdict for c in health.grant(GOOD)] == [OK]


def test_a_grant_without_drop_in_is_an_error_and_a_changed_one_a_warning():
    (missing,) = health.grant(replace(GOOD, dropin_text=None))
    assert missing.verdict == E and missing.fix.startswith("unlocker grant db.service --credential dek")
    (changed,) = health.grant(replace(GOOD, dropin_text=DROPIN + "Environment=A=1\n"))
    assert changed.verdict == W


def test_a_drop_in_from_before_sealed_deliveries_is_an_error_because_the_unit_cannot_start():
    old = ("[Unit]\nWants=unlocker.service\nAfter=unlocker.service\n\n[Service]\n"
           "LoadCredential=dek:/run/unlocker/credentials.sock\nExecStartPre=/usr/bin/test -s %d/dek\n")
    (check,) = health.grant(replace(GOOD, dropin_text=old))
    assert check.verdict == E and "fails at CREDENTIALS" in check.message
    assert check.fix.startswith("unlocker grant db.service --credential dek")


def test_a_missing_host_secret_is_an_error_naming_its_fix():
    c = health.host_secret("systemd's credential secret /var/lib/systemd/credential.secret does not exist")
    assert c.verdict == E and c.fix == "systemd-creds setup"
    assert health.host_secret(None).verdict == OK


def test_a_grant_for_a_unit_that_does_not_exist():
    checks = health.grant(replace(GOOD, load_state="not-found"))
    assert [c.verdict for c in checks] == [OK, W]
    assert checks[1].fix.endswith("unlocker revoke db.service")


def test_a_drop_in_without_grant_is_an_error_because_the_unit_cannot_start():
    c = health.orphan_dropin("db.service", "dek", "/p")
    assert c.verdict == E and "rm /p && systemctl daemon-reload" in c.fix


def test_an_unreadable_grant_list_stops_every_delivery():
    assert health.grant_list("/g", "line 2: expected ...", 0).verdict == E
    assert health.grant_list("/g", None, 3).verdict == OK


@pytest.mark.parametrize(("kind", "kernel", "cmdline", "verdict", "fix"), [
    ("memfd_secret", "6.1.0-28-amd64", "", OK, ""),
    ("mlock", "6.1.0-28-amd64", "root=/dev/vda ro", W, "secretmem.enable=1"),
    ("mlock", "6.1.0-28-amd64", "root=/dev/vda secretmem.enable=1", W, "CONFIG_SECRETMEM"),
    ("mlock", "6.8.0", "", W, "CONFIG_SECRETMEM"),
    ("unlocked", "6.12.1", "", W, "CONFIG_SECRETMEM"),
])
def test_secret_memory(kind, kernel, cmdline, verdict, fix):
    c = health.secret_memory(kind, kernel, cmdline)
    assert c.verdict == verdict and fix in c.fix


PROMPT = health.OnePromptFacts(accept_cached=True, keyring_mode="shared", initramfs_tools=True, dracut=False,
                               hook_installed=True, keyscript="/ks", crypttab_volumes=1, crypttab_with_keyscript=1)


@pytest.mark.parametrize(("change", "verdict", "fix"), [
    ({}, OK, ""),
    ({"accept_cached": False, "crypttab_with_keyscript": 0}, OK, ""),
    ({"accept_cached": False}, W, "accept-cached = yes"),
    ({"keyring_mode": "private"}, W, "KeyringMode=shared"),
    ({"hook_installed": False}, W, "unlocker install --initramfs"),
    ({"crypttab_with_keyscript": 0}, W, "keyscript=/ks"),
    ({"crypttab_with_keyscript": 0, "initramfs_tools": False, "dracut": True}, OK, ""),  # dracut caches by itself
    ({"crypttab_volumes": 0, "crypttab_with_keyscript": 0, "hook_installed": False}, OK, ""),  # nothing to unlock
])
def test_one_prompt_settings_are_consistent(change, verdict, fix):
    c = health.one_prompt(replace(PROMPT, **change))
    assert c.verdict == verdict and fix in c.fix


def test_broker():
    assert health.broker("unlocked", None).verdict == OK
    assert health.broker("locked", None).fix == "unlocker unlock"
    c = health.broker(None, "the broker is not running (start unlocker.service)")
    assert c.verdict == W and c.message.count("not running") == 1
