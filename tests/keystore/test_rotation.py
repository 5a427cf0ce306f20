"""`unlocker rotate`, `retire`, `purge`: results, crash safety at every write, a full disk, concurrency."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys

import pytest
from conftest import write_secret
from test_storage import CHILD
from tiny_disk import fill

from unlocker.errors import UnlockerError
from unlocker.keystore import storage
from unlocker.keystore.slots import Secrets
from unlocker.keystore.unlock import open_keystore
from unlocker.memory import environment_with_scrubbing

OLD, NEW, OTHER = b"old passphrase", b"new passphrase", b"other passphrase"
STEPS = ["backup-written", "backup-synced", "backup-renamed", "keystore-written", "keystore-synced",
         "keystore-renamed"]


@pytest.fixture
def ks(tmp_path, cli):
    """Passphrase slot 0 (OLD) and slot 1 (OTHER)."""
    path = tmp_path / "keystore"
    files = {name: write_secret(tmp_path / name, secret) for name, secret in
             (("old", OLD), ("new", NEW), ("other", OTHER), ("wrong", b"wrong"))}
    r = cli("init", "--no-tpm2", "--kdf-time", "20", "--passphrase-file", files["old"], keystore=path)
    assert r.returncode == 0
    assert cli("enroll", "passphrase", "--kdf-time", "20", "--passphrase-file", files["old"],
               "--new-passphrase-file", files["other"], keystore=path).returncode == 0
    return path, files


def opens(path, secret) -> int | None:
    try:
        return open_keystore(storage.read(path), Secrets(bytearray(secret))).slot_index
    except UnlockerError:
        return None


def test_rotate_passphrase_changes_only_that_slot(ks, cli):
    path, f = ks
    before = path.read_text().splitlines()
    r = cli("rotate", "passphrase", "--passphrase-file", f["old"], "--new-passphrase-file", f["new"],
            "--kdf-time", "20", keystore=path)
    assert r.returncode == 0, r.stderr
    assert (opens(path, OLD), opens(path, NEW), opens(path, OTHER)) == (None, 0, 1)
    after = path.read_text().splitlines()
    changed = [b.split(" ")[0] + (" " + b.split(" ")[1] if b.startswith("slot ") else "")
               for b, a in zip(before, after, strict=True) if a != b]
    assert changed == ["generation", "slot 0", "slots", "mac", "sha256"]
    # The backup is rotated too: no copy on disk opens with the old passphrase.
    assert opens(storage.backup_path(path), OLD) is None


def test_rotate_with_a_wrong_current_passphrase_changes_nothing(ks, cli):
    path, f = ks
    before = path.read_bytes(), storage.backup_path(path).read_bytes()
    r = cli("rotate", "passphrase", "--passphrase-file", f["wrong"], "--new-passphrase-file", f["new"], keystore=path)
    assert r.returncode == 2
    assert (path.read_bytes(), storage.backup_path(path).read_bytes()) == before


@pytest.mark.parametrize("write", [1, 2])
@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_every_write_of_rotate_passphrase(ks, write, step):
    """Kill at each step of each of the two writes: the old passphrase or the new one opens, never neither."""
    path, f = ks
    child = CHILD.replace("if name == step:", "if name == step and (seen.append(name) or seen.count(name) == WRITE):")
    child = child.replace("step = sys.argv[1]", f"step = sys.argv[1]; seen = []; WRITE = {write}")
    p = subprocess.run([sys.executable, "-c", child, step, "--keystore", str(path), "rotate", "passphrase",
                        "--passphrase-file", str(f["old"]), "--new-passphrase-file", str(f["new"]),
                        "--kdf-time", "20"], capture_output=True, timeout=60, env=environment_with_scrubbing())
    assert p.returncode == -signal.SIGKILL, p.stderr
    old, new = opens(path, OLD), opens(path, NEW)
    assert old is not None or new is not None
    assert opens(path, OTHER) == 1
    if write == 2 and step == "keystore-renamed":
        assert old is None and new == 0


def test_disk_full_during_rotation_leaves_everything_byte_identical(ks, cli, tmp_path):
    path, f = ks
    with fill(tmp_path / "tiny", [path, storage.backup_path(path)]) as moved:
        before = {p.name: p.read_bytes() for p in moved}
        r = cli("rotate", "passphrase", "--passphrase-file", f["old"], "--new-passphrase-file", f["new"],
                "--kdf-time", "20", keystore=moved[0])
        assert r.returncode == 1 and "the disk is full" in r.stderr and "Traceback" not in r.stderr
        assert {p.name: p.read_bytes() for p in moved} == before


def test_a_second_rotation_fails_cleanly_while_one_runs(ks, cli):
    path, f = ks
    before = path.read_bytes()
    fd = os.open(path.with_name("keystore.lock"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = cli("rotate", "dek", "--passphrase-file", f["old"], keystore=path)
    finally:
        os.close(fd)
    assert r.returncode == 1 and "another unlocker command is changing" in r.stderr
    assert path.read_bytes() == before


def test_rotate_dek_then_retire_and_purge(ks, cli):
    path, f = ks
    assert cli("rotate", "dek", "--passphrase-file", f["old"], keystore=path).returncode == 0
    deks = storage.read(path).deks
    assert [(d.id, d.state) for d in deks] == [(1, "active"), (2, "primary")]
    opened = open_keystore(storage.read(path), Secrets(bytearray(OLD)))
    first = bytes(opened.dek(1))
    r = cli("retire", "2", "--passphrase-file", f["old"], "--yes", keystore=path)
    assert r.returncode == 1 and "is the primary" in r.stderr
    r = cli("purge", "1", "--passphrase-file", f["old"], "--yes", keystore=path)
    assert r.returncode == 1 and "not retired" in r.stderr
    r = cli("retire", "1", "--passphrase-file", f["old"], keystore=path)
    assert r.returncode == 1 and "confirm with --yes" in r.stderr
    assert cli("retire", "1", "--passphrase-file", f["old"], "--yes", keystore=path).returncode == 0
    assert [(d.id, d.state) for d in storage.read(path).deks] == [(1, "retired"), (2, "primary")]
    assert bytes(open_keystore(storage.read(path), Secrets(bytearray(OLD))).dek(1)) == first
    assert cli("purge", "1", "--passphrase-file", f["old"], "--yes", keystore=path).returncode == 0
    assert [d.id for d in storage.read(path).deks] == [2]
    assert b"dek 1 " not in storage.backup_path(path).read_bytes()  # gone from the backup too


def test_rotate_kek_rewraps_everything_and_keeps_every_secret(ks, cli, tmp_path):
    path, f = ks
    assert cli("rotate", "dek", "--passphrase-file", f["old"], keystore=path).returncode == 0
    old_copy = path.read_bytes()
    before = open_keystore(storage.read(path), Secrets(bytearray(OLD)))
    r = cli("rotate", "kek", "--passphrase-file", f["old"], "--slot-passphrase-file", f"1={f['other']}",
            "--kdf-time", "20", keystore=path)
    assert r.returncode == 0, r.stderr
    after = open_keystore(storage.read(path), Secrets(bytearray(OLD)))
    assert after.store_key != before.store_key
    assert [bytes(after.dek(i)) for i in (1, 2)] == [bytes(before.dek(i)) for i in (1, 2)]
    assert opens(path, OTHER) == 1
    assert storage.backup_path(path).read_bytes() == path.read_bytes()
    assert old_copy != path.read_bytes()


def test_rotate_kek_refuses_to_drop_a_slot_it_cannot_recreate(ks, cli, tmp_path):
    path, f = ks
    before = path.read_bytes()
    r = cli("rotate", "kek", "--passphrase-file", f["old"], "--slot-passphrase-file", f"1={f['wrong']}",
            "--kdf-time", "20", keystore=path)
    assert r.returncode == 2  # the passphrase given for slot 1 is not slot 1's
    r = cli("rotate", "kek", "--passphrase-file", f["old"], "--kdf-time", "20", keystore=path)
    assert r.returncode == 1 and "no terminal" in r.stderr
    assert path.read_bytes() == before
    r = cli("rotate", "kek", "--passphrase-file", f["old"], "--drop-slot", "1", "--kdf-time", "20", keystore=path)
    assert r.returncode == 0 and [s.index for s in storage.read(path).slots] == [0]


@pytest.mark.parametrize("kind", ["dek", "kek"])
@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_every_write_of_rotate_dek_and_kek(ks, kind, step):
    """One atomic write each: after a kill the keystore opens with every passphrase, with the old DEKs
    or with the new ones, never a mix."""
    path, f = ks
    before = open_keystore(storage.read(path), Secrets(bytearray(OLD)))
    extra = ["--slot-passphrase-file", f"1={f['other']}", "--kdf-time", "20"] if kind == "kek" else []
    p = subprocess.run([sys.executable, "-c", CHILD, step, "--keystore", str(path), "rotate", kind,
                        "--passphrase-file", str(f["old"]), *extra],
                       capture_output=True, timeout=60, env=environment_with_scrubbing())
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert opens(path, OLD) == 0 and opens(path, OTHER) == 1
    after = open_keystore(storage.read(path), Secrets(bytearray(OLD)))
    assert bytes(after.dek(1)) == bytes(before.dek(1))
    # kek rotates the backup too, and writes it after the keystore: a kill there comes after the switch.
    done = step == "keystore-renamed" or (kind == "kek" and step.startswith("backup"))
    assert [d.id for d in after.keystore.deks] == ([1, 2] if done and kind == "dek" else [1])
    assert (after.store_key != before.store_key) == (done and kind == "kek")
