"""The broker's keys while it is unlocked: every deliverable DEK version and the store key, in one
region of secret memory (memfd_secret, or mlock'ed and MADV_DONTDUMP), wiped by lock()."""

from __future__ import annotations

from dataclasses import dataclass

from unlocker.client.formats import KeyVersion
from unlocker.keystore.fileformat import KEY_BYTES, Keystore
from unlocker.keystore.unlock import Unlocked
from unlocker.memory import SecretMemory, wipe


@dataclass(frozen=True)
class _Entry:
    id: int
    state: str
    offset: int


class Keyring:
    def __init__(self) -> None:
        self._region: SecretMemory | None = None
        self._entries: list[_Entry] = []
        self.generation: int | None = None
        self.memory_kind: str | None = None

    @property
    def unlocked(self) -> bool:
        return self._region is not None

    def load(self, opened: Unlocked) -> None:
        """Take the store key and every non-retired DEK from an opened keystore (replacing what was held)."""
        keystore: Keystore = opened.keystore
        deks = [d for d in keystore.deks if d.state != "retired"]
        region = SecretMemory(KEY_BYTES * (len(deks) + 1))
        region.view[:KEY_BYTES] = opened.store_key
        entries = []
        for i, dek in enumerate(deks, start=1):
            key = opened.dek(dek.id)
            region.view[i * KEY_BYTES : (i + 1) * KEY_BYTES] = key
            wipe(key)
            entries.append(_Entry(dek.id, dek.state, i * KEY_BYTES))
        self.lock()
        self._region, self._entries = region, entries
        self.generation, self.memory_kind = keystore.generation, region.kind

    def store_key(self) -> bytearray:
        assert self._region is not None
        return bytearray(self._region.view[:KEY_BYTES])

    def versions(self) -> list[KeyVersion]:
        """Copies of the deliverable keys; the caller wipes them."""
        assert self._region is not None
        view = self._region.view
        return [KeyVersion(e.id, e.state, bytearray(view[e.offset : e.offset + KEY_BYTES])) for e in self._entries]

    def lock(self) -> None:
        if self._region is not None:
            self._region.close()
        self._region, self._entries, self.generation = None, [], None
