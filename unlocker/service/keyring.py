"""The broker's keys while it is unlocked: every deliverable DEK version and the store key, in one
region of secret memory (memfd_secret, or mlock'ed and MADV_DONTDUMP), wiped by lock(). With an FdStore,
the store key is also kept in systemd's fd store for a restart, and lock() wipes that too."""

from __future__ import annotations

from dataclasses import dataclass

from unlocker.client.formats import KeyVersion
from unlocker.keystore.fileformat import KEY_BYTES, Keystore
from unlocker.keystore.unlock import Unlocked
from unlocker.memory import SecretMemory, wipe
from unlocker.service.fdstore import FdStore


@dataclass(frozen=True)
class Entry:
    id: int
    state: str
    offset: int


def fill_region(opened: Unlocked, keep_fd: bool = False) -> tuple[SecretMemory, list[Entry]]:
    """A new region with the store key at offset 0 and every non-retired DEK after it, and where each
    DEK is. With `keep_fd`, a memfd_secret region keeps its descriptor (the unlock child sends it)."""
    keystore: Keystore = opened.keystore
    deks = [d for d in keystore.deks if d.state != "retired"]
    region = SecretMemory(KEY_BYTES * (len(deks) + 1), keep_fd=keep_fd)
    region.view[:KEY_BYTES] = opened.store_key
    entries = []
    for i, dek in enumerate(deks, start=1):
        key = opened.dek(dek.id)
        region.view[i * KEY_BYTES : (i + 1) * KEY_BYTES] = key
        wipe(key)
        entries.append(Entry(dek.id, dek.state, i * KEY_BYTES))
    return region, entries


class Keyring:
    def __init__(self, fd_store: FdStore | None = None) -> None:
        self.fd_store = fd_store
        self._region: SecretMemory | None = None
        self._entries: list[Entry] = []
        self.generation: int | None = None
        self.memory_kind: str | None = None

    @property
    def unlocked(self) -> bool:
        return self._region is not None

    def load(self, opened: Unlocked) -> None:
        """Take the store key and every non-retired DEK from an opened keystore (replacing what was held)."""
        region, entries = fill_region(opened)
        self.take(region, entries, opened.keystore.generation)

    def take(self, region: SecretMemory, entries: list[Entry], generation: int) -> None:
        """Hold a region filled by fill_region (here, or in the unlock child), replacing what was held."""
        if region.size < KEY_BYTES or any(e.offset + KEY_BYTES > region.size for e in entries):
            region.close()
            raise ValueError(f"a key region of {region.size} bytes cannot hold the keys it lists")
        self._drop()
        self._region, self._entries = region, entries
        if self.fd_store is not None:
            self.fd_store.keep(region.view[:KEY_BYTES])
        self.generation, self.memory_kind = generation, region.kind

    def store_key(self) -> bytearray:
        assert self._region is not None
        return bytearray(self._region.view[:KEY_BYTES])

    def versions(self) -> list[KeyVersion]:
        """Copies of the deliverable keys; the caller wipes them."""
        assert self._region is not None
        view = self._region.view
        return [KeyVersion(e.id, e.state, bytearray(view[e.offset : e.offset + KEY_BYTES])) for e in self._entries]

    def lock(self) -> None:
        """Wipe the keys, here and in the fd store: a restart after this asks for the passphrase."""
        self._drop()
        if self.fd_store is not None:
            self.fd_store.discard()

    def close(self) -> None:
        """At stop or restart: wipe the keys here, and leave the fd store to systemd (fdstore.py)."""
        self._drop()
        if self.fd_store is not None:
            self.fd_store.release()

    def _drop(self) -> None:
        if self._region is not None:
            self._region.close()
        self._region, self._entries, self.generation = None, [], None
