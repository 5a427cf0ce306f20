"""Holding secrets in memory we can wipe.

Python cannot wipe immutable `bytes`, so secrets live in bytearray (or in a secret mapping for the
long-lived DEKs of the broker), are filled with readinto/derive_into/decrypt_into, and are zeroed as soon
as they are used. `wipe` also scrubs a `bytes` object in place for the few places a library hands one
back: that relies on CPython's object layout, which is checked once at import.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import resource
import sys

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_SYS_MEMFD_SECRET = 447  # x86_64 and aarch64
_libc = ctypes.CDLL(None, use_errno=True)

# Offset of the character data inside a CPython bytes object (ob_sval).
_BYTES_DATA_OFFSET = sys.getsizeof(b"") - 1


def _bytes_layout_ok() -> bool:
    probe = bytes(bytearray(b"layout-probe"))
    return ctypes.string_at(id(probe) + _BYTES_DATA_OFFSET, len(probe)) == probe


_CAN_WIPE_BYTES = sys.implementation.name == "cpython" and _bytes_layout_ok()


def wipe(*buffers: bytearray | bytes | memoryview | mmap.mmap | None) -> None:
    """Overwrite each buffer with zeros. None is ignored, so callers can wipe optional secrets."""
    for buf in buffers:
        if buf is None:
            continue
        if isinstance(buf, bytes):
            if _CAN_WIPE_BYTES and len(buf) > 0:
                ctypes.memset(id(buf) + _BYTES_DATA_OFFSET, 0, len(buf))
            continue
        view = memoryview(buf).cast("B")
        view[:] = bytes(len(view))
        view.release()


# glibc hands a freed block to its per-thread cache (tcache) untouched; with the cache off, every free
# goes through the path that honours M_PERTURB, which overwrites freed blocks. That scrubs the copies
# libraries make of a secret and then free (OpenSSL's Argon2 copies the passphrase, for one). The tcache
# can only be turned off at process start, hence the environment variable and the re-exec in cli.main.
SCRUB_TUNABLE = "glibc.malloc.tcache_count=0"
_M_PERTURB = -6


def freed_memory_is_scrubbed() -> bool:
    return SCRUB_TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":")


def scrub_freed_memory() -> None:
    """Have glibc overwrite every block freed from now on (with zeros: 256's low byte)."""
    _libc.mallopt(_M_PERTURB, 256)


def environment_with_scrubbing() -> dict[str, str]:
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), SCRUB_TUNABLE]))
    return env


def harden_process() -> None:
    """No core dumps and no ptrace by other users: a crash must not write the keys to disk."""
    if _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    # Under a seccomp filter without setrlimit, the unit's LimitCORE=0 already did this.
    with contextlib.suppress(OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def die_with_parent(sig: int) -> None:
    """Have the kernel send `sig` to this process when the thread that started it ends."""
    if _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


class SecretMemory:
    """A fixed-size region that is never swapped or dumped.

    memfd_secret(2) where the kernel has it (the pages are even removed from the kernel's direct map);
    otherwise an anonymous mapping that is mlock'ed and marked MADV_DONTDUMP. With `keep_fd`, a
    memfd_secret region keeps its descriptor (`fd`), so that it can be handed to systemd's fd store and
    mapped again after a restart (`adopt`). Otherwise the descriptor is closed once mapped: a root process
    that takes descriptors from the broker (pidfd_getfd) finds none to map. The fallback never has one.
    """

    def __init__(self, size: int, keep_fd: bool = False) -> None:
        self.size = size
        self.kind = "memfd_secret"
        self.fd: int | None = None
        self.writable = True
        fd = _libc.syscall(_SYS_MEMFD_SECRET, 0)
        if fd >= 0:
            try:
                os.ftruncate(fd, size)
                self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except BaseException:
                os.close(fd)
                raise
            if keep_fd:
                self.fd = fd
            else:
                os.close(fd)
        else:
            self.kind = "mlock"
            self._map = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self._map.madvise(mmap.MADV_DONTDUMP)
            addr = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
            if _libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(size)) != 0:
                self.kind = "unlocked"  # RLIMIT_MEMLOCK too low; still wiped and not dumped
        self.view = memoryview(self._map)

    @classmethod
    def adopt(cls, fd: int, writable: bool = True) -> SecretMemory:
        """Map a memfd_secret descriptor this process received (from systemd's fd store, or from the unlock
        child); the region owns it from then on. Raises ValueError, and closes it, when it is not a
        memfd_secret file. A read-only region (`writable=False`) is mapped PROT_READ and its descriptor
        closed at once: nothing here can write the keys, and nothing is left for pidfd_getfd to take. It is
        not wiped at close, and need not be: the kernel zeroes secretmem pages when they are freed, which is
        when the last mapping goes (the sender has closed its descriptor)."""
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            size = os.fstat(fd).st_size
            if not target.startswith("/secretmem") or size == 0:
                raise ValueError(f"descriptor {fd} is {target!r} of {size} bytes, not a memfd_secret region")
            region = cls.__new__(cls)
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            region._map = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        except BaseException:
            os.close(fd)
            raise
        if not writable:
            os.close(fd)
        region.size, region.kind, region.fd = size, "memfd_secret", fd if writable else None
        region.writable = writable
        region.view = memoryview(region._map)
        return region

    def close(self, wipe_contents: bool = True) -> None:
        """Unmap and close. A memfd_secret region held elsewhere too (systemd's fd store) keeps its
        contents when `wipe_contents` is False: that is how a restart finds them."""
        if wipe_contents and self.writable:
            wipe(self._map)
        self.view.release()
        self._map.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
