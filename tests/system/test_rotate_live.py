"""Rotation on a running machine: the broker takes the new generation without a reboot or a prompt."""

from __future__ import annotations

import json

import pytest

from unlocker.service import audit

from .helpers import PASSPHRASE, expected, journal, run_consumer, setup, start_broker

pytestmark = pytest.mark.system

# Type=exec: `systemctl start` returns once the credentials are in place and the command runs.
LONG = """[Service]
Type=exec
ExecStart=/bin/sleep infinity
"""


def _keys(blob: bytes) -> tuple[int, list[int]]:
    doc = json.loads(blob)
    return doc["primary"], [k["id"] for k in doc["keys"]]


def test_rotate_dek_and_kek_while_consumers_run(container):
    c = container
    setup(c, [("app.service", "dek", "json"), ("raw.service", "dek", "raw")])
    c.write("/etc/systemd/system/long.service", LONG)
    c.run(["unlocker", "grant", "long.service", "--format", "json"])
    start_broker(c)
    c.systemctl("start", "long.service")
    before = c.read("/run/credentials/long.service/dek")
    assert _keys(before) == (1, [1])

    r = c.run(["unlocker", "rotate", "dek", "--passphrase-file", "-"], input=PASSPHRASE)
    assert b"the running broker now serves generation" in r.stdout
    # A consumer started before the rotation keeps what it had until it restarts.
    assert c.read("/run/credentials/long.service/dek") == before
    ok, report = run_consumer(c, "app.service")
    assert ok and _keys(bytes.fromhex(report.splitlines()[2])) == (2, [1, 2])
    assert bytes.fromhex(report.splitlines()[2]) == expected(c, "json")
    ok, report = run_consumer(c, "raw.service")
    assert ok and bytes.fromhex(report.splitlines()[2]) == expected(c, "raw")  # the new primary

    # rotate kek: the broker is handed the new store key and keeps serving the same DEKs.
    json_before_kek = expected(c, "json")
    r = c.run(["unlocker", "rotate", "kek", "--passphrase-file", "-", "--kdf-time", "50", "--restart-consumers"],
              input=PASSPHRASE)
    assert b"the running broker now serves generation" in r.stdout, r.stdout + r.stderr
    assert b"restarted (if running)" in r.stdout
    assert _keys(c.read("/run/credentials/long.service/dek")) == (2, [1, 2])  # restarted: new keyring
    ok, report = run_consumer(c, "app.service")
    assert ok and bytes.fromhex(report.splitlines()[2]) == json_before_kek == expected(c, "json")

    records = journal(c, None, f"MESSAGE_ID={audit.ROTATED}")
    assert "rotated dek: keystore generation 1 -> 2" in records
    assert "rotated kek: keystore generation 2 -> 3" in records
