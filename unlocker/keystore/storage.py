"""Reading and writing the keystore file, crash-safe, one writer at a time.

A write (cryptsetup's LUKS2 habits): take the lock, check the file is still the generation the caller
read, keep the current file as the backup (the one previous generation), write the new content beside
the file, fsync, rename over it, fsync the directory. A crash at any point leaves a file that opens
with the old content or the new; a failure leaves it byte-identical.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from unlocker.errors import KeystoreBusy, KeystoreDamaged, UnlockerError
from unlocker.keystore.fileformat import MAX_FILE_BYTES, FormatError, Keystore, parse

# typing.TYPE_CHECKING without importing typing: `unlocker status` imports this module (cli/reports.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from unlocker.keystore.slots import Secrets
    from unlocker.keystore.unlock import Unlocked

# Tests set this to kill the process at a named step of a write; production code never does.
fault_hook: Callable[[str], None] = lambda step: None  # noqa: E731


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + ".bak")


def _unsafe(st: os.stat_result) -> str | None:
    """Why a file or directory with this stat is not safe to keep keys in, or None when it is: it must
    belong to root (or to whoever runs this) and be writable by nobody else."""
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'} (mode {st.st_mode & 0o7777:04o})"
    return None


def check_directory(path: Path) -> None:
    """Refuse a keystore whose directory someone else could write: they could plant the temp file, the
    lock or the keystore itself. Raises UnlockerError saying how to fix it."""
    directory = path.parent
    try:
        reason = _unsafe(os.stat(directory))
    except FileNotFoundError:
        raise UnlockerError(f"no keystore at {path}; create one with 'unlocker init'") from None
    except OSError as e:
        raise UnlockerError(f"cannot use {directory}: {e.strerror}") from None
    if reason:
        raise UnlockerError(f"refusing the keystore in {directory}: the directory is {reason}; "
                            f"make it root's and 0700 (chown root: {directory}; chmod 0700 {directory})")


def resolve(path: Path) -> Path:
    """The file a (possibly symlinked) keystore path names: writes go there, so the link stays a link,
    and the temp file, lock and backup live beside the real file."""
    return Path(os.path.realpath(path))


def make_directory(directory: Path) -> None:
    """Create directory and any missing parent, each 0700 whatever the umask."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
            os.chmod(d, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise UnlockerError(f"cannot create {d}: {e.strerror}") from None


def _read_bytes(path: Path) -> bytes:
    """The file's bytes (at most one more than the format allows). Raises UnlockerError for anything but a
    readable regular file."""
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer for ever (at boot, with
        # TimeoutStartSec=infinity). It changes nothing for a regular file, the only kind read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UnlockerError(f"no keystore at {path}; create one with 'unlocker init'") from None
    except PermissionError:
        raise UnlockerError(f"cannot read {path}: permission denied (run as root)") from None
    except OSError as e:
        if e.errno == errno.ENXIO:  # what opening a socket gives
            raise _not_regular(path) from None
        raise UnlockerError(f"cannot read {path}: {e.strerror}") from None  # a symlink loop, a name too long
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path)
        reason = _unsafe(st)
        if reason:
            raise UnlockerError(f"refusing {path}: it is {reason}; make it root's and 0600 "
                                f"(chown root: {path}; chmod 0600 {path})")
        check_directory(resolve(path))
        with open(fd, "rb", buffering=0, closefd=False) as f:
            return f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise UnlockerError(f"cannot read {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def _not_regular(path: Path) -> UnlockerError:
    return UnlockerError(f"{path} is not a regular file; a keystore is one")


def read(path: Path) -> Keystore:
    """Parse the keystore at path. Raises KeystoreDamaged with advice when it does not parse."""
    try:
        return parse(_read_bytes(path))
    except FormatError as e:
        raise damaged(path, str(e)) from None


def damaged(path: Path, detail: str) -> KeystoreDamaged:
    error = KeystoreDamaged(path, detail)
    if backup_path(path).exists():
        error.args = (f"{error.args[0]}; the previous generation is kept in {backup_path(path)}: "
                      "'unlocker restore-backup' puts it back",)
    return error


def open_from(path: Path, keystore: Keystore, secrets: Secrets, only_slot: int | None = None) -> Unlocked:
    """open_keystore on a keystore read from `path`; a header that fails its MAC is reported as damage to
    that file."""
    # Here, not at the top: reading the file (status, slots) needs none of the crypto, TPM or clevis stacks.
    from unlocker.keystore.unlock import open_keystore

    try:
        return open_keystore(keystore, secrets, only_slot=only_slot)
    except FormatError as e:
        raise damaged(path, str(e)) from None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive lock on <keystore>.lock. Refuses at once (no queueing of secret-changing commands)."""
    path = resolve(path)
    check_directory(path)
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise UnlockerError(f"cannot open the lock {lock_path}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KeystoreBusy(f"another unlocker command is changing {path}; try again when it is done") from None
        yield
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes, step: str, mode: int = 0o600, what: str = "the keystore") -> None:
    """Atomically make path hold data: temp file beside it, fsync, rename, fsync the directory. A crash
    leaves the old content or the new; a failure leaves the old. Raises UnlockerError naming `what`."""
    tmp = path.with_name(f".{path.name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        try:
            fd = os.open(tmp, flags, mode)
        except FileExistsError:
            # Left by a crash (the caller holds the lock, and nobody else can write the directory).
            # Never reuse it: its owner and mode are not ours to trust.
            os.unlink(tmp)
            fd = os.open(tmp, flags, mode)
        try:
            os.fchmod(fd, mode)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            fault_hook(f"{step}-written")
            os.fsync(fd)
        finally:
            os.close(fd)
        fault_hook(f"{step}-synced")
        os.rename(tmp, path)
        fault_hook(f"{step}-renamed")
        _fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        reason = "the disk is full" if e.errno == errno.ENOSPC else e.strerror
        raise UnlockerError(f"cannot write {path}: {reason}; {what} is unchanged") from None


def write(path: Path, new: Keystore, expected_generation: int | None, *, lock: bool = True,
          rotate_backup: bool = False) -> None:
    """Replace the keystore with `new`, keeping the current file as the backup.

    expected_generation is the generation the caller read (None when creating): if the file moved on
    since, another command changed it and this write is refused rather than losing that change.
    lock=False when the caller already holds locked(path) (a rotation holds it from start to end).
    rotate_backup: after a secret was rotated, the backup must not keep opening with the old secret,
    so it becomes a copy of the new generation instead of the previous one.
    """
    path = resolve(path)
    with locked(path) if lock else contextlib.nullcontext():
        check_directory(path)
        if expected_generation is None:
            if path.exists():
                raise UnlockerError(f"a keystore already exists at {path}; refusing to overwrite it")
        else:
            current = _read_bytes(path)
            try:
                generation = parse(current).generation
            except FormatError as e:
                raise damaged(path, str(e)) from None
            if generation != expected_generation:
                raise KeystoreBusy(f"{path} changed while this command ran; run it again")
            if not rotate_backup:
                replace_file(backup_path(path), current, "backup")
        data = new.serialize()
        replace_file(path, data, "keystore")
        if rotate_backup:
            replace_file(backup_path(path), data, "backup")


def restore_backup(path: Path) -> Keystore:
    """Put the backup generation back. The current file, damaged or not, is kept as <name>.damaged."""
    path = resolve(path)
    with locked(path):
        backup = backup_path(path)
        if not os.path.lexists(backup):
            # Not _read_bytes' "create one with 'unlocker init'": that would replace a keystore that may
            # only need its passphrase, and the data it unlocks would be lost.
            raise UnlockerError(f"no backup at {backup}: there is none until the keystore's first change "
                                "after 'unlocker init'; nothing was restored and nothing was changed")
        try:
            keystore = parse(_read_bytes(backup))
        except FormatError as e:
            raise KeystoreDamaged(backup, str(e)) from None
        if path.exists():
            replace_file(path.with_name(path.name + ".damaged"), _read_bytes(path), "damaged")
        replace_file(path, keystore.serialize(), "restore")
        return keystore
