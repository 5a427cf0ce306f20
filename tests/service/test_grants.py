"""Grant list parsing and the drop-ins that `unlocker grant` writes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unlocker.client.formats import Format
from unlocker.errors import InvalidInput
from unlocker.service import grants
from unlocker.service.peer import PeerError, parse_address


def test_round_trip(tmp_path):
    g = {("mariadb.service", "dek"): grants.Grant("mariadb.service", "dek", Format.mariadb)}
    grants.save(g, tmp_path / "grants")
    assert grants.load(tmp_path / "grants") == g


@pytest.mark.parametrize("line", [
    "mariadb.service dek",
    "mariadb.service dek nosuchformat",
    "mariadb.socket dek raw",
    "../etc.service dek raw",
    "a.service ../x raw",
    "a.service a%b raw",
    "a.service a:b raw",
    "a.service a\\b raw",
    "foo@.service dek raw",
])
def test_bad_lines_are_refused(line):
    with pytest.raises(InvalidInput):
        grants.parse(line + "\n")


def test_a_bad_line_is_named_with_its_file_and_number(tmp_path):
    path = tmp_path / "grants"
    path.write_text("# comment\ngood.service dek raw\nbad.service a%b raw\n")
    with pytest.raises(InvalidInput, match="^" + re.escape(f"{path} line 3: 'a%b' is not a valid credential id")):
        grants.load(path)


BAD_IDS = ["a b", "a\nb", "dek\nExecStartPre=/bin/evil", "a%b", "a:b", "a\\b", "a/b", "", ".", "..", ".hidden",
           "-x", "x" * 65, "d\u00e9k", "a\tb"]
GOOD_IDS = ["dek", "db.key", "my-key_2", "_x", "x" * 64, "1"]


@pytest.mark.parametrize("credential", BAD_IDS)
def test_bad_credential_ids_are_refused_everywhere(credential):
    with pytest.raises(InvalidInput, match="not a valid credential id"):
        grants.check("a.service", credential)
    with pytest.raises(PeerError):
        parse_address(f"\0ab/unit/a.service/{credential}")


@pytest.mark.parametrize("credential", GOOD_IDS)
def test_good_credential_ids_are_accepted_everywhere(credential):
    grants.check("a.service", credential)
    assert parse_address(f"\0ab/unit/a.service/{credential}").credential == credential


def _systemd_accepts(credential: str) -> bool:
    """systemd 252's credential_name_valid(): filename_is_valid() && fdname_is_valid()."""
    return (credential not in ("", ".", "..") and "/" not in credential and len(credential.encode()) <= 255
            and all(" " <= c < "\x7f" and c != ":" for c in credential))


@given(st.text(alphabet=st.characters(max_codepoint=0x7f) | st.sampled_from("\u00e9\u2028"), max_size=70))
def test_one_rule_for_the_grant_list_and_the_peer_address_within_systemds(credential):
    try:
        grants.check("a.service", credential)
        granted = True
    except InvalidInput:
        granted = False
    try:
        delivered = parse_address(f"\0ab/unit/a.service/{credential}").credential == credential
    except PeerError:
        delivered = False
    assert granted == delivered
    assert not granted or _systemd_accepts(credential)


def test_a_template_without_an_instance_is_refused():
    with pytest.raises(InvalidInput, match=re.escape("template: grant each instance, like foo@NAME.service")):
        grants.check("foo@.service", "dek")
    grants.check("foo@bar.service", "dek")


def test_a_list_that_would_not_parse_back_is_never_written(tmp_path):
    path = tmp_path / "grants"
    good = {("a.service", "dek"): grants.Grant("a.service", "dek", Format.raw)}
    grants.save(good, path)
    before = path.read_bytes()
    bad = {**good, ("b.service", "a b"): grants.Grant("b.service", "a b", Format.raw)}
    with pytest.raises(InvalidInput, match="'a b' is not a valid credential id"):
        grants.save(bad, path)
    assert path.read_bytes() == before
    assert grants.load(path) == good


def test_no_dropin_for_an_id_that_would_inject_a_directive(tmp_path):
    with pytest.raises(InvalidInput):
        grants.write_dropin(grants.Grant("a.service", "dek\nExecStartPre=/bin/evil", Format.raw), tmp_path)
    assert not (tmp_path / "a.service.d").exists()


def test_names_that_overflow_systemds_address_are_refused():
    with pytest.raises(InvalidInput, match="108 bytes"):
        grants.check("a" * 80 + ".service", "dek")
    grants.check("a" * 60 + ".service", "dek")


def test_dropin_wants_the_broker_and_asks_for_a_sealed_credential(tmp_path):
    g = grants.Grant("app.service", "dek", Format.json)
    path = grants.write_dropin(g, tmp_path)
    assert path == tmp_path / "app.service.d" / "50-unlocker-dek.conf"
    text = path.read_text()
    assert "Wants=unlocker.service\nAfter=unlocker.service\n" in text
    assert "LoadCredentialEncrypted=dek:/run/unlocker/sealed-credentials.sock\n" in text
    assert "ExecStartPre" not in text  # systemd's decryption fails an empty credential: no check command
    grants.remove_dropin(g, tmp_path)
    assert not (tmp_path / "app.service.d").exists()


def _record_fsyncs(monkeypatch) -> list[str]:
    """The paths fsync'ed (files and directories), in order."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def _written_like_the_keystore(path: Path, write, monkeypatch) -> None:
    """write() replaces path crash-safe: a new file (the old inode keeps the old bytes, so no reader
    ever sees a half-written file), fsync'ed before the rename, then the directory fsync'ed."""
    keep = path.with_name("old-inode")
    os.link(path, keep)
    before = keep.read_bytes()
    synced = _record_fsyncs(monkeypatch)
    write()
    assert keep.read_bytes() == before, "written in place"
    assert path.stat().st_ino != keep.stat().st_ino
    assert synced == [str(path.with_name(f".{path.name}.tmp")), str(path.parent)]
    assert path.stat().st_mode & 0o777 == 0o644
    assert not path.with_name(f".{path.name}.tmp").exists()


def test_the_grant_list_is_written_crash_safe(tmp_path, monkeypatch):
    path = tmp_path / "grants"
    a = grants.Grant("a.service", "dek", Format.raw)
    grants.save({("a.service", "dek"): a}, path)
    b = grants.Grant("b.service", "dek", Format.raw)
    _written_like_the_keystore(path, lambda: grants.save({("a.service", "dek"): a, ("b.service", "dek"): b}, path),
                               monkeypatch)
    assert set(grants.load(path)) == {("a.service", "dek"), ("b.service", "dek")}


def test_a_dropin_is_written_crash_safe(tmp_path, monkeypatch):
    g = grants.Grant("app.service", "dek", Format.json)
    path = grants.write_dropin(g, tmp_path)
    path.write_text("# an older drop-in\n")
    _written_like_the_keystore(path, lambda: grants.write_dropin(g, tmp_path), monkeypatch)
    assert "LoadCredentialEncrypted=dek:" in path.read_text()
