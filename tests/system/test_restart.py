"""A restart of the broker keeps the keys (systemd's fd store, unlocker/service/fdstore.py); a lock or a
stop does not. Real systemd 252 in nspawn; the container allows memfd_secret (docs/TESTING.md)."""

from __future__ import annotations

import json
import time

import pytest

from unlocker.service import audit

from .container import Container
from .helpers import PASSPHRASE, expected, journal, setup, start_broker, wait_active

pytestmark = pytest.mark.system

UNITS = [f"burst{i}.service" for i in range(24)]

# Logs every password question that appears, for as long as it runs (a question stays until answered or
# withdrawn, so 20 ms polling cannot miss one that the test never answers).
ASK_WATCH = ("while :; do ls /run/systemd/ask-password 2>/dev/null | grep '^ask\\.' >> /run/ask-watch.log; "
             "sleep 0.02; done")


def main_pid(c: Container) -> int:
    return int(c.show("unlocker.service", "MainPID")["MainPID"])


def stored(c: Container) -> int:
    return int(c.show("unlocker.service", "NFileDescriptorStore")["NFileDescriptorStore"])


def status(c: Container) -> dict:
    return json.loads(c.run(["unlocker", "status", "--json"]).stdout)["broker"]


def watch_questions(c: Container) -> None:
    c.run(["rm", "-f", "/run/ask-watch.log"])
    c.run(["systemd-run", "--unit=ask-watch.service", "sh", "-c", ASK_WATCH])


def questions_seen(c: Container) -> str:
    return c.run(["cat", "/run/ask-watch.log"], check=False).stdout.decode()


