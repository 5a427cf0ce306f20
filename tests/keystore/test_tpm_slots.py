"""TPM keyslots end to end: the unlocker command against a real swtpm."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
from conftest import write_secret
from memscan import find_in_process

from unlocker.keystore import kdf, storage
from unlocker.keystore.fileformat import b64decode, b64encode, parse_argon2, parse_pcrs
from unlocker.memory import environment_with_scrubbing
from unlocker.tpm import esapi

pytestmark = pytest.mark.tpm
PASS = b"tpm slot passphrase"


@pytest.fixture
def tpm_keystore(fresh_swtpm, tmp_path, cli):
    """tpm2+passphrase slot 0 and a recovery slot 1 on a fresh swtpm; returns (path, pw file, recovery file)."""
    pw = write_secret(tmp_path / "pw", PASS)
    path = tmp_path / "keystore"
    r = cli("init", "--tpm2-device", fresh_swtpm.tcti, "--kdf-time", "20", "--passphrase-file", pw,
            "--recovery-key", keystore=path)
    assert r.returncode == 0, r.stderr
    assert "TPM found" in r.stdout and "tpm2+passphrase" in r.stdout
    key = next(line.strip() for line in r.stdout.splitlines() if line.count("-") == 7)
    return path, pw, write_secret(tmp_path / "recovery", key.encode())


def test_init_picks_tpm2_passphrase_when_a_tpm_answers(tpm_keystore, fresh_swtpm, cli):
    path, pw, _ = tpm_keystore
    assert [s.type for s in storage.read(path).slots] == ["tpm2+passphrase", "recovery"]
    r = cli("unlock", "--check", "--tpm2-device", fresh_swtpm.tcti, "--passphrase-file", pw, keystore=path)
    assert r.returncode == 0 and "slot 0 opens" in r.stdout, r.stderr


def test_passphrase_alone_does_not_open_the_tpm_slot(tpm_keystore, cli):
    path, pw, _ = tpm_keystore
    r = cli("unlock", "--check", "--slot", "0", "--passphrase-file", pw, keystore=path)
    assert r.returncode == 1 and "can be opened with what was supplied" in r.stderr


def test_each_wrong_passphrase_costs_exactly_one_tpm_try(tpm_keystore, fresh_swtpm, cli, tmp_path):
    path, pw, _ = tpm_keystore
    fresh_swtpm.set_da(max_tries=5)
    wrong = write_secret(tmp_path / "wrong", b"wrong")
    for expected in (1, 2):
        r = cli("unlock", "--check", "--tpm2-device", fresh_swtpm.tcti, "--passphrase-file", wrong, keystore=path)
        assert r.returncode == 2
        assert esapi.probe(fresh_swtpm.tcti).lockout_counter == expected
    r = cli("unlock", "--check", "--tpm2-device", fresh_swtpm.tcti, "--passphrase-file", pw, keystore=path)
    assert r.returncode == 0


def test_lockout_message_points_to_the_recovery_key(tpm_keystore, fresh_swtpm, cli, tmp_path):
    path, pw, recovery = tpm_keystore
    fresh_swtpm.set_da(max_tries=1)
    cli("unlock", "--check", "--tpm2-device", fresh_swtpm.tcti, "--passphrase-file",
        write_secret(tmp_path / "wrong", b"wrong"), keystore=path)
    r = cli("unlock", "--check", "--tpm2-device", fresh_swtpm.tcti, "--passphrase-file", pw, keystore=path)
    assert r.returncode == 1 and "lockout" in r.stderr and "recovery key" in r.stderr
    assert "Traceback" not in r.stderr
    assert esapi.probe(fresh_swtpm.tcti).lockout_counter == 1
    r = cli("unlock", "--check", "--tpm2-device", fresh_swtpm.tcti, "--passphrase-file", recovery, keystore=path)
    assert r.returncode == 0


def test_pcr_change_then_rotate_tpm2(tpm_keystore, fresh_swtpm, cli):
    path, pw, recovery = tpm_keystore
    fresh_swtpm.extend_pcr(7)
    r = cli("unlock", "--check", "--tpm2-device", fresh_swtpm.tcti, "--passphrase-file", pw, keystore=path)
    assert r.returncode == 1 and "PCR 7" in r.stderr and "rotate tpm2" in r.stderr
    assert cli("unlock", "--check", "--passphrase-file", recovery, keystore=path).returncode == 0
    r = cli("rotate", "tpm2", "--tpm2-device", fresh_swtpm.tcti, "--passphrase-file", recovery,
            "--new-passphrase-file", pw, "--kdf-time", "20", keystore=path)
    assert r.returncode == 0, r.stderr
    r = cli("unlock", "--check", "--tpm2-device", fresh_swtpm.tcti, "--passphrase-file", pw, keystore=path)
    assert r.returncode == 0 and "slot 0 opens" in r.stdout, r.stderr


def test_cleared_tpm_fails_closed_and_recovery_still_works(tpm_keystore, fresh_swtpm, cli):
    path, pw, recovery = tpm_keystore
    fresh_swtpm.clear()
    r = cli("unlock", "--check", "--tpm2-device", fresh_swtpm.tcti, "--passphrase-file", pw, keystore=path)
    assert r.returncode == 1 and "does not belong" in r.stderr
    assert cli("unlock", "--check", "--passphrase-file", recovery, keystore=path).returncode == 0


def test_absent_tpm_fails_closed(tpm_keystore, cli):
    path, pw, _ = tpm_keystore
    r = cli("unlock", "--check", "--tpm2-device", "swtpm:host=127.0.0.1,port=1", "--passphrase-file", pw,
            keystore=path)
    assert r.returncode == 1 and "no TPM answers at swtpm:host=127.0.0.1,port=1" in r.stderr


def test_tpm_only_slot_opens_without_a_passphrase(fresh_swtpm, tmp_path, cli):
    path = tmp_path / "keystore"
    pw = write_secret(tmp_path / "pw", b"pw")
    assert cli("init", "--no-tpm2", "--kdf-time", "20", "--passphrase-file", pw, keystore=path).returncode == 0
    r = cli("enroll", "tpm2", "--tpm2-device", fresh_swtpm.tcti, "--passphrase-file", pw, keystore=path)
    assert r.returncode == 0, r.stderr
    r = cli("unlock", "--check", "--tpm2-only", "--tpm2-device", fresh_swtpm.tcti, keystore=path)
    assert r.returncode == 0 and "slot 1 opens" in r.stdout, r.stderr


def test_status_shows_the_tpm_and_its_lockout_counter(tpm_keystore, fresh_swtpm, cli):
    import json
    path, _, _ = tpm_keystore
    info = json.loads(cli("status", "--json", "--tpm2-device", fresh_swtpm.tcti, keystore=path).stdout)
    assert info["tpm2"]["device"] == fresh_swtpm.tcti
    assert info["tpm2"]["lockout_counter"] == 0 and info["tpm2"]["max_tries"] == 3
    assert info["keystore"]["slots"][0]["tpm2"]["pcrs"] == "7"


CHILD = textwrap.dedent("""
    import os, signal, sys
    from unlocker.cli.main import main
    sys.argv = ["unlocker", *sys.argv[1:]]
    try:
        main()
    except SystemExit:
        pass
    os.kill(os.getpid(), signal.SIGSTOP)
