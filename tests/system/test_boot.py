"""The boot story, each test on a freshly booted machine: the prompt, ordering, lock and unlock."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from .helpers import PASSPHRASE, expected, failed_at_credentials, journal, run_consumer, setup, wait_active

pytestmark = pytest.mark.system


# A stand-in credential server: answers every connection with `reply`, then closes.
SERVER = """import socket
s = socket.socket(socket.AF_UNIX)
s.bind("{path}")
s.listen()
while True:
    k = s.accept()[0]
    try:
        k.sendall({reply})
    except OSError:
        pass
    k.close()
"""


def _state(c, unit):
    return c.show(unit, "ActiveState")["ActiveState"]


def test_wrong_passphrase_then_right_one_and_consumers_wait(container):
    c = container
    setup(c, [("granted.service", "dek", "base64")])
    c.systemctl("enable", "unlocker.service")
    c.systemctl("start", "--no-block", "unlocker.service")
    # A granted unit started now is queued behind the unlock (After=/Wants= in its drop-in).
    c.systemctl("start", "--no-block", "granted.service")
    first = c.answer_password(b"not the passphrase")
    assert first["id"] == "unlocker:keystore"
    assert "Passphrase for the unlocker keystore on" in first["message"]
    time.sleep(0.5)
    assert _state(c, "unlocker.service") == "activating"
    assert _state(c, "granted.service") in ("inactive", "activating")
    assert c.run(["cat", "/var/log/granted.service.out"], check=False).returncode != 0  # has not run yet
    second = c.answer_password(PASSPHRASE)
    assert "attempt 2 of 3" in second["message"]
    wait_active(c, "unlocker.service")
    # StandardOutput=truncate: creates the file when the unit starts: wait for the whole report.
    deadline = time.monotonic() + 20
    while len((report := c.run(["cat", "/var/log/granted.service.out"], check=False).stdout.decode())
              .splitlines()) < 3:
        assert time.monotonic() < deadline, journal(c, "granted.service")
        time.sleep(0.1)
    assert bytes.fromhex(report.splitlines()[2]) == expected(c, "base64")
    assert "wrong passphrase (attempt 1 of 3)" in journal(c, "unlocker.service")


def test_lock_then_unlock_again(container):
    c = container
    setup(c, [("granted.service", "dek", "raw")])
    c.systemctl("start", "--no-block", "unlocker.service")
    c.answer_password(PASSPHRASE)
    wait_active(c, "unlocker.service")
    assert run_consumer(c, "granted.service")[0]

    c.run(["unlocker", "lock"])
    info = json.loads(c.run(["unlocker", "status", "--json"]).stdout)
    assert info["broker"]["state"] == "locked"
    c.run(["rm", "/var/log/granted.service.out"])
    ok, report = run_consumer(c, "granted.service")
    assert not ok and report == ""
    assert failed_at_credentials(c, "granted.service")
    assert "denied credential dek to granted.service: the broker is locked" in journal(c, "unlocker.service")

    # `unlocker unlock` blocks until the broker has its passphrase: answer from a second process.
    unlock = c.run(["sh", "-c", "unlocker unlock > /root/unlock.out 2>&1 &"])
    assert unlock.returncode == 0
    c.answer_password(PASSPHRASE)
    deadline = time.monotonic() + 20
    while b"broker unlocked" not in c.run(["cat", "/root/unlock.out"], check=False).stdout:
        assert time.monotonic() < deadline, c.run(["cat", "/root/unlock.out"], check=False).stdout
        time.sleep(0.05)
    ok, report = run_consumer(c, "granted.service")
    assert ok and bytes.fromhex(report.splitlines()[2]) == expected(c, "raw")


def test_empty_credential_fails_a_unit_with_the_grant_dropin(container):
    """systemd 252's fail-open: a socket that closes without data yields an EMPTY credential and the unit
    starts. Prove the trap with a stand-in server, and that the drop-in `grant` writes (a sealed credential,
    LoadCredentialEncrypted=) fails the unit at CREDENTIALS instead, before any of its commands runs."""
    c = container
    c.write("/usr/local/bin/closer.py", SERVER.format(path="/run/closer.sock", reply="b''"))
    c.write("/etc/systemd/system/closer.service", "[Service]\nExecStart=/usr/bin/python3 /usr/local/bin/closer.py\n")
    c.write("/etc/systemd/system/trap.service", """[Service]
Type=oneshot
LoadCredential=dek:/run/closer.sock
ExecStart=/bin/sh -c 'stat -c %%s "$CREDENTIALS_DIRECTORY/dek"'
StandardOutput=truncate:/var/log/trap.out
""")
    c.write("/etc/systemd/system/guarded.service", """[Service]
