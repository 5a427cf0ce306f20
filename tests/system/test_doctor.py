"""`unlocker doctor` in a booted systemd 252: all ok on a healthy machine, then each fault it checks for,
introduced one at a time and undone, must be the one finding, with its verdict and exit code.

The TPM is a swtpm on the host's loopback, which the container shares. Not produced here for real, so
covered only by the verdict tests (tests/service/test_health.py): a kernel without memfd_secret (the host
kernel has it) and initramfs-tools (not in the test rootfs); the TPM lockout and a cleared TPM are in
tests/tpm/test_doctor_tpm.py.
"""

from __future__ import annotations

import json

import pytest
from conftest import FAST

from unlocker.keystore import changes, storage
from unlocker.keystore.slots import Secrets, recovery

from .helpers import PASSPHRASE, setup, start_broker

pytestmark = pytest.mark.system

KEYSTORE = "/var/lib/unlocker/keystore"
DROPIN = "/etc/systemd/system/granted.service.d/50-unlocker-dek.conf"


def doctor(c) -> tuple[int, dict[str, dict[str, str]]]:
    p = c.run(["unlocker", "doctor", "--json"], check=False)
    report = json.loads(p.stdout)
    checks = {check["check"]: check for check in report["checks"]}
    assert report["verdict"] == ["ok", "warning", "error"][p.returncode], report
    return p.returncode, checks


def findings(checks: dict[str, dict[str, str]]) -> dict[str, str]:
    return {name: c["verdict"] for name, c in checks.items() if c["verdict"] != "ok"}


@pytest.fixture(scope="module")
def healthy(module_container):
    """A machine as the ADMIN-GUIDE leaves it: unit enabled, a keystore with a recovery key (and so a
    backup), one granted unit, the broker unlocked."""
    c = module_container
    setup(c, [("granted.service", "dek", "raw")])
    c.systemctl("enable", "unlocker.service")
    c.run(["unlocker", "enroll", "recovery", "--passphrase-file", "-"], input=PASSPHRASE + b"\n")
    start_broker(c)
    return c


def test_a_healthy_machine_is_all_ok(healthy):
    code, checks = doctor(healthy)
    assert code == 0 and findings(checks) == {}, checks
    for name in ("unit", "keystore.file", "keystore.parse", "keystore.backup", "slots", "tpm", "grants",
                 "host-secret", "grant.granted.service.dek", "memory", "one-prompt", "broker"):
        assert name in checks, sorted(checks)
    # The text form says the same, one line a check.
    text = healthy.run(["unlocker", "doctor"]).stdout.decode()
    assert text.count("\n") == len(checks) and "WARNING" not in text and "ERROR" not in text