""")


def test_share_and_k1_k2_are_wiped_after_unlock(tpm_keystore, fresh_swtpm):
    path, pw, _ = tpm_keystore
    slot = storage.read(path).slot(0)
    stretched = kdf.argon2id(PASS, b64decode(slot.param("salt")), parse_argon2(slot.param("argon2id")), 64)
    share = bytearray(32)
    sealed = esapi.Sealed(b64decode(slot.param("public")), b64decode(slot.param("private")),
                        parse_pcrs(slot.param("pcrs")), "sha256", True)
    esapi.unseal(fresh_swtpm.tcti, sealed, stretched[32:], share)
    child = subprocess.Popen([sys.executable, "-c", CHILD, "--keystore", str(path), "unlock", "--check",
                              "--tpm2-device", fresh_swtpm.tcti, "--passphrase-file", str(pw)],
                             env=environment_with_scrubbing(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, status = os.waitpid(child.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), child.stderr.read()
        assert b"slot 0 opens" in child.stdout.read1()
        for name, secret in (("K1", stretched[:32]), ("K2", stretched[32:]), ("share", share), ("passphrase", PASS)):
            assert find_in_process(child.pid, bytes(secret)) == [], f"{name} left in memory"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()


def test_systemd_creds_slot_opens_and_its_weakness_is_stated(fresh_swtpm, tmp_path, cli):
    path = tmp_path / "keystore"
    pw = write_secret(tmp_path / "pw", b"pw")
    new = write_secret(tmp_path / "new", b"creds passphrase")
    assert cli("init", "--no-tpm2", "--kdf-time", "20", "--passphrase-file", pw, keystore=path).returncode == 0
    r = cli("enroll", "systemd-creds+passphrase", "--tpm2-device", fresh_swtpm.tcti, "--passphrase-file", pw,
            "--new-passphrase-file", new, "--kdf-time", "20", keystore=path)
    assert r.returncode == 0, r.stderr
    r = cli("unlock", "--check", "--slot", "1", "--tpm2-device", fresh_swtpm.tcti, "--passphrase-file", new,
            keystore=path)
    assert r.returncode == 0 and "slot 1 opens" in r.stdout, r.stderr
    # Neither half alone: the passphrase without the TPM, or a wrong passphrase with it.
    assert cli("unlock", "--check", "--slot", "1", "--passphrase-file", new, keystore=path).returncode == 1
    r = cli("unlock", "--check", "--slot", "1", "--tpm2-device", fresh_swtpm.tcti, "--passphrase-file", pw,
            keystore=path)
    assert r.returncode == 2
    assert esapi.probe(fresh_swtpm.tcti).lockout_counter == 0  # the weakness: the TPM saw no wrong guess
    assert "the TPM does not count wrong passphrases" in cli("slots", keystore=path).stdout


def test_a_forged_parent_pin_is_what_unseal_compares_with(tpm_keystore, fresh_swtpm, cli):
    """The `parent` pin comes from the slot line, which nothing authenticates before the unseal: whoever
    can write the file chooses the name unseal compares with (docs/TPM.md). Here a name that is not this
    TPM's primary: refused before any session, with no TPM try spent; an interposer would write its own."""
    path, pw, _ = tpm_keystore
    keystore = storage.read(path)
    slot = keystore.slot(0)
    real = b64decode(slot.param("parent"))
    forged_name = real[:2] + bytes(b ^ 0xFF for b in real[2:])
    params = tuple((k, b64encode(forged_name) if k == "parent" else v) for k, v in slot.params)
    forged = replace(keystore, slots=(replace(slot, params=params), *keystore.slots[1:]))
    path.write_bytes(forged.serialize())  # parses: the unkeyed sums are recomputed, the MAC is untouched
    r = cli("unlock", "--check", "--slot", "0", "--tpm2-device", fresh_swtpm.tcti, "--passphrase-file", pw,
            keystore=path)
    assert r.returncode == 1 and "storage key is not the one it was sealed under" in r.stderr, r.stderr
    assert esapi.probe(fresh_swtpm.tcti).lockout_counter == 0
