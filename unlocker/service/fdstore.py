"""The store key in systemd's file descriptor store, so that a restart of the broker needs no passphrase.

What systemd 252 does with a service's fd store (tests/system/test_platform_facts.py proves each line):

- it keeps the stored descriptors across `systemctl restart` and across an automatic restart after a crash
  (`Restart=`): the next run gets them as LISTEN_FDS/LISTEN_FDNAMES, starting at descriptor 3;
- it closes them when the unit goes inactive or failed with no restart pending: `systemctl stop`, a crash
  that `Restart=` does not cover, the start limit hit. There is no FileDescriptorStorePreserve= before 254;
- it drops a descriptor on `FDSTOREREMOVE=1` with its `FDNAME=`, and ignores `FDSTORE=1` when
  `FileDescriptorStoreMax=` is 0 (the default).

Only the 32-byte store key is stored: on restart the broker re-opens the keystore with it (the header MAC
proves it is the right one) and loads the DEKs from disk, so a rotation of the DEKs while it was down is
picked up, and a stale key (a `rotate kek` while it was down) is discarded and the prompt follows.

Only a memfd_secret(2) region is ever stored ("secret memory stays secret memory"): PID 1 then holds a
descriptor of pages that are outside the kernel's direct map, and that the kernel zeroes when the last
descriptor goes. Without memfd_secret (Debian 12's 6.1 without secretmem.enable=1) nothing is stored, and
`unlocker status` says that a restart will ask again, and why. There is never more than one stored
descriptor: a new store key is written in place into the same region. Locking zeroes the region in place
(PID 1's descriptor refers to the same pages, so what it holds is wiped even if the removal were lost) and
then removes it from the store.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from systemd import daemon

from unlocker.keystore.fileformat import KEY_BYTES
from unlocker.memory import SecretMemory, wipe
from unlocker.run import log

FDNAME = "unlocker-store-key"

NO_MEMFD_SECRETMEM = ("memfd_secret(2) is not available (a kernel before 6.5 needs secretmem.enable=1 on its "
                    "command line), and the key is only ever stored as secret memory: a restart of the broker "
                    "will ask for the passphrase again")
NO_NOTIFY_SOCKET = "not started by systemd (no NOTIFY_SOCKET): a restart will ask for the passphrase again"

Notify = Callable[..., bool]


class FdStore:
    def __init__(self, notify: Notify = daemon.notify) -> None:
        self._notify = notify
        self._region: SecretMemory | None = None
        self.unavailable: str | None = None  # why a restart would ask again, when it would

    @property
    def state(self) -> str:
        """For `unlocker status`: what a restart of the broker would do."""
        if self.unavailable is not None:
            return f"unavailable: {self.unavailable}"
        if self._region is not None:
            return "holding the store key: a restart or crash of the broker serves again without a prompt"
        return "empty: a restart will ask for the passphrase"

    def take(self, passed: dict[int, str] | None = None) -> bytearray | None:
        """At start: a copy of the store key a previous run of this unit left in the store, or None. The
        region stays mapped (and stored) for keep() and discard(). Every other descriptor passed is closed.
        `passed` ({fd: name}) defaults to what systemd handed over in LISTEN_FDS, which is then unset."""
        if passed is None:
            passed = daemon.listen_fds_with_names(unset_environment=True)
        key = None
        for fd, name in passed.items():
            if name != FDNAME or self._region is not None:
                log.warning("closing descriptor %d (%r) that systemd passed in: not one unlocker stores", fd, name)
                os.close(fd)
                continue
            try:
                region = SecretMemory.adopt(fd)  # closes fd when it refuses it
            except (ValueError, OSError) as e:
                log.warning("the fd store held something unlocker does not use, removed: %s", e)
                self._notify(f"FDSTOREREMOVE=1\nFDNAME={FDNAME}")
                continue
            if region.size != KEY_BYTES:
                log.warning("the stored region has %d bytes, not %d: removed from the fd store", region.size,
                            KEY_BYTES)
                self._region = region
                self.discard()
                continue
            self._region, key = region, bytearray(region.view)
        return key

    def keep(self, store_key: bytearray | memoryview) -> None:
        """Have the store key survive a restart: written in place when a region is already stored, else in
        a new memfd_secret region that is handed to PID 1. Never an ordinary memfd (see the docstring)."""
        if self._region is not None:
            self._region.view[:] = store_key
            return
        region = SecretMemory(KEY_BYTES, keep_fd=True)
        if region.fd is None:
            region.close()
            if self.unavailable is None:
                log.warning("the keys will not survive a restart of the broker: %s", NO_MEMFD_SECRETMEM)
            self.unavailable = NO_MEMFD_SECRETMEM
            return
        region.view[:] = store_key
        if not self._notify(f"FDSTORE=1\nFDNAME={FDNAME}", fds=[region.fd]):
            region.close()
            self.unavailable = NO_NOTIFY_SOCKET
            return
        self._region, self.unavailable = region, None

    def discard(self) -> None:
        """Wipe the stored key: zero the pages in place, which PID 1's descriptor shares, then remove it."""
        if self._region is None:
            return
        wipe(self._region.view)
        with contextlib.suppress(OSError):
            self._notify(f"FDSTOREREMOVE=1\nFDNAME={FDNAME}")
        self._region.close()
        self._region = None

    def release(self) -> None:
        """At SIGTERM, which is a stop or a restart (the broker cannot tell which): unmap and close this
        process's descriptor only. On a restart the next run takes the key; on a stop systemd closes its
        descriptor when the unit goes inactive, and the kernel zeroes the pages as the last one goes."""
        if self._region is not None:
            self._region.close(wipe_contents=False)
            self._region = None

