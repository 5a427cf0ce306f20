"""The broker soak (issue 10): for a bounded time (UNLOCKER_SOAK_SECONDS, default 60), bursts of granted and
ungranted units start while grants are added and revoked, the broker is locked and unlocked, the DEK is
rotated, and clients connect and stall. Every start is checked against the state at that moment: zero
deliveries to a unit without a grant, zero empty credentials, only the current key; and the broker's
descriptors and memory do not grow."""

from __future__ import annotations

import os
import random
import time

import pytest

from .helpers import PASSPHRASE, expected, setup, start_broker

pytestmark = pytest.mark.system

SECONDS = float(os.environ.get("UNLOCKER_SOAK_SECONDS", "60"))
UNITS = [f"soak@{i}.service" for i in range(12)]
STALLER = r"""
import socket, time
conns = []
for _ in range(5):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("/run/unlocker/sealed-credentials.sock")
    conns.append(s)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect("/run/unlocker/control.sock")
    conns.append(c)
time.sleep(3600)  # never reads, never writes
"""


def _broker_usage(c) -> tuple[int, int]:
    pid = c.show("unlocker.service", "MainPID")["MainPID"]
    fds = len(c.run(["ls", f"/proc/{pid}/fd"]).stdout.split())
    rss = next(int(line.split()[1]) for line in c.run(["cat", f"/proc/{pid}/status"]).stdout.decode().splitlines()
               if line.startswith("VmRSS:"))
    return fds, rss


def _unlock(c, tag: str) -> None:
    c.run(["systemd-run", f"--unit=soak-unlock-{tag}.service", "unlocker", "unlock"])
    c.answer_password(PASSPHRASE)
    deadline = time.monotonic() + 30
    while b'"state": "unlocked"' not in c.run(["unlocker", "status", "--json"]).stdout:
        assert time.monotonic() < deadline, "the broker did not unlock"
        time.sleep(0.1)


def _set_grants(c, granted: set[str]) -> None:
    # Through the grant list the broker re-reads; the drop-ins of every soak unit stay loaded, so a
    # revoked unit still asks for its key and must be refused.
    c.write("/etc/unlocker/grants", "".join(f"{u} dek hex\n" for u in sorted(granted)))


def _burst(c, units: list[str]) -> dict[str, tuple[str, str]]:
    c.run(["rm", "-f", *[f"/var/log/{u}.out" for u in units]])
    c.run(["systemctl", "start", *units], check=False, timeout=120)
    results = {}
    for u in units:
        state = c.show(u, "Result")["Result"]
        out = c.run(["cat", f"/var/log/{u}.out"], check=False).stdout.decode()
        results[u] = (state, out)
    c.run(["systemctl", "reset-failed", *units], check=False)
    return results


def test_broker_soak(container):
    c = container
    setup(c, [])
    c.write("/etc/systemd/system/soak@.service", """[Service]
Type=oneshot
User=nobody
ExecStart=/bin/sh -c 'od -An -v -tx1 "$CREDENTIALS_DIRECTORY/dek" | tr -d " \\\\n"'
StandardOutput=truncate:/var/log/%n.out
""")
    c.run(["unlocker", "grant", *UNITS, "--format", "hex"])  # drop-ins for all; the list changes below
    start_broker(c)
    c.run(["systemd-run", "--unit=staller.service", "python3", "-c", STALLER])
    rng = random.Random(1)
    locked, rounds, deliveries, refusals = False, 0, 0, 0
    # Warm up before the baseline: every path once (the first unlock, reload and denial allocate what the
    # allocator keeps for later), so that what is measured is growth, not first use.
    _burst(c, UNITS)
    c.run(["unlocker", "lock"])
    _unlock(c, "warm-up")
    c.run(["unlocker", "rotate", "dek", "--passphrase-file", "-"], input=PASSPHRASE + b"\n")
    _burst(c, UNITS)
    baseline = _broker_usage(c)
    samples = [baseline[1]]
    want = expected(c, "hex").hex()
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        rounds += 1
        granted = set(rng.sample(UNITS, rng.randint(0, len(UNITS))))
        _set_grants(c, granted)
        action = rng.choice(["none", "none", "lock", "rotate", "restart-staller"])
        if action == "lock" and not locked:
            c.run(["unlocker", "lock"])
            locked = True
        elif action == "lock" and locked:
            _unlock(c, str(rounds))
            locked = False
        elif action == "rotate" and not locked:
            c.run(["unlocker", "rotate", "dek", "--passphrase-file", "-"], input=PASSPHRASE + b"\n")
            want = expected(c, "hex").hex()
        elif action == "restart-staller":  # the stalled clients go, and new ones come
            c.systemctl("stop", "staller*.service")
            c.run(["systemd-run", f"--unit=staller-{rounds}.service", "python3", "-c", STALLER])
        for unit, (result, out) in _burst(c, rng.sample(UNITS, rng.randint(1, len(UNITS)))).items():
            if unit in granted and not locked:
                assert (result, out) == ("success", want), (rounds, action, unit, result, out[:80])
                deliveries += 1
            else:
                assert result != "success" and out == "", (rounds, action, unit, result, out[:80])
                refusals += 1
        samples.append(_broker_usage(c)[1])
    c.systemctl("stop", "staller*.service")
    if locked:
        _unlock(c, "end")
    time.sleep(1)
    _burst(c, UNITS)
    fds, rss = _broker_usage(c)
    print(f"soak: {rounds} rounds, {deliveries} deliveries, {refusals} refusals in {SECONDS:g} s; "
          f"broker fds {baseline[0]} -> {fds}, RSS {baseline[1]} -> {rss} KiB; RSS per round {samples}")
    assert rounds >= 3 and deliveries > 0 and refusals > 0
    assert fds <= baseline[0] + 2
    assert rss <= baseline[1] + 2 * 1024