def wait_restarted(c: Container, old_pid: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while (pid := main_pid(c)) in (0, old_pid) or c.show("unlocker.service", "ActiveState")["ActiveState"] != "active":
        assert time.monotonic() < deadline, "unlocker.service did not come back:\n" + journal(c, "unlocker.service")
        time.sleep(0.05)
    return pid


def wait_for_question(c: Container, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while not (questions := c.pending_questions()):
        assert time.monotonic() < deadline, "no passphrase question:\n" + journal(c, "unlocker.service")
        time.sleep(0.1)
    return questions


def settled(c: Container, units: list[str], timeout: float = 60) -> dict[str, str]:
    """unit -> Result once none of them is still starting."""
    deadline = time.monotonic() + timeout
    while True:
        states = {u: c.show(u, "ActiveState", "Result") for u in units}
        if all(s["ActiveState"] in ("inactive", "failed") for s in states.values()):
            return {u: s["Result"] for u, s in states.items()}
        assert time.monotonic() < deadline, f"units still starting: {states}"
        time.sleep(0.1)


def reports(c: Container, units: list[str]) -> dict[str, str]:
    """What each consumer's ExecStart= saw, for those whose ExecStart= ran at all."""
    out = {}
    for u in units:
        # StandardOutput=truncate: creates the file for ExecStartPre= already, which prints nothing.
        p = c.run(["cat", f"/var/log/{u}.out"], check=False)
        if p.returncode == 0 and p.stdout:
            out[u] = p.stdout.decode()
    return out


def failure(c: Container, unit: str) -> str:
    text = journal(c, unit)
    if "243/CREDENTIALS" in text:
        return "243/CREDENTIALS"
    return text


@pytest.fixture
def machine(container):
    c = container
    setup(c, [(u, "dek", "raw") for u in UNITS])
    start_broker(c)
    assert stored(c) == 1
    return c


@pytest.mark.parametrize("signal", ["SIGKILL", "SIGSEGV"])
def test_crash_while_units_start_serves_again_without_a_prompt(machine, signal):
    c = machine
    key = expected(c, "raw")
    assert len(key) == 32
    watch_questions(c)
    old = main_pid(c)
    # Units keep being started, 20 ms apart, and the broker is killed after the first third of them.
    starts = "; ".join(f"systemctl start --no-block {u}; sleep 0.02" for u in UNITS)
    kill = f"systemctl kill --signal={signal} --kill-who=main unlocker.service"
    c.sh(starts.replace(f"{UNITS[len(UNITS) // 3]}; sleep 0.02", f"{UNITS[len(UNITS) // 3]}; {kill}; sleep 0.02"))
    new = wait_restarted(c, old)
    results = settled(c, UNITS)
    # The kill landed while units were starting. Units started while the broker was away wait for its
    # restart (Wants= and After= of the grant's drop-in); one in its credential step when the broker died
    # got an empty or cut reply, which does not decrypt, and failed at CREDENTIALS.
    how = {u: "ran" if r == "success" else failure(c, u) for u, r in results.items()}
    print(f"{signal}: {sorted(how.values())}")
    assert set(how.values()) <= {"ran", "243/CREDENTIALS"}, how

    # No unit ran on an empty (or any wrong) credential: what ran saw the 32-byte key, the rest never ran.
    seen = reports(c, UNITS)
    for u, report in seen.items():
        _fstype, _mode_owner, data = report.splitlines()
        assert bytes.fromhex(data) == key, (u, f"{len(data) // 2} bytes", data[:128], journal(c, u))
    assert set(seen) == {u for u, h in how.items() if h == "ran"}, (how, seen)

    assert questions_seen(c) == ""
    assert c.pending_questions() == []
    info = status(c)
    assert (info["state"], info["unlocked_by"]) == ("unlocked", "fd store")
    assert info["fd_store"].startswith("holding the store key")
    assert "restored from the fd store" in journal(c, None, f"MESSAGE_ID={audit.UNLOCKED}", f"_PID={new}")
    assert stored(c) == 1

    # It serves again: every unit now gets the key.
    c.run(["rm", "-f", *(f"/var/log/{u}.out" for u in UNITS)])
    c.systemctl("start", *UNITS)
    assert all(bytes.fromhex(r.splitlines()[2]) == key for r in reports(c, UNITS).values())
    assert len(reports(c, UNITS)) == len(UNITS)

    # And lock afterwards leaves nothing in the store (the next crash asks: test_lock_then_crash_asks;
    # not here, where the start jobs queued during the restart may have used up the start limit).
    c.run(["unlocker", "lock"])
    assert stored(c) == 0
    assert status(c)["fd_store"].startswith("empty")


def test_lock_then_crash_asks(machine):
    c = machine
    c.run(["unlocker", "lock"])
    assert stored(c) == 0
    old = main_pid(c)
    # The start jobs that the units above pulled in while the broker was down count towards systemd's start
    # limit (5 in 10 s) as they are retried; on this shared machine that was enough for the next automatic
    # restart to be refused ("Start request repeated too quickly"), on 166c8db as well. Not what this tests.
    c.systemctl("reset-failed", "unlocker.service")
    c.systemctl("kill", "--signal=SIGKILL", "--kill-who=main", "unlocker.service")
    (question,) = wait_for_question(c)
    assert question["pid"] != old
    assert status(c)["state"] == "locked"
    c.answer_password(PASSPHRASE)
    wait_active(c, "unlocker.service")
    assert status(c)["unlocked_by"] == "prompt" and stored(c) == 1


def test_systemctl_restart_asks_nothing_and_leaves_the_running_consumers_alone(machine):
    """`systemctl restart unlocker` (what a package upgrade does): no prompt, and a running granted unit
    keeps running (the drop-in says Wants=, not Requires=, which on 252 would restart it with the broker)."""
    c = machine
    c.write_file("/etc/systemd/system/long.service", "[Service]\nType=exec\nExecStart=/bin/sleep infinity\n")
    c.run(["unlocker", "grant", "long.service", "--format", "raw"])
    c.systemctl("start", "long.service")
    long_pid = c.show("long.service", "MainPID")["MainPID"]
    watch_questions(c)
    old = main_pid(c)
    c.systemctl("restart", "unlocker.service")
    wait_restarted(c, old)
    assert questions_seen(c) == "" and status(c)["unlocked_by"] == "fd store"
    c.systemctl("start", UNITS[0])
    assert bytes.fromhex(reports(c, UNITS[:1])[UNITS[0]].splitlines()[2]) == expected(c, "raw")
    assert c.show("long.service", "ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": long_pid}
    assert c.read("/run/credentials/long.service/dek") == expected(c, "raw")


def test_stop_then_start_asks_again(machine):
    c = machine
    c.systemctl("stop", "unlocker.service")
    assert stored(c) == 0
    c.systemctl("start", "--no-block", "unlocker.service")
    wait_for_question(c)
    c.answer_password(PASSPHRASE)
    wait_active(c, "unlocker.service")
    assert status(c)["unlocked_by"] == "prompt"


def test_rotate_kek_keeps_the_stored_key_in_step(machine):
    c = machine
    r = c.run(["unlocker", "rotate", "kek", "--passphrase-file", "-", "--kdf-time", "50"], input=PASSPHRASE)
    assert b"the running broker now serves generation" in r.stdout, r.stdout + r.stderr
    assert stored(c) == 1  # written in place, not a second descriptor
    watch_questions(c)
    old = main_pid(c)
    c.systemctl("kill", "--signal=SIGKILL", "--kill-who=main", "unlocker.service")
    wait_restarted(c, old)
    assert questions_seen(c) == "" and status(c)["unlocked_by"] == "fd store"


def test_a_stale_stored_key_is_discarded_and_the_prompt_follows(machine):
    """The keystore was replaced behind the broker's back: the stored key fails the header MAC."""
    c = machine
    c.run(["unlocker", "--keystore", "/root/other", "init", "--no-tpm2", "--kdf-time", "50",
           "--passphrase-file", "-"], input=PASSPHRASE + b"\n")
    c.run(["cp", "/root/other", "/var/lib/unlocker/keystore"])
    c.systemctl("kill", "--signal=SIGKILL", "--kill-who=main", "unlocker.service")
    wait_for_question(c)
    assert stored(c) == 0
    assert "does not open" in journal(c, "unlocker.service")
    c.answer_password(PASSPHRASE)
    wait_active(c, "unlocker.service")
    assert status(c)["unlocked_by"] == "prompt" and stored(c) == 1


def test_three_wrong_passphrases_are_not_restarted_in_a_loop(container):
    """Restart=on-abnormal: the broker's exit after the last wrong passphrase is a failure, not a crash."""
    c = container
    setup(c, [])
    c.systemctl("start", "--no-block", "unlocker.service")
    for _ in range(3):
        c.answer_password(b"wrong")
    deadline = time.monotonic() + 30
    while c.show("unlocker.service", "ActiveState")["ActiveState"] != "failed":
        assert time.monotonic() < deadline, journal(c, "unlocker.service")
        time.sleep(0.1)
    time.sleep(1)
    assert c.pending_questions() == []
    assert c.show("unlocker.service", "NRestarts")["NRestarts"] == "0"


def test_a_crash_leaves_the_running_consumers_alone(machine):
    """The automatic restart after a crash is a restart job on 252; with Wants= in the drop-in it is not
    carried to the running granted units."""
    c = machine
    c.write_file("/etc/systemd/system/long.service", "[Service]\nType=exec\nExecStart=/bin/sleep infinity\n")
    c.run(["unlocker", "grant", "long.service", "--format", "raw"])
    c.systemctl("start", "long.service")
    long_pid = c.show("long.service", "MainPID")["MainPID"]
    old = main_pid(c)
    c.systemctl("kill", "--signal=SIGKILL", "--kill-who=main", "unlocker.service")
    wait_restarted(c, old)
    time.sleep(1)
    assert c.show("long.service", "ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": long_pid}
    assert c.read("/run/credentials/long.service/dek") == expected(c, "raw")
