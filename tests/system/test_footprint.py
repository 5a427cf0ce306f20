"""Issue 13, privilege separation and footprint: the prompt, Argon2id and the TPM unseal happen in a
short-lived unlock child, so the long-running broker never held the passphrase and never loaded the TPM
stack; a SIGTERM while the child asks withdraws the question; a child that dies is a failed unlock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import FAST

from unlocker.keystore import changes, storage
from unlocker.keystore.slots import Secrets

from .helpers import PASSPHRASE, journal, rss_by_mapping, setup, start_broker, wait_active

pytestmark = pytest.mark.system

KEYSTORE = "/var/lib/unlocker/keystore"
# What the TPM stack (tpm2_pytss's cffi extension, the tss2 libraries) and clevis's pycryptodome leave in a
# process's mappings once loaded. (_cffi_backend itself is no sign: cryptography's OpenSSL binding uses it.)
HEAVY_MAPPINGS = ("tpm2_pytss", "libtss2", "/Crypto/")
SCAN = (Path(__file__).parents[1] / "memscan.py").read_text() + (
    "\nimport sys\nprint(find_in_process(int(sys.argv[1]), sys.stdin.buffer.read()))\n")


def _tpm2_keystore(c, swtpm, tmp_path) -> None:
    opened = changes.create("tpm2+passphrase", Secrets(bytearray(PASSPHRASE), swtpm.tcti), FAST)
    storage.write(tmp_path / "keystore", opened.keystore, expected_generation=None)
    opened.close()
    for path in (KEYSTORE, f"{KEYSTORE}.bak"):
        c.write_file(path, (tmp_path / "keystore").read_bytes(), mode=0o600)
    c.write_file("/etc/unlocker/unlocker.conf", f"[tpm2]\ndevice = {swtpm.tcti}\n")


def _broker_pid(c) -> str:
    return c.show("unlocker.service", "MainPID")["MainPID"]


def _unit_pids(c) -> list[str]:
    path = c.show("unlocker.service", "ControlGroup")["ControlGroup"]
    return c.run(["cat", f"/sys/fs/cgroup{path}/cgroup.procs"], check=False).stdout.decode().split()


def _vm_rss_kib(c, pid: str) -> int:
    status = c.run(["cat", f"/proc/{pid}/status"]).stdout.decode()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def test_after_a_tpm2_and_passphrase_unlock_the_broker_never_held_either(container, fresh_swtpm, tmp_path):
    c = container
    setup(c, [("granted.service", "dek", "raw")])
    _tpm2_keystore(c, fresh_swtpm, tmp_path)
    start_broker(c)
    pid = _broker_pid(c)
    assert "via slot 0 (prompt)" in journal(c, "unlocker.service")  # the TPM unsealed its share
    assert _unit_pids(c) == [pid]  # the unlock child is gone
    # Before the scans below: reading /proc/<pid>/mem faults every readable page into the broker's RSS.
    rss = _vm_rss_kib(c, pid)
    assert rss <= 40 * 1024, (rss, rss_by_mapping(c, pid))
    maps = c.run(["cat", f"/proc/{pid}/maps"]).stdout.decode()
    assert [m for m in HEAVY_MAPPINGS if m in maps] == [], maps
    assert c.run(["python3", "-c", SCAN, pid], input=PASSPHRASE).stdout.decode().strip() == "[]"
    # The scanner can read the broker: it finds the broker's own journal identifier.
    assert c.run(["python3", "-c", SCAN, pid], input=b"MESSAGE_ID=").stdout.decode().strip() != "[]"
    c.run(["systemctl", "start", "granted.service"])  # and it serves


def _wait_question(c, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if questions := c.pending_questions():
            return questions[0]
        time.sleep(0.05)
    raise AssertionError("no question:\n" + journal(c, "unlocker.service"))


def _ask_files(c) -> list[str]:
    return [f for f in c.run(["ls", "/run/systemd/ask-password"]).stdout.decode().split() if f.startswith("ask.")]


def _settled(c, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while (state := c.show("unlocker.service", "ActiveState")["ActiveState"]) not in ("inactive", "failed"):
        assert time.monotonic() < deadline, journal(c, "unlocker.service")
        time.sleep(0.05)
    return state


def _gone(c, pid: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while c.run(["test", "-e", f"/proc/{pid}"], check=False).returncode == 0:
        assert time.monotonic() < deadline, f"{pid} still runs:\n" + journal(c, "unlocker.service")
        time.sleep(0.05)


def test_sigterm_to_the_broker_while_the_child_asks_withdraws_the_question(container):
    c = container
    setup(c, [])
    c.systemctl("start", "--no-block", "unlocker.service")
    question = _wait_question(c)
    broker, asker = _broker_pid(c), str(question["pid"])
    child = c.run(["cut", "-d", " ", "-f4", f"/proc/{asker}/stat"]).stdout.decode().strip()  # the asker's parent
    assert child != broker  # asked by the child's systemd-ask-password, not by the broker
    c.run(["kill", "-TERM", broker])  # the broker alone: systemd's stop would signal the whole cgroup
    for pid in (broker, child, asker):
        _gone(c, pid)
    # An exit before READY=1 is a 'protocol' failure to systemd, which Restart=on-abnormal restarts (and the
    # new broker asks again): the old question must be gone, whatever came after it.
    assert all(str(q["pid"]) != asker for q in c.pending_questions())
    log = journal(c, "unlocker.service")
    assert "stopped while the keystore was still locked" in log and "Traceback" not in log
    c.systemctl("stop", "unlocker.service")
    assert _ask_files(c) == [] and c.pending_questions() == []


def test_an_unlock_child_that_dies_is_a_failed_unlock(container):
    c = container
    setup(c, [])
    c.systemctl("start", "--no-block", "unlocker.service")
    question = _wait_question(c)
    asker = str(question["pid"])
    child = c.run(["cut", "-d", " ", "-f4", f"/proc/{asker}/stat"]).stdout.decode().strip()  # its parent
    assert child != _broker_pid(c)
    c.run(["kill", "-KILL", child])
    assert _settled(c) == "failed"
    assert _ask_files(c) == [] and c.pending_questions() == []
    log = journal(c, "unlocker.service")
    assert f"the unlock child (pid {child}) ended without an answer (killed by SIGKILL)" in log
    assert "Traceback" not in log and PASSPHRASE.decode() not in log


def test_lock_and_unlock_again_starts_a_new_child(container):
    c = container
    setup(c, [("granted.service", "dek", "raw")])
    start_broker(c)
    broker = _broker_pid(c)
    c.run(["unlocker", "lock"])
    c.run(["sh", "-c", "unlocker unlock > /root/unlock.out 2>&1 &"])
    question = _wait_question(c)
    assert str(question["pid"]) != broker
    c.answer_password(PASSPHRASE)
    deadline = time.monotonic() + 20
    while "broker unlocked" not in c.run(["cat", "/root/unlock.out"], check=False).stdout.decode():
        assert time.monotonic() < deadline, journal(c, "unlocker.service")
        time.sleep(0.1)
    wait_active(c, "unlocker.service")
    assert _broker_pid(c) == broker and _unit_pids(c) == [broker]
    c.run(["systemctl", "start", "granted.service"])


def test_three_wrong_passphrases_end_the_broker_as_before(container):
    """The child asks; the broker exits with the message and status the CLI gave before the child."""
    c = container
    setup(c, [])
    c.systemctl("start", "--no-block", "unlocker.service")
    for _ in range(3):
        c.answer_password(b"wrong")
    assert _settled(c, timeout=30) == "failed"
    assert c.show("unlocker.service", "ExecMainStatus")["ExecMainStatus"] == "2"
    log = journal(c, "unlocker.service")
    assert "wrong passphrase (attempt 3 of 3)" in log
    assert "unlocker: no keyslot opened after 3 attempt(s); restart unlocker.service to try again" in log
    assert "Traceback" not in log
    assert _ask_files(c) == []
