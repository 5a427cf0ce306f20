"""The broker in a real systemd 252: granted units get the key, nobody else does."""

from __future__ import annotations

import pytest

from .helpers import PASSPHRASE, consumer, expected, failed_at_credentials, journal, run_consumer, setup, start_broker

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def machine(module_container):
    c = module_container
    setup(c, [("granted.service", "dek", "hex"), ("dynamic.service", "dek", "json")])
    consumer(c, "dynamic.service", user="DynamicUser=yes")
    # Asks for the key itself (LoadCredential= in its own unit file), without a grant.
    consumer(c, "ungranted.service", extra="LoadCredential=dek:/run/unlocker/credentials.sock")
    consumer(c, "other-id.service", credential="other",
             extra="LoadCredential=other:/run/unlocker/credentials.sock")
    c.run(["unlocker", "grant", "other-id.service", "--credential", "dek", "--format", "raw"])
    c.systemctl("daemon-reload")
    start_broker(c)
    return c


def test_granted_unit_reads_the_key_from_a_private_ramfs(machine):
    ok, report = run_consumer(machine, "granted.service")
    assert ok, journal(machine, "granted.service")
    fstype, mode_owner, data = report.splitlines()
    assert fstype == "ramfs"
    assert mode_owner == "400 nobody"
    assert bytes.fromhex(data) == expected(machine, "hex")


def test_dynamic_user_unit_reads_the_json_keyring(machine):
    ok, report = run_consumer(machine, "dynamic.service")
    assert ok, journal(machine, "dynamic.service")
    fstype, mode_owner, data = report.splitlines()
    assert fstype == "ramfs" and mode_owner.startswith("400 ")
    assert bytes.fromhex(data) == expected(machine, "json")


def test_unit_without_a_grant_fails_at_credentials(machine):
    ok, report = run_consumer(machine, "ungranted.service")
    assert not ok and report == ""
    assert failed_at_credentials(machine, "ungranted.service")


def test_granted_unit_asking_for_another_credential_fails(machine):
    ok, report = run_consumer(machine, "other-id.service")
    assert not ok and report == ""
    assert failed_at_credentials(machine, "other-id.service")


def test_audit_records_in_the_journal_and_no_key_material(machine):
    run_consumer(machine, "granted.service")
    delivered = journal(machine, None, "MESSAGE_ID=6f2b1c8e5a3d4f0e9b7c2a1d0e3f4a5b")
    denied = journal(machine, None, "MESSAGE_ID=a4e1d2c3b5f6478899aabbccddeeff01")
    assert "delivered credential dek (hex) to granted.service" in delivered
    assert "denied credential dek to ungranted.service: no grant" in denied
    everything = machine.run(["journalctl", "--no-pager", "-o", "export"]).stdout
    key_hex = expected(machine, "hex").strip()
    assert key_hex not in everything and key_hex.upper() not in everything
    assert PASSPHRASE not in everything
