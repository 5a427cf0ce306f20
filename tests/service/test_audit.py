"""The journal records' ids and the catalog that explains them stay in step."""

from __future__ import annotations

import re
from pathlib import Path

from unlocker.service import audit

CATALOG = Path(__file__).resolve().parents[2] / "catalog" / "unlocker.catalog"
HAND_TYPED = {"a4e1d2c3b5f6478899aabbccddeeff01", "6f2b1c8e5a3d4f0e9b7c2a1d0e3f4a5b",
              "1b2c3d4e5f60718293a4b5c6d7e8f901", "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
              "c0ffee00d15ea5e0ba5eba11deadbeef"}


def audit_ids() -> dict[str, str]:
    return {name: value for name, value in vars(audit).items()
            if name.isupper() and isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}", value)}


def catalog_entries() -> dict[str, str]:
    """id -> entry text, parsed the way journalctl does: a '-- <id>' line starts an entry."""
    entries: dict[str, str] = {}
    current = None
    for line in CATALOG.read_text().splitlines():
        if m := re.fullmatch(r"-- ([0-9a-f]{32})", line):
            current = m.group(1)
            assert current not in entries, f"{current} twice in the catalog"
            entries[current] = ""
        elif current:
            entries[current] += line + "\n"
    return entries


def test_every_record_has_a_catalog_entry_and_every_entry_a_record():
    ids = audit_ids()
    assert set(ids) == {"DELIVERED", "DENIED", "UNLOCKED", "LOCKED", "ROTATED"}
    assert set(ids.values()) == set(catalog_entries())


def test_ids_are_random_version_4_ids_not_the_hand_typed_ones():
    ids = set(audit_ids().values())
    assert len(ids) == 5
    assert not ids & HAND_TYPED
    # systemd-id128 new makes RFC 4122 version 4 ids: the version nibble is 4, the variant bits 10.
    assert all(i[12] == "4" and i[16] in "89ab" for i in ids)


def test_each_entry_has_a_subject_and_says_what_to_do():
    for message_id, text in catalog_entries().items():
        assert re.search(r"^Subject: unlocker .+$", text, re.M), message_id
        assert "Defined-By: unlocker" in text, message_id
        body = text.split("\n\n", 1)[1]
        assert "unlocker " in body and "'" in body, f"{message_id}: the entry names no command to run"


def test_the_fields_an_entry_substitutes_are_fields_the_record_has():
    # journalctl -x leaves @FIELD@ unreplaced when the record lacks it: every one must be a field audit sends.
    sent = set(re.findall(r"\b([a-z_]+)=", Path(audit.__file__).read_text()))
    for message_id, text in catalog_entries().items():
        for field in re.findall(r"@UNLOCKER_([A-Z_]+)@", text):
            assert field.lower() in sent, f"{message_id}: @UNLOCKER_{field}@ is not a field of any record"