Type=oneshot
ExecStart=/bin/touch /var/log/guarded.ran
""")
    c.run(["unlocker", "install", "--no-enable"])
    c.run(["unlocker", "grant", "guarded.service", "--no-reload"])
    # Point the grant at the closing server instead of the broker.
    dropin = "/etc/systemd/system/guarded.service.d/50-unlocker-dek.conf"
    text = (c.root / dropin.lstrip("/")).read_text()
    c.write(dropin, text.replace("/run/unlocker/sealed-credentials.sock", "/run/closer.sock")
            .replace("Wants=unlocker.service\n", ""))
    c.systemctl("daemon-reload")
    c.systemctl("start", "closer.service")
    time.sleep(0.3)
    assert c.systemctl("start", "trap.service", check=False).returncode == 0
    assert c.read("/var/log/trap.out").decode().strip() == "0"  # the trap: started with an empty key
    assert c.systemctl("start", "guarded.service", check=False).returncode != 0
    assert failed_at_credentials(c, "guarded.service")
    assert not (c.root / "var/log/guarded.ran").exists()


def _ask_password_argv(c) -> list[str]:
    for pid in c.run(["pgrep", "-x", "systemd-ask-pas"], check=False).stdout.decode().split():
        return c.read_file(f"/proc/{pid}/cmdline").decode().split("\0")
    raise AssertionError("no systemd-ask-password process")


def test_the_prompt_never_pushes_into_the_kernel_keyring(container):
    # With accept-cached configured and nothing cached, unlocker prompts. systemd-ask-password must run
    # without --keyname, which would push the typed passphrase into root's keyring for 150 s.
    c = container
    setup(c, [("granted.service", "dek", "raw")])
    c.write_file("/etc/unlocker/unlocker.conf", "[prompt]\naccept-cached = yes\n")
    c.systemctl("start", "--no-block", "unlocker.service")
    deadline = time.monotonic() + 20
    while not c.pending_questions():
        assert time.monotonic() < deadline, journal(c, "unlocker.service")
        time.sleep(0.05)
    argv = _ask_password_argv(c)
    assert argv[0].endswith("systemd-ask-password"), argv
    assert not any(a.startswith(("--keyname", "--accept-cached")) for a in argv), argv
    c.answer_password(PASSPHRASE)
    wait_active(c, "unlocker.service")
    assert "no cached passphrase under 'cryptsetup'" in journal(c, "unlocker.service")
    assert "(prompt)" in journal(c, None, "-t", "unlocker")  # the audit record names the source


def test_the_unit_asks_before_user_sessions_with_a_shared_keyring(container):
    # The console agent is stopped once systemd-user-sessions.service starts (systemd 252): the unit must
    # ask before it. KeyringMode=shared lets it read root's user keyring. The real boot: tests/vm/.
    c = container
    c.run(["unlocker", "install", "--no-enable"])
    shown = c.show("unlocker.service", "Before", "KeyringMode")
    assert "systemd-user-sessions.service" in shown["Before"].split()
    assert shown["KeyringMode"] == "shared"


# Adds `payload` to root's user keyring as an initrd would (keyrings are shared with the host: a name of
# our own, a timeout, and removed at the end), prints the key's serial.
ADD_KEY = """import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
payload = sys.stdin.buffer.read()
serial = libc.syscall(248, b"user", sys.argv[1].encode(), payload, len(payload), -4)  # add_key to @u
assert serial > 0
libc.syscall(250, 15, ctypes.c_long(serial), ctypes.c_uint(120))  # KEYCTL_SET_TIMEOUT
print(serial)
"""


@pytest.mark.parametrize("keyring_mode", ["shared", "private"])
def test_the_initrds_cached_passphrase_unlocks_without_a_prompt(container, keyring_mode):
    # After a typo at the LUKS prompt the cache holds typo\0right: unlocker takes the last entry. With the
    # default KeyringMode=private (what the unit had before) the service cannot see root's user keyring.
    c = container
    setup(c, [("granted.service", "dek", "raw")])
    keyname = f"unlocker-test-{uuid.uuid4().hex[:12]}"
    c.write_file("/etc/unlocker/unlocker.conf", f"[prompt]\naccept-cached = yes\nkeyname = {keyname}\n")
    if keyring_mode == "private":
        c.write_file("/etc/systemd/system/unlocker.service.d/private.conf", "[Service]\nKeyringMode=private\n")
        c.systemctl("daemon-reload")
    serial = c.run(["python3", "-c", ADD_KEY, keyname], input=b"typo\0" + PASSPHRASE).stdout.decode().strip()
    try:
        c.systemctl("start", "--no-block", "unlocker.service")
        if keyring_mode == "shared":
            wait_active(c, "unlocker.service")
            assert c.pending_questions() == []
            assert "(cached passphrase)" in journal(c, None, "-t", "unlocker")
            assert run_consumer(c, "granted.service")[0]
        else:
            c.answer_password(PASSPHRASE)
            wait_active(c, "unlocker.service")
            assert f"no cached passphrase under '{keyname}'" in journal(c, "unlocker.service")
    finally:
        c.run(["python3", "-c", f"import ctypes; ctypes.CDLL(None).syscall(250, 21, {serial})"], check=False)