# (fault, undo, the finding it must cause, exit code). Shell run inside the container.
FAULTS = {
    "unit disabled": ("systemctl disable -q unlocker.service", "systemctl enable -q unlocker.service",
                      {"unit": "error"}, 2),
    "unit removed": ("mv /etc/systemd/system/unlocker.service /root/ && systemctl daemon-reload",
                     "mv /root/unlocker.service /etc/systemd/system/ && systemctl daemon-reload",
                     {"unit": "error"}, 2),
    "keystore readable by others": (f"chmod 0644 {KEYSTORE}", f"chmod 0600 {KEYSTORE}",
                                    {"keystore.file": "error"}, 2),
    "keystore owned by a user": (f"chown nobody {KEYSTORE}", f"chown root {KEYSTORE}",
                                 {"keystore.file": "error"}, 2),
    "keystore damaged": (f"cp -p {KEYSTORE} /root/saved && sed -i 's/^generation /generation 9/' {KEYSTORE}",
                         f"cp -p /root/saved {KEYSTORE}", {"keystore.parse": "error"}, 2),
    "keystore missing": (f"mv {KEYSTORE} /root/saved", f"mv /root/saved {KEYSTORE}", {"keystore.file": "error"}, 2),
    "backup missing": (f"mv {KEYSTORE}.bak /root/saved", f"mv /root/saved {KEYSTORE}.bak",
                       {"keystore.backup": "warning"}, 1),
    "grant without drop-in": (f"mv {DROPIN} /root/saved", f"mv /root/saved {DROPIN}",
                              {"grant.granted.service.dek": "error"}, 2),
    "drop-in edited": (f"cp {DROPIN} /root/saved && echo '# mine' >> {DROPIN}", f"cp /root/saved {DROPIN}",
                       {"grant.granted.service.dek": "warning"}, 1),
    "drop-in of an earlier version": (
        f"cp {DROPIN} /root/saved && printf '[Service]\\nLoadCredential=dek:/run/unlocker/credentials.sock\\n"
        f"ExecStartPre=/usr/bin/test -s %%d/dek\\n' > {DROPIN}", f"cp /root/saved {DROPIN}",
        {"grant.granted.service.dek": "error"}, 2),
    "host secret missing": ("mv /var/lib/systemd/credential.secret /root/saved",
                            "mv /root/saved /var/lib/systemd/credential.secret", {"host-secret": "error"}, 2),
    "host secret of another machine": (
        "cp -p /var/lib/systemd/credential.secret /root/saved && chmod 600 /var/lib/systemd/credential.secret && "
        "printf '0123456789abcdef' | dd of=/var/lib/systemd/credential.secret conv=notrunc status=none && "
        "chmod 400 /var/lib/systemd/credential.secret",
        "cp -p /root/saved /var/lib/systemd/credential.secret", {"host-secret": "error"}, 2),
    "drop-in without grant": ("mkdir -p /etc/systemd/system/other.service.d && "
                              f"cp {DROPIN} /etc/systemd/system/other.service.d/50-unlocker-key.conf",
                              "rm -r /etc/systemd/system/other.service.d", {"dropin.other.service.key": "error"}, 2),
    "grant list unreadable": ("cp /etc/unlocker/grants /root/saved && echo 'garbage' >> /etc/unlocker/grants",
                              "cp /root/saved /etc/unlocker/grants", {"grants": "error"}, 2),
    "granted unit missing": ("mv /etc/systemd/system/granted.service /root/saved && systemctl daemon-reload",
                             "mv /root/saved /etc/systemd/system/granted.service && systemctl daemon-reload",
                             {"unit.granted.service": "warning"}, 1),
    "accept-cached without a shared keyring": (
        "printf '[prompt]\\naccept-cached = yes\\n' > /etc/unlocker/unlocker.conf && "
        "mkdir -p /etc/systemd/system/unlocker.service.d && "
        "printf '[Service]\\nKeyringMode=private\\n' > /etc/systemd/system/unlocker.service.d/k.conf && "
        "systemctl daemon-reload",
        "rm -r /etc/unlocker/unlocker.conf /etc/systemd/system/unlocker.service.d && systemctl daemon-reload",
        {"one-prompt": "warning"}, 1),
    "broker locked": ("unlocker lock", "systemctl stop unlocker.service", {"broker": "warning"}, 1),
    "broker stopped": ("systemctl stop unlocker.service", "true", {"broker": "warning"}, 1),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_is_found_alone_with_a_fix(healthy, fault):
    c = healthy
    apply, undo, expected, expected_code = FAULTS[fault]
    c.sh(apply)
    try:
        code, checks = doctor(c)
        assert findings(checks) == expected, json.dumps(checks, indent=1)
        assert code == expected_code
        assert all(checks[name]["fix"] for name in expected)
    finally:
        c.sh(undo)
        if c.show("unlocker.service", "ActiveState")["ActiveState"] != "active":
            start_broker(c)
    assert doctor(c)[0] == 0, f"undoing '{fault}' did not bring the machine back to healthy"


def test_a_firmware_change_is_caught_before_the_reboot(container, fresh_swtpm, tmp_path):
    """The broker unlocks through a tpm2+passphrase slot on swtpm (reached over the shared loopback); then a
    PCR the slot is sealed to changes, as a firmware update does: doctor says so while the machine still runs."""
    c = container
    setup(c, [("granted.service", "dek", "raw")])
    c.systemctl("enable", "unlocker.service")
    opened = changes.create("tpm2+passphrase", Secrets(bytearray(PASSPHRASE), fresh_swtpm.tcti), FAST)
    keystore = changes.add_slot(opened, "recovery", Secrets(recovery.format_key(recovery.generate())), FAST)
    opened.close()
    storage.write(tmp_path / "keystore", keystore, expected_generation=None)
    for path in (KEYSTORE, f"{KEYSTORE}.bak"):
        c.write_file(path, (tmp_path / "keystore").read_bytes(), mode=0o600)
    c.write_file("/etc/unlocker/unlocker.conf", f"[tpm2]\ndevice = {fresh_swtpm.tcti}\n")
    start_broker(c)
    code, checks = doctor(c)
    assert code == 0 and findings(checks) == {}, json.dumps(checks, indent=1)
    assert {"tpm", "tpm.lockout", "tpm.bank.sha256", "tpm.slot0"} <= set(checks)

    # Without the recovery slot, only this TPM opens the keystore.
    c.run(["unlocker", "wipe-slot", "1", "--passphrase-file", "-"], input=PASSPHRASE + b"\n")
    code, checks = doctor(c)
    assert findings(checks) == {"slots": "warning"} and code == 1, json.dumps(checks, indent=1)
    assert checks["slots"]["fix"].startswith("unlocker enroll recovery")
    c.run(["unlocker", "enroll", "recovery", "--passphrase-file", "-"], input=PASSPHRASE + b"\n")
    assert doctor(c)[0] == 0

    fresh_swtpm.extend_pcr(7, b"firmware 2.0")
    code, checks = doctor(c)
    assert findings(checks) == {"tpm.slot0": "error"} and code == 2, json.dumps(checks, indent=1)
    assert checks["tpm.slot0"]["fix"].endswith("unlocker rotate tpm2")
    assert fresh_swtpm.da_state() == (0, False)  # the doctor tried no authorization
