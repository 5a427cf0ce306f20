"""The `unlocker` command, run as a real child process: exit codes, messages, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import write_secret

from unlocker.memory import environment_with_scrubbing


@pytest.fixture
def ks(tmp_path, cli):
    """An initialised keystore with one passphrase slot; returns (path, passphrase file)."""
    pw = write_secret(tmp_path / "pw", b"correct horse\n")
    r = cli("init", "--no-tpm2", "--kdf-time", "20", "--passphrase-file", pw, keystore=tmp_path / "keystore")
    assert r.returncode == 0, r.stderr
    return tmp_path / "keystore", pw


def test_init_creates_a_private_keystore(ks):
    path, _ = ks
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(b"unlocker-keystore v1\n")


def test_init_refuses_to_overwrite(ks, cli):
    path, pw = ks
    before = path.read_bytes()
    r = cli("init", "--no-tpm2", "--passphrase-file", pw, keystore=path)
    assert r.returncode == 1 and "already exists" in r.stderr
    assert path.read_bytes() == before


def test_check_exit_codes(ks, cli, tmp_path):
    path, pw = ks
    assert cli("unlock", "--check", "--passphrase-file", pw, keystore=path).returncode == 0
    wrong = cli("unlock", "--check", "--passphrase-file", write_secret(tmp_path / "w", b"nope"), keystore=path)
    assert wrong.returncode == 2
    assert wrong.stderr == "unlocker: no keyslot opened with that passphrase or key\n"


def test_exactly_one_trailing_newline_is_stripped(ks, cli, tmp_path):
    path, _ = ks
    assert cli("unlock", "--check", "--passphrase-file", write_secret(tmp_path / "a", b"correct horse"),
               keystore=path).returncode == 0
    assert cli("unlock", "--check", "--passphrase-file", write_secret(tmp_path / "b", b"correct horse\n\n"),
               keystore=path).returncode == 2


def test_passphrase_from_stdin(ks, cli):
    path, _ = ks
    assert cli("unlock", "--check", "--passphrase-file", "-", input=b"correct horse\n", keystore=path).returncode == 0


@pytest.mark.parametrize(("secret", "message"), [(b"", "empty"), (b"\n", "empty"), (b"x" * 513, "longer than 512")])
def test_empty_and_overlong_passphrases_are_refused(cli, tmp_path, secret, message):
    pw = write_secret(tmp_path / "pw", secret)
    r = cli("init", "--no-tpm2", "--kdf-time", "20", "--passphrase-file", pw, keystore=tmp_path / "keystore")
    assert r.returncode == 1 and message in r.stderr
    assert not (tmp_path / "keystore").exists()


def test_512_byte_passphrase_is_accepted(cli, tmp_path):
    pw = write_secret(tmp_path / "pw", b"x" * 512 + b"\n")
    r = cli("init", "--no-tpm2", "--kdf-time", "20", "--passphrase-file", pw, keystore=tmp_path / "keystore")
    assert r.returncode == 0, r.stderr


def test_enroll_recovery_prints_a_key_that_unlocks(ks, cli, tmp_path):
    path, pw = ks
    r = cli("enroll", "recovery", "--passphrase-file", pw, keystore=path)
    assert r.returncode == 0, r.stderr
    key = next(line.strip() for line in r.stdout.splitlines() if line.count("-") == 7)
    check = cli("unlock", "--check", "--passphrase-file", write_secret(tmp_path / "rk", key.encode()), keystore=path)
    assert check.returncode == 0 and "slot 1 opens" in check.stdout


def test_slots_json_lists_slots_without_secrets(ks, cli, tmp_path):
    path, pw = ks
    cli("enroll", "passphrase", "--passphrase-file", pw, "--new-passphrase-file",
        write_secret(tmp_path / "new", b"second one"), "--kdf-time", "20", keystore=path)
    r = cli("slots", "--json", keystore=path)
    rows = json.loads(r.stdout)
    assert [(row["slot"], row["type"]) for row in rows] == [(0, "passphrase"), (1, "passphrase")]
    assert rows[0]["kdf"]["algorithm"] == "argon2id"
    text = path.read_text()
    wrapped = [f.split("=", 1)[1] for f in text.split() if f.startswith(("key=", "salt="))]
    assert not any(w in r.stdout for w in wrapped)


def test_status_json(ks, cli):
    path, _ = ks
    info = json.loads(cli("status", "--json", keystore=path).stdout)["keystore"]
    assert info["generation"] == 1 and info["deks"][0]["state"] == "primary"


def test_wipe_slot_needs_another_slot(ks, cli, tmp_path):
    path, pw = ks
    r = cli("wipe-slot", "0", "--passphrase-file", pw, keystore=path)
    assert r.returncode == 1 and "never open again" in r.stderr


def test_a_wiped_passphrase_opens_neither_the_keystore_nor_its_backup(ks, cli, tmp_path):
    path, pw = ks
    wiped = write_secret(tmp_path / "wiped", b"second one")
    assert cli("enroll", "passphrase", "--passphrase-file", pw, "--new-passphrase-file", wiped,
               "--kdf-time", "20", keystore=path).returncode == 0
    r = cli("wipe-slot", "1", "--passphrase-file", pw, keystore=path)
    assert r.returncode == 0, r.stderr
    backup = path.with_name("keystore.bak")
    for kept in (path, backup):
        assert cli("unlock", "--check", "--passphrase-file", wiped, keystore=kept).returncode == 2, kept
        assert cli("unlock", "--check", "--passphrase-file", pw, keystore=kept).returncode == 0, kept


def test_errors_have_no_traceback_unless_debug(cli, tmp_path):
    missing = tmp_path / "nothing"
    r = cli("status", keystore=missing)
    assert r.returncode == 1 and "no keystore at" in r.stderr and "Traceback" not in r.stderr
    r = cli("--debug", "status", keystore=missing)
    assert "Traceback" in r.stderr


def test_damaged_keystore_message_names_the_file(ks, cli):
    path, pw = ks
    path.write_bytes(path.read_bytes()[:-10])
    r = cli("unlock", "--check", "--passphrase-file", pw, keystore=path)
    assert r.returncode == 1
    assert f"keystore {path} is damaged" in r.stderr and "Traceback" not in r.stderr


def test_usage_errors_exit_1_not_2(cli, tmp_path):
    assert cli("wipe-slot", "notanumber", keystore=tmp_path / "k").returncode == 1


# Runs `unlocker ARGS...`, reporting whether the process could dump core at the moment the store key is
# held (right after a slot opened).
HOLDING_THE_STORE_KEY = textwrap.dedent("""
    import ctypes, resource, sys
    from unlocker.cli.main import main
    from unlocker.keystore import storage
    real = storage.open_from
    def open_from(*args, **kwargs):
        opened = real(*args, **kwargs)
        dumpable = ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
        print(f"dumpable={dumpable} core={resource.getrlimit(resource.RLIMIT_CORE)}", file=sys.stderr)
        return opened
    storage.open_from = open_from
    sys.argv = ["unlocker", *sys.argv[1:]]
    main()
""")


@pytest.mark.parametrize("command", [
    ["unlock", "--check"],
    ["enroll", "passphrase", "--kdf-time", "1"],
    ["rotate", "passphrase", "--kdf-time", "1"],
    ["rotate", "dek"],
    ["wipe-slot", "1", "--slot", "0"],
])
def test_commands_that_hold_the_store_key_cannot_dump_core(two_slot_keystore, tmp_path, command):
    path, first, _ = two_slot_keystore
    argv = [sys.executable, "-c", HOLDING_THE_STORE_KEY, "--keystore", str(path), *command,
            "--passphrase-file", str(write_secret(tmp_path / "pw", first))]
    if command[0] in ("enroll", "rotate") and command[1] == "passphrase":
        argv += ["--new-passphrase-file", str(write_secret(tmp_path / "new", b"new passphrase"))]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=environment_with_scrubbing(),
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    assert "dumpable=0 core=(0, 0)" in p.stderr
