"""clevis slots end to end: the unlocker command against real Tang servers (and a real swtpm for
clevis+tpm2), and Debian's `clevis decrypt` pointed at what `unlocker slots --json` shows."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from conftest import write_secret
from memscan import find_in_process

from unlocker.clevis import pins
from unlocker.keystore import kdf, storage
from unlocker.keystore.slots import Secrets
from unlocker.keystore.unlock import open_keystore
from unlocker.memory import environment_with_scrubbing

PASS = b"clevis slot passphrase"


@pytest.fixture
def keystore(tmp_path, cli):
    pw = write_secret(tmp_path / "pw", PASS)
    path = tmp_path / "keystore"
    assert cli("init", "--no-tpm2", "--kdf-time", "20", "--passphrase-file", pw, keystore=path).returncode == 0
    return path, pw


def sss(servers, t=2) -> str:
    return json.dumps({"t": t, "pins": {"tang": [s.config() for s in servers]}})


def test_enroll_tang_then_unlock_unattended(keystore, tang_servers, cli):
    path, pw = keystore
    r = cli("enroll", "clevis", "tang", json.dumps(tang_servers[0].config()), "--passphrase-file", pw, keystore=path)
    assert r.returncode == 0 and "added slot 1 (clevis)" in r.stdout, r.stderr
    r = cli("unlock", "--check", "--unattended", keystore=path)
    assert r.returncode == 0 and "slot 1 opens" in r.stdout, r.stderr


def test_slots_json_shows_pin_servers_and_a_jwe_clevis_decrypts(keystore, tang_servers, cli):
    path, pw = keystore
    assert cli("enroll", "clevis", "sss", sss(tang_servers), "--passphrase-file", pw, keystore=path).returncode == 0
    row = json.loads(cli("slots", "--json", keystore=path).stdout)[1]
    assert row["type"] == "clevis" and row["clevis"]["pin"] == "sss" and row["clevis"]["t"] == 2
    assert [s["url"] for s in row["clevis"]["servers"]] == [s.url for s in tang_servers]
    p = subprocess.run(["clevis", "decrypt"], input=row["clevis"]["jwe"].encode(), capture_output=True, timeout=60)
    assert p.returncode == 0 and len(p.stdout) == 32, p.stderr
    human = cli("slots", keystore=path).stdout
    assert "sss 2 of " + ", ".join(s.url for s in tang_servers) in human


def test_unattended_check_names_each_failing_server_and_exits_2(keystore, tang_servers, cli):
    path, pw = keystore
    assert cli("enroll", "clevis", "sss", sss(tang_servers), "--passphrase-file", pw, keystore=path).returncode == 0
    tang_servers[0].stop()
    tang_servers[1].stop()
    start = time.monotonic()
    r = cli("unlock", "--check", "--unattended", "--network-timeout", "3", keystore=path)
    assert r.returncode == 2
    assert "slot 1 (clevis): sss needs 2 of 3 pins" in r.stderr
    assert f"{tang_servers[0].url}: refused" in r.stderr and f"{tang_servers[1].url}: refused" in r.stderr
    assert "Traceback" not in r.stderr
    assert time.monotonic() - start < 10
    # The passphrase still opens: the network slot is one way in, not the only one.
    assert cli("unlock", "--check", "--passphrase-file", pw, keystore=path).returncode == 0


def test_unattended_check_without_unattended_slots_exits_2(keystore, cli):
    path, _ = keystore
    r = cli("unlock", "--check", "--unattended", keystore=path)
    assert r.returncode == 2 and "no slot of this keystore opens without a person" in r.stderr


def test_enroll_refuses_an_unpinned_server_and_writes_nothing(keystore, tang_servers, cli):
    path, pw = keystore
    before = path.read_bytes()
    r = cli("enroll", "clevis", "tang", json.dumps({"url": tang_servers[0].url}), "--passphrase-file", pw,
            keystore=path)
    assert r.returncode == 1 and f"pass one of: {tang_servers[0].signing_thp()}" in r.stderr
    assert path.read_bytes() == before


def test_enroll_clevis_needs_pin_and_config(keystore, cli):
    path, pw = keystore
    r = cli("enroll", "clevis", "--passphrase-file", pw, keystore=path)
    assert r.returncode == 1 and "needs PIN and CONFIG" in r.stderr


def test_clevis_passphrase_needs_both_the_network_and_the_person(keystore, tang_servers, cli, tmp_path):
    path, pw = keystore
    second = write_secret(tmp_path / "second", b"network and person")
    r = cli("enroll", "clevis+passphrase", "tang", json.dumps(tang_servers[0].config()), "--passphrase-file", pw,
            "--new-passphrase-file", second, "--kdf-time", "20", keystore=path)
    assert r.returncode == 0, r.stderr
    ks = storage.read(path)
    assert open_keystore(ks, Secrets(bytearray(b"network and person"), None, pins.DEFAULT_TIMEOUTS)).slot_index == 1
    tang_servers[0].stop()
    r = cli("unlock", "--check", "--slot", "1", "--passphrase-file", second, "--network-timeout", "2", keystore=path)
    assert r.returncode == 2 and f"{tang_servers[0].url}: refused" in r.stderr
    r = cli("unlock", "--check", "--unattended", keystore=path)
    assert r.returncode == 2  # it is not an unattended slot


@pytest.mark.tpm
def test_clevis_tpm2_needs_both_the_network_and_the_tpm(keystore, tang_servers, fresh_swtpm, cli):
    path, pw = keystore
    r = cli("enroll", "clevis+tpm2", "tang", json.dumps(tang_servers[0].config()), "--tpm2-device",
            fresh_swtpm.tcti, "--passphrase-file", pw, keystore=path)
    assert r.returncode == 0, r.stderr
    r = cli("unlock", "--check", "--unattended", "--tpm2-device", fresh_swtpm.tcti, keystore=path)
    assert r.returncode == 0 and "slot 1 opens" in r.stdout, r.stderr
    r = cli("unlock", "--check", "--unattended", keystore=path)  # no TPM given and none at /dev/tpmrm0
    assert r.returncode == 2 and "slot 1 (clevis+tpm2): not tried: no TPM found" in r.stderr
    tang_servers[0].stop()
    r = cli("unlock", "--check", "--unattended", "--tpm2-device", fresh_swtpm.tcti, keystore=path)
    assert r.returncode == 2 and f"{tang_servers[0].url}: refused" in r.stderr


def test_rotate_kek_refuses_to_lose_a_clevis_slot(keystore, tang_servers, cli):
    path, pw = keystore
    assert cli("enroll", "clevis", "tang", json.dumps(tang_servers[0].config()), "--passphrase-file", pw,
               keystore=path).returncode == 0
    before = path.read_bytes()
    r = cli("rotate", "kek", "--passphrase-file", pw, keystore=path)
    assert r.returncode == 1 and "--drop-slot 1" in r.stderr
    assert path.read_bytes() == before


def test_rotation_is_reported_and_rebind_follows_it(keystore, tang_servers, cli):
    path, pw = keystore
    assert cli("enroll", "clevis", "sss", sss(tang_servers), "--passphrase-file", pw, keystore=path).returncode == 0
    tang_servers[0].rotate()
    # Still opens: the server keeps the old key, hidden, for /rec.
    assert cli("unlock", "--check", "--unattended", keystore=path).returncode == 0
    report = json.loads(cli("tang-report", "--json", keystore=path).stdout)
    assert [s["state"] for s in report[0]["servers"]] == ["rotated", "current", "current"]
    assert "-> unlocker rebind 1" in cli("tang-report", keystore=path).stdout
    r = cli("rebind", "1", keystore=path)  # unattended: the slot opens itself through the servers
    assert r.returncode == 0 and "bound to the servers' current keys" in r.stdout, r.stderr
    report = json.loads(cli("tang-report", "--json", keystore=path).stdout)
    assert [s["state"] for s in report[0]["servers"]] == ["current"] * 3
    # Now the old key may go, and the slot no longer depends on it.
    tang_servers[0].delete_hidden_keys()
    tang_servers[1].stop()
    r = cli("unlock", "--check", "--unattended", keystore=path)
    assert r.returncode == 0, r.stderr


def test_rebind_after_the_old_keys_were_deleted_fails_named_and_writes_nothing(keystore, tang_servers, cli):
    path, pw = keystore
    assert cli("enroll", "clevis", "tang", json.dumps(tang_servers[0].config()), "--passphrase-file", pw,
               keystore=path).returncode == 0
    # Too late: the slot can no longer open (the server 404s the old key), so there is nothing to re-bind.
    tang_servers[0].rotate()
    tang_servers[0].delete_hidden_keys()
    before = path.read_bytes()
    r = cli("rebind", "1", keystore=path)
    assert r.returncode == 2 and "unknown key" in r.stderr
    assert path.read_bytes() == before


@pytest.mark.tpm
def test_rotate_tpm2_leaves_a_clevis_tpm2_slot_alone_and_says_so(keystore, tang_servers, fresh_swtpm, cli):
    path, pw = keystore
    assert cli("enroll", "clevis+tpm2", "tang", json.dumps(tang_servers[0].config()), "--tpm2-device",
               fresh_swtpm.tcti, "--passphrase-file", pw, keystore=path).returncode == 0
    before = path.read_bytes()
    r = cli("rotate", "tpm2", "--tpm2-device", fresh_swtpm.tcti, "--passphrase-file", pw, keystore=path)
    assert r.returncode == 1 and "slot 1 (clevis+tpm2) is not re-sealed" in r.stderr
    assert "no TPM slot to re-seal" in r.stderr and "Traceback" not in r.stderr
    assert path.read_bytes() == before


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


@contextlib.contextmanager
def _stopped_after_unattended_check(path) -> Iterator[int]:
    """`unlocker unlock --check --unattended` in a child that stops itself once slot 1 opened; its pid, for
    a memory scan. Killed afterwards, whatever the test found."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, "--keystore", str(path), "unlock", "--check",
                              "--unattended"], env=environment_with_scrubbing(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        _, status = os.waitpid(child.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), child.stderr.read()
        assert b"slot 1 opens" in child.stdout.read1()
        yield child.pid
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()


def test_the_slot_secret_and_slot_key_are_wiped_after_an_unattended_unlock(keystore, tang_servers, cli):
    path, pw = keystore
    assert cli("enroll", "clevis", "sss", sss(tang_servers), "--passphrase-file", pw, keystore=path).returncode == 0
    ks = storage.read(path)
    secret = pins.decrypt(ks.slot(1).param("jwe"))
    slot_key = kdf.hkdf(secret, ks.id, b"unlocker/v1 slot clevis")
    with _stopped_after_unattended_check(path) as pid:
        for name, value in (("slot secret S", secret), ("slot key", slot_key)):
            assert find_in_process(pid, bytes(value)) == [], f"{name} left in memory"


def test_the_jwe_content_key_is_wiped_after_an_unattended_unlock(keystore, tang_servers, cli):
    """The CEK opens the JWE as well as S does. It is fixed by the JWE and the server's key, so the test
    computes it with the server's private key (Z = s·E) and looks for it."""
    from Crypto.PublicKey import ECC

    from unlocker.clevis.jose import concat_kdf, parse_compact, unb64url

    path, pw = keystore
    assert cli("enroll", "clevis", "tang", json.dumps(tang_servers[0].config()), "--passphrase-file", pw,
               keystore=path).returncode == 0
    jwe = parse_compact(storage.read(path).slot(1).param("jwe"))
    server = json.loads((tang_servers[0].db / f"{jwe.header['kid']}.jwk").read_text())
    epk = jwe.header["epk"]
    e = ECC.EccPoint(int.from_bytes(unb64url(epk["x"]), "big"), int.from_bytes(unb64url(epk["y"]), "big"), "P-521")
    z = e * int.from_bytes(unb64url(server["d"]), "big")
    cek = concat_kdf(int(z.x).to_bytes(66, "big"), "A256GCM", jwe.header)
    with _stopped_after_unattended_check(path) as pid:
        assert find_in_process(pid, bytes(cek)) == [], "the CEK left in memory"
        assert find_in_process(pid, int(z.x).to_bytes(66, "big")) == [], "Z left in memory"


def test_enroll_with_a_server_down_names_it_and_writes_nothing(keystore, tang_servers, cli):
    path, pw = keystore
    config = sss(tang_servers)
    tang_servers[1].stop()
    before = path.read_bytes()
    r = cli("enroll", "clevis", "sss", config, "--passphrase-file", pw, keystore=path)
    assert r.returncode == 1
    assert r.stderr == f"unlocker: cannot fetch the advertisement: {tang_servers[1].url}: refused\n"
    assert path.read_bytes() == before
