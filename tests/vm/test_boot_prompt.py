"""The boot prompt in real boots of Debian 12 (its own 6.1 kernel, UEFI, a TPM device): unlocker's own prompt
reaches the serial console, and the one-prompt setup opens LUKS in the initrd and then the keystore from the
passphrase the initrd cached, without a second prompt and without unlocker ever writing a keyring."""

from __future__ import annotations

from .guest import PASSPHRASE, keystore_payload
from .machine import DRACUT_PROMPT, REAL_ROOT_BANNER, Machine

# unlocker's keyscript in Debian's initramfs-tools initrd (initramfs/initramfs-tools/keyscript), via askpass.
KEYSCRIPT_PROMPT = r"Please unlock disk data \("

# systemd's console agent, asking unlocker's question (units/unlocker.service, service/ask.py).
UNLOCKER_PROMPT = r"Passphrase for the unlocker keystore on [\w.-]+: "

CHECK = r"""
result() { echo "VMRESULT $1=$2"; }
result kernel "$(uname -r)"
result luks "$(test -b /dev/mapper/data && echo open || echo closed)"
result unlocker "$(systemctl is-active unlocker.service)"
result granted "$(systemctl is-active granted.service)"
result credential_bytes "$(cat /var/lib/granted.size 2>/dev/null)"
broker() { unlocker status --json | python3 -c "import json,sys; print(json.load(sys.stdin)['broker']['$1'])"; }
result unlocked_by "$(broker unlocked_by)"
result memory "$(broker memory)"
result secretmem_cmdline "$(grep -c secretmem.enable=1 /proc/cmdline)"
result delivered "$(journalctl -t unlocker -o cat | grep -c 'delivered credential dek (raw) to granted.service')"
# The keys in root's user keyring, where the initrd caches and where --keyname would push: by name.
result user_keys "$(keyctl show @u 2>/dev/null | sed -n 's/.* user: //p' | sort | paste -sd, -)"
exposure=$(systemd-analyze security unlocker.service 2>/dev/null | grep 'Overall exposure level')
result exposure "$(echo "$exposure" | sed -n 's/.*: *\([0-9.]*\).*/\1/p')"
"""


def _common(results: dict[str, str], details: str) -> None:
    assert results["kernel"].startswith("6.1."), details  # Debian 12's own kernel, not the host's
    assert results["unlocker"] == "active", details
    assert results["granted"] == "active", details
    assert results["credential_bytes"] == "32", details
    # The sealed reply (LoadCredentialEncrypted=, systemd-creds setup made the host secret at boot) decrypted.
    assert int(results["delivered"]) >= 1, details
    # Debian's 6.1 has memfd_secret off without secretmem.enable=1: the fallback runs, and status says so.
    assert results["secretmem_cmdline"] == "0", details
    assert results["memory"] == "mlock", details


def test_unlockers_own_prompt_reaches_the_console(machine: Machine, tmp_path) -> None:
    # Case 0: nothing cached. The console agent must still run when unlocker asks (ordered before
    # systemd-user-sessions.service); typed there, the passphrase unlocks and the granted unit starts.
    payload = keystore_payload(tmp_path / "payload", CHECK)
    with machine.boot(payload, initrd="dracut") as boot:
        banner = boot.wait_for(REAL_ROOT_BANNER, timeout=300)
        prompt = boot.answer(UNLOCKER_PROMPT, PASSPHRASE, timeout=300)
        seconds = boot.wait_poweroff()
    print(f"\ncase 0: boot to power-off {seconds} s; marks {boot.marks}")
    results = boot.results()
    details = f"results: {results}\nserial log: {boot.serial_log}"
    assert banner.start() < prompt.start(), details
    assert boot.count(UNLOCKER_PROMPT) == 1, details
    _common(results, details)
    assert results["unlocked_by"] == "prompt", details
    assert results["user_keys"] == "", details  # what was typed at unlocker's prompt is in no keyring
    print(f"systemd-analyze security unlocker.service: {results['exposure']}")
    assert 0 < float(results["exposure"]) < 3, details


def _one_prompt(machine: Machine, tmp_path, initrd: str, luks_prompt: str, case: str) -> None:
    """One passphrase, typed at the initrd's LUKS prompt, opens the volume and then unlocker's keystore."""
    machine.add_luks_volume(PASSPHRASE.encode())
    payload = keystore_payload(tmp_path / "payload", CHECK, conf="[prompt]\naccept-cached = yes\n")
    with machine.boot(payload, initrd=initrd) as boot:
        boot.answer(luks_prompt, PASSPHRASE, timeout=300)
        seconds = boot.wait_poweroff()
    print(f"\n{case}: boot to power-off {seconds} s; marks {boot.marks}")
    results = boot.results()
    details = f"results: {results}\nserial log: {boot.serial_log}"
    assert boot.count(luks_prompt) == 1, details
    assert boot.count(UNLOCKER_PROMPT) == 0, details
    _common(results, details)
    assert results["unlocked_by"] == "cached passphrase", details
    assert results["luks"] == "open", details  # opened in the initrd (the booted system has luks.crypttab=no)
    # The initrd's key at most (it may have expired by now): unlocker added none.
    assert set(filter(None, results["user_keys"].split(","))) <= {"cryptsetup"}, details


def test_one_prompt_with_dracut(machine: Machine, tmp_path) -> None:
    # Case 1: the LUKS volume is opened in the dracut initrd; systemd-cryptsetup caches the passphrase as key
    # "cryptsetup" in root's user keyring; unlocker.service (KeyringMode=shared, accept-cached) opens the
    # keystore with it: exactly one prompt in the whole boot.
    _one_prompt(machine, tmp_path, "dracut", DRACUT_PROMPT, "case 1")


def test_one_prompt_with_initramfs_tools_and_the_shipped_keyscript(machine: Machine, tmp_path) -> None:
    # Case 2: Debian's default initrd, with the keyscript and hook `unlocker install --initramfs` put in place
    # (scripts/vm-image does exactly that): askpass asks once, the keyscript caches for 150 s, and unlocker
    # opens the keystore from the cache.
    _one_prompt(machine, tmp_path, "initramfs-tools", KEYSCRIPT_PROMPT, "case 2")
