"""Reading the passphrase the initrd cached in root's kernel keyring, without ever writing to a keyring.

systemd-cryptsetup (dracut, or systemd in any initrd) and unlocker's initramfs-tools keyscript leave what
was typed at the LUKS prompt in root's *user* keyring as a key of type "user" named `cryptsetup`, for
150 s; it survives switch-root. systemd-cryptsetup appends each answer, NUL-separated, so after a typo the
key holds `typo\\0right`: the last entry is the one that opened the disk (pam_systemd_loadkey takes the
last one too). unlocker.service needs `KeyringMode=shared` to see root's user keyring at all.

`systemd-ask-password --keyname` is not used: it always pushes what is typed into the keyring, which would
leave unlocker's own passphrase there for 150 s, readable by any root process that links that keyring.
"""

from __future__ import annotations

import ctypes
import errno
import os

from unlocker.memory import wipe
from unlocker.run import log

# x86_64 and aarch64 system call numbers; glibc has no wrapper (libkeyutils does, but is not needed).
_SYSCALLS = {"x86_64": (249, 250), "aarch64": (218, 219)}
KEYCTL_READ = 11
MAX_CACHE_BYTES = 64 * 1024  # systemd caps a cached list far below this

_libc = ctypes.CDLL(None, use_errno=True)


def _syscall_numbers() -> tuple[int, int]:
    machine = os.uname().machine
    if machine not in _SYSCALLS:
        raise OSError(errno.ENOSYS, f"keyring calls not mapped for {machine}")
    return _SYSCALLS[machine]


def _request_key(keyname: str) -> int:
    request_key, _ = _syscall_numbers()
    serial = _libc.syscall(request_key, b"user", keyname.encode(), None, 0)
    if serial < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(serial)


def _read_key(serial: int) -> bytearray:
    _, keyctl = _syscall_numbers()
    buf = bytearray(MAX_CACHE_BYTES)
    view = (ctypes.c_char * len(buf)).from_buffer(buf)
    try:
        n = _libc.syscall(keyctl, KEYCTL_READ, ctypes.c_long(serial), view, ctypes.c_size_t(len(buf)))
        if n < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        if n > len(buf):
            raise OSError(errno.EMSGSIZE, "cached passphrase list too long")
        # The last non-empty entry; copied once into an exact-size buffer, the rest wiped.
        end = n
        while end > 0 and buf[end - 1] == 0:
            end -= 1
        start = buf.rfind(b"\0", 0, end) + 1
        entry = bytearray(end - start)
        entry[:] = memoryview(buf)[start:end]
        return entry
    finally:
        del view
        wipe(buf)


def read_cached(keyname: str) -> bytearray | None:
    """The last passphrase cached under `keyname` in our keyrings (root's user keyring through
    KeyringMode=shared), or None when there is none: expired, never cached, or keyrings unavailable."""
    try:
        entry = _read_key(_request_key(keyname))
    except OSError as e:
        # ENOKEY: nothing cached; EKEYEXPIRED: the 150 s passed; EPERM/ENOSYS: a seccomp filter (nspawn)
        # or a sandbox without keyring access.
        log.warning("no cached passphrase under %r in the kernel keyring (%s); asking", keyname, e.strerror)
        return None
    if not entry:
        return None
    return entry
