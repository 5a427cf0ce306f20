"""One machine, five real boots, one TPM (a swtpm state kept across them): TPM slots sealed to PCR 7 through
/dev/tpmrm0 survive reboots, a typo at the LUKS prompt costs no TPM try, a TPM-only slot unlocks with no
prompt, and Secure Boot switched on breaks PCR 7 until `unlocker rotate tpm2` re-seals.

Every boot has the LUKS data volume (dracut initrd), so the LUKS prompt is typed each time."""

from __future__ import annotations

import re

from .guest import GRANTED_UNIT, PASSPHRASE
from .machine import DRACUT_PROMPT, Boot, Machine, Payload
from .test_boot_prompt import UNLOCKER_PROMPT

TYPO = "vm-boot-passphrasf"  # one key off

# Shell helpers for every check.sh: results, the broker's status, the passphrase in a file on tmpfs.
PRELUDE = r"""
result() { echo "VMRESULT $1=$2"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
printf '%s\n' '""" + PASSPHRASE + r"""' > /run/pass
TPM="--tpm2-device device:/dev/tpmrm0 --tpm2-pcrs 7"
KDF="--kdf-time 100 --kdf-memory 65536"
"""

REPORT = r"""
result unlocker "$(systemctl is-active unlocker.service)"
result granted "$(systemctl is-active granted.service)"
result unlocked_by "$(unlocker status --json | json "d['broker']['unlocked_by']")"
result lockout "$(unlocker status --json | json "d['tpm2']['lockout_counter']")"
result tpm_device "$(unlocker status --json | json "d['tpm2']['device']")"
result pcr7 "$(tpm2_pcrread sha256:7 2>&1 | sed -n 's/^ *7 *: *//p')"
"""

FIRST = PRELUDE + r"""
result efi "$(test -d /sys/firmware/efi && echo yes || echo no)"
result tpmrm0 "$(test -c /dev/tpmrm0 && echo yes || echo no)"
result luks "$(test -b /dev/mapper/data && echo open || echo closed)"
result pcr7 "$(tpm2_pcrread sha256:7 2>&1 | sed -n 's/^ *7 *: *//p')"
unlocker init --no-tpm2 $KDF --passphrase-file /run/pass
unlocker enroll tpm2+passphrase $TPM $KDF --passphrase-file /run/pass --new-passphrase-file /run/pass
unlocker grant granted.service --no-reload
result slots "$(unlocker slots --json | json "','.join(s['type'] for s in d)")"
"""

TYPO_THEN_RIGHT = PRELUDE + REPORT + r"""
unlocker enroll tpm2 $TPM --passphrase-file /run/pass
result slots "$(unlocker slots --json | json "','.join(s['type'] for s in d)")"
"""

UNATTENDED = PRELUDE + REPORT + r"""
unlocker unlock --check --slot 1 --passphrase-file /run/pass --tpm2-device device:/dev/tpmrm0
result tpm2_passphrase_check $?
"""

SECURE_BOOT_FLIPPED = PRELUDE + REPORT + r"""
result tpm_failed_pcr7 "$(journalctl -b -u unlocker.service -o cat | grep '(tpm2) did not open' | grep -c 'PCR 7')"
unlocker rotate tpm2 $TPM $KDF --passphrase-file /run/pass --new-passphrase-file /run/pass
result rotate_exit $?
"""


def _payload(tmp_path, name: str, check: str, enable_unlocker: bool, conf: str = "") -> Payload:
    payload = Payload(tmp_path / name, check=check)
    payload.write("/etc/systemd/system/granted.service", GRANTED_UNIT)
    payload.write("/etc/unlocker/unlocker.conf", conf)
    if enable_unlocker:
        payload.enable("unlocker.service")
        payload.enable("granted.service")
    return payload


def _results(boot: Boot, label: str) -> tuple[dict[str, str], str]:
    results = boot.results()
    print(f"\n{label}: boot to power-off {boot.wall_seconds} s; marks {boot.marks}")
    return results, f"{label}: results: {results}\nserial log: {boot.serial_log}"


