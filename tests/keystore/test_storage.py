"""Crash safety, a full disk, concurrent writers, and the backup generation."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import FAST, write_secret
from tiny_disk import fill

from unlocker.errors import KeystoreBusy, UnlockerError
from unlocker.keystore import storage
from unlocker.keystore.slots import Secrets
from unlocker.keystore.unlock import open_keystore
from unlocker.memory import environment_with_scrubbing

WRITE_STEPS = [
    "backup-written", "backup-synced", "backup-renamed",
    "keystore-written", "keystore-synced", "keystore-renamed",
]

# Runs `unlocker ARGS...` in this child process, SIGKILLing itself at the named write step.
CHILD = textwrap.dedent("""
    import os, signal, sys
    from unlocker.cli.main import main
    from unlocker.keystore import storage
    step = sys.argv[1]
    def hook(name):
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)
    storage.fault_hook = hook
    sys.argv = ["unlocker", *sys.argv[2:]]
    main()
""")


def _opens(path: Path, secret: bytes) -> bool:
    try:
        open_keystore(storage.read(path), Secrets(bytearray(secret)))
        return True
    except UnlockerError:
        return False


@pytest.mark.parametrize("step", WRITE_STEPS)
def test_sigkill_at_each_write_step_leaves_old_or_new(two_slot_keystore, tmp_path, step):
    path, first, _ = two_slot_keystore
    before = path.read_bytes()
    new = write_secret(tmp_path / "new", b"new passphrase")
    old = write_secret(tmp_path / "old", first)
    p = subprocess.run(
        [sys.executable, "-c", CHILD, step, "--keystore", str(path), "enroll", "passphrase",
         "--passphrase-file", str(old), "--new-passphrase-file", str(new), "--kdf-time", "20"],
        capture_output=True, timeout=60,
        env=environment_with_scrubbing(),  # as `unlocker` re-executes itself; else the hook would be lost
    )
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert _opens(path, first)
    if step == "keystore-renamed":
        assert _opens(path, b"new passphrase")
    else:
        assert path.read_bytes() == before
        assert not _opens(path, b"new passphrase")


def test_a_leftover_temp_file_from_a_crash_is_harmless(two_slot_keystore):
    path, first, _ = two_slot_keystore
    path.with_name(".keystore.tmp").write_bytes(b"half a file")
    keystore = storage.read(path)
    opened = open_keystore(keystore, Secrets(bytearray(first)))
    from unlocker.keystore import changes
    storage.write(path, changes.add_slot(opened, "passphrase", Secrets(bytearray(b"x")), FAST), keystore.generation)
    assert _opens(path, b"x")


def test_disk_full_leaves_the_keystore_byte_identical(two_slot_keystore, cli, tmp_path):
    src, first, _ = two_slot_keystore
    with fill(tmp_path / "tiny", [src]) as (path,):
        before = path.read_bytes()
        r = cli("enroll", "passphrase", "--passphrase-file", write_secret(tmp_path / "old", first),
                "--new-passphrase-file", write_secret(tmp_path / "new", b"new"), "--kdf-time", "20", keystore=path)
        assert r.returncode == 1
        assert "the disk is full; the keystore is unchanged" in r.stderr and "Traceback" not in r.stderr
        assert path.read_bytes() == before
        assert not [p.name for p in path.parent.iterdir() if p.name.startswith(".")]


def test_a_second_writer_is_refused_cleanly(two_slot_keystore, cli, tmp_path):
    path, first, _ = two_slot_keystore
    before = path.read_bytes()
    fd = os.open(path.with_name("keystore.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = cli("enroll", "passphrase", "--passphrase-file", write_secret(tmp_path / "old", first),
                "--new-passphrase-file", write_secret(tmp_path / "new", b"new"), "--kdf-time", "20", keystore=path)
    finally:
        os.close(fd)
    assert r.returncode == 1 and "another unlocker command is changing" in r.stderr
    assert path.read_bytes() == before


def test_two_concurrent_enrolls_never_lose_a_change(two_slot_keystore, tmp_path):
    path, first, _ = two_slot_keystore
    old = write_secret(tmp_path / "old", first)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "unlocker", "--keystore", str(path), "enroll", "passphrase",
             "--passphrase-file", str(old), "--new-passphrase-file", str(write_secret(tmp_path / f"n{i}", b"n%d" % i)),
             "--kdf-time", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(2)
    ]
    results = [(p.wait(timeout=60), p.stderr.read().decode()) for p in procs]
    for code, err in results:
        assert code == 0 or (code == 1 and ("changing" in err or "changed while" in err)), err
    winners = [i for i in range(2) if _opens(path, b"n%d" % i)]
    assert len(winners) == sum(code == 0 for code, _ in results) >= 1


def test_stale_generation_is_refused(two_slot_keystore):
    path, first, _ = two_slot_keystore
    keystore = storage.read(path)
    opened = open_keystore(keystore, Secrets(bytearray(first)))
    from unlocker.keystore import changes
    storage.write(path, changes.add_slot(opened, "passphrase", Secrets(bytearray(b"a")), FAST), keystore.generation)
    with pytest.raises(KeystoreBusy, match="changed while"):
        storage.write(path, changes.add_slot(opened, "passphrase", Secrets(bytearray(b"b")), FAST), keystore.generation)


def test_restore_backup_brings_back_the_previous_generation(two_slot_keystore, cli, tmp_path):
    path, first, _ = two_slot_keystore
    generation_1 = path.read_bytes()
    cli("enroll", "passphrase", "--passphrase-file", write_secret(tmp_path / "old", first),
        "--new-passphrase-file", write_secret(tmp_path / "new", b"new"), "--kdf-time", "20", keystore=path)
    assert storage.backup_path(path).read_bytes() == generation_1
    damaged = path.read_bytes()[:-5]
    path.write_bytes(damaged)
    r = cli("restore-backup", keystore=path)
    assert r.returncode == 0, r.stderr
    assert path.read_bytes() == generation_1
    assert path.with_name("keystore.damaged").read_bytes() == damaged


def _not_a_keystore(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / kind
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()  # the socket file stays
    elif kind == "symlink-loop":
        path.symlink_to(path.name)
    elif kind == "long-name":
        path = tmp_path / ("k" * 300)
    return path


def _alarm(signum: int, frame: object) -> None:
    raise TimeoutError("reading the keystore hung")


@pytest.mark.parametrize(("kind", "message"), [
    ("directory", "is not a regular file"),
    ("fifo", "is not a regular file"),          # and never waits for a writer
    ("socket", "is not a regular file"),
    ("symlink-loop", "Too many levels of symbolic links"),
    ("long-name", "File name too long"),
])
def test_a_keystore_path_that_is_not_a_regular_file_is_refused(tmp_path, kind, message):
    path = _not_a_keystore(tmp_path, kind)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(10)
    try:
        with pytest.raises(UnlockerError, match=message):
            storage.read(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_the_cli_says_why_without_a_traceback(tmp_path, cli, kind):
    path = _not_a_keystore(tmp_path, kind)
    r = cli("unlock", "--check", "--passphrase-file", write_secret(tmp_path / "pw", b"x"), keystore=path)
    assert r.returncode == 1 and r.stderr == f"unlocker: {path} is not a regular file; a keystore is one\n"


# ---- ownership, modes and links: nobody but root may shape what the keystore becomes ----

NOBODY = 65534


def _add_slot(path: Path, first: bytes, secret: bytes) -> None:
    from unlocker.keystore import changes
    keystore = storage.read(path)
    opened = open_keystore(keystore, Secrets(bytearray(first)))
    storage.write(path, changes.add_slot(opened, "passphrase", Secrets(bytearray(secret)), FAST), keystore.generation)


@pytest.mark.parametrize(("mode", "reason"), [(0o777, "writable by others"), (0o1777, "writable by others"),
                                              (0o770, "writable by its group")])
def test_a_keystore_in_a_directory_others_can_write_is_refused(two_slot_keystore, mode, reason):
    path, first, _ = two_slot_keystore
    path.parent.chmod(mode)
    with pytest.raises(UnlockerError, match=f"refusing the keystore in {path.parent}: the directory is {reason}.*"
                                            "chmod 0700"):
        storage.read(path)
    with pytest.raises(UnlockerError, match="the directory is"):
        _add_slot(path, first, b"x")


def test_a_directory_owned_by_another_user_is_refused(two_slot_keystore):
    path, _, _ = two_slot_keystore
    os.chown(path.parent, NOBODY, NOBODY)
    with pytest.raises(UnlockerError, match=f"the directory is owned by uid {NOBODY}"):
        storage.read(path)


@pytest.mark.parametrize(("owner", "mode", "reason"), [(NOBODY, 0o600, f"owned by uid {NOBODY}"),
                                                       (0, 0o666, "writable by others")])
def test_a_keystore_file_others_own_or_can_write_is_refused(two_slot_keystore, owner, mode, reason):
    path, _, _ = two_slot_keystore
    os.chown(path, owner, owner)
    path.chmod(mode)
    with pytest.raises(UnlockerError, match=f"refusing {path}: it is {reason}.*; make it root's and 0600"):
        storage.read(path)


def test_a_planted_temp_file_is_never_reused(two_slot_keystore):
    path, first, _ = two_slot_keystore
    tmp = path.with_name(".keystore.tmp")
    tmp.write_bytes(b"planted")
    os.chown(tmp, NOBODY, NOBODY)
    tmp.chmod(0o666)
    _add_slot(path, first, b"x")
    st = path.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (os.geteuid(), 0o600)
    assert _opens(path, b"x") and not tmp.exists()


def test_a_lock_file_planted_as_a_symlink_is_not_followed(two_slot_keystore, tmp_path):
    path, first, _ = two_slot_keystore
    victim = tmp_path / "elsewhere"
    path.with_name("keystore.lock").unlink()
    path.with_name("keystore.lock").symlink_to(victim)
    with pytest.raises(UnlockerError, match=r"cannot open the lock .*keystore\.lock: Too many levels"):
        _add_slot(path, first, b"x")
    assert not victim.exists()


def test_a_symlinked_keystore_path_stays_a_link(two_slot_keystore, tmp_path):
    real, first, _ = two_slot_keystore
    link_dir = tmp_path / "etc"
    link_dir.mkdir(mode=0o700)
    link = link_dir / "keystore"
    link.symlink_to(real)
    _add_slot(link, first, b"x")
    assert link.is_symlink() and _opens(real, b"x")
    assert storage.backup_path(real).exists() and not storage.backup_path(link).exists()


def test_init_creates_missing_directories_0700_whatever_the_umask(tmp_path, cli):
    path = tmp_path / "var" / "lib" / "unlocker" / "keystore"
    old = os.umask(0o022)
    try:
        r = cli("init", "--no-tpm2", "--kdf-time", "1", "--passphrase-file", write_secret(tmp_path / "pw", b"pw"),
                keystore=path)
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    for d in (tmp_path / "var", tmp_path / "var" / "lib", path.parent):
        assert d.stat().st_mode & 0o777 == 0o700, d


def test_restore_backup_without_a_backup_says_so_and_changes_nothing(tmp_path, cli):
    path = tmp_path / "keystore"
    r = cli("init", "--no-tpm2", "--kdf-time", "1", "--passphrase-file", write_secret(tmp_path / "pw", b"pw"),
            keystore=path)
    assert r.returncode == 0, r.stderr
    before = path.read_bytes()
    r = cli("restore-backup", keystore=path)
    assert r.returncode == 1
    assert r.stderr == (f"unlocker: no backup at {path}.bak: there is none until the keystore's first change after "
                        "'unlocker init'; nothing was restored and nothing was changed\n")
    assert path.read_bytes() == before and not path.with_name("keystore.damaged").exists()
