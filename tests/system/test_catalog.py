"""The journal catalog in a real systemd 252: installed by 'unlocker install', shown by journalctl -x."""

from __future__ import annotations

import pytest

from unlocker.service import audit

from .helpers import setup, start_broker

pytestmark = pytest.mark.system


def test_journalctl_knows_every_record_and_explains_a_real_one(container):
    c = container
    setup(c, [])
    listed = c.run(["journalctl", "--list-catalog", audit.DELIVERED, audit.DENIED, audit.UNLOCKED,
                    audit.LOCKED, audit.ROTATED]).stdout.decode()
    for message_id in (audit.DELIVERED, audit.DENIED, audit.UNLOCKED, audit.LOCKED, audit.ROTATED):
        assert f"{message_id} unlocker: unlocker " in listed, listed
    start_broker(c)
    c.run(["unlocker", "lock"])
    # -o cat drops the explanation: the default short output shows it under the record.
    explained = c.run(["journalctl", "--no-pager", "-x", f"MESSAGE_ID={audit.LOCKED}"]).stdout.decode()
    # The record itself, then the catalog entry with the record's own fields filled in.
    assert "broker locked: keys wiped from memory" in explained
    assert "Subject: unlocker broker is locked" in explained, explained
    assert "run 'unlocker unlock'" in explained
    assert "@UNLOCKER_" not in explained