def test_tpm_slots_across_reboots_and_a_secure_boot_change(machine: Machine, tmp_path) -> None:
    machine.add_luks_volume(PASSPHRASE.encode())

    # Boot 1: the keystore made in the guest: a passphrase slot and tpm2+passphrase sealed to PCR 7.
    with machine.boot(_payload(tmp_path, "boot1", FIRST, enable_unlocker=False)) as boot:
        boot.answer(DRACUT_PROMPT, PASSPHRASE)
        boot.wait_poweroff()
    r, details = _results(boot, "boot 1 (enroll)")
    assert (r["efi"], r["tpmrm0"], r["luks"]) == ("yes", "yes", "open"), details
    assert re.fullmatch(r"0x[0-9A-F]{64}", r["pcr7"]) and r["pcr7"] != "0x" + "0" * 64, details
    assert r["slots"] == "passphrase,tpm2+passphrase", details
    assert r["check_exit"] == "0", details
    pcr7_plain = r["pcr7"]

    # Boot 2, case 3: a typo at the LUKS prompt, then the right passphrase. The cache holds typo\0right;
    # unlocker takes the right one, and the TPM's dictionary-attack counter did not move.
    payload = _payload(tmp_path, "boot2", TYPO_THEN_RIGHT, enable_unlocker=True, conf="[prompt]\naccept-cached = yes\n")
    with machine.boot(payload) as boot:
        boot.answer(DRACUT_PROMPT, TYPO)
        boot.answer(DRACUT_PROMPT, PASSPHRASE)
        boot.wait_poweroff()
    r, details = _results(boot, "boot 2 (typo, then the right passphrase)")
    assert boot.count(DRACUT_PROMPT) == 2 and boot.count(UNLOCKER_PROMPT) == 0, details
    assert (r["unlocker"], r["granted"], r["unlocked_by"]) == ("active", "active", "cached passphrase"), details
    assert r["lockout"] == "0", details
    assert r["tpm_device"] == "device:/dev/tpmrm0", details  # the kernel's resource manager, by default
    assert r["slots"] == "passphrase,tpm2+passphrase,tpm2", details

    # Boot 3: the same PCR 7; the TPM-only slot unlocks with no prompt, and tpm2+passphrase still opens.
    with machine.boot(_payload(tmp_path, "boot3", UNATTENDED, enable_unlocker=True)) as boot:
        boot.answer(DRACUT_PROMPT, PASSPHRASE)
        boot.wait_poweroff()
    r, details = _results(boot, "boot 3 (unattended)")
    assert boot.count(UNLOCKER_PROMPT) == 0, details
    assert (r["unlocker"], r["granted"], r["unlocked_by"]) == ("active", "active", "tpm2"), details
    assert r["pcr7"] == pcr7_plain, details
    assert r["tpm2_passphrase_check"] == "0", details

    # Boot 4: Secure Boot on, so PCR 7 differs: the TPM slot fails naming PCR 7, unlocker asks, the passphrase
    # slot opens, and `unlocker rotate tpm2` re-seals to the new PCR 7.
    with machine.boot(_payload(tmp_path, "boot4", SECURE_BOOT_FLIPPED, enable_unlocker=True),
                      secure_boot=True) as boot:
        boot.answer(DRACUT_PROMPT, PASSPHRASE)
        boot.answer(UNLOCKER_PROMPT, PASSPHRASE)
        boot.wait_poweroff()
    r, details = _results(boot, "boot 4 (Secure Boot on)")
    assert r["pcr7"] != pcr7_plain, details
    assert int(r["tpm_failed_pcr7"]) >= 1, details
    assert (r["unlocker"], r["granted"], r["unlocked_by"]) == ("active", "active", "prompt"), details
    assert r["rotate_exit"] == "0", details
    assert r["lockout"] == "0", details  # a policy mismatch costs no dictionary-attack try

    # Boot 5: Secure Boot still on: unattended again.
    with machine.boot(_payload(tmp_path, "boot5", UNATTENDED, enable_unlocker=True), secure_boot=True) as boot:
        boot.answer(DRACUT_PROMPT, PASSPHRASE)
        boot.wait_poweroff()
    r, details = _results(boot, "boot 5 (re-sealed)")
    assert boot.count(UNLOCKER_PROMPT) == 0, details
    assert (r["unlocker"], r["granted"], r["unlocked_by"]) == ("active", "active", "tpm2"), details
    assert r["tpm2_passphrase_check"] == "0", details
