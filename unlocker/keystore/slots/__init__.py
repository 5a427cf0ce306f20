"""Keyslot types. Each type turns what the administrator supplies into a 32-byte slot key that wraps the
store key. One module per type, each with its own HKDF label, registered in TYPES below.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from unlocker.clevis.http import Timeouts
from unlocker.keystore import kdf
from unlocker.keystore.fileformat import Slot

Params = tuple[tuple[str, str], ...]


@dataclass
class Secrets:
    """What the administrator supplied for one unlock or enrollment. The caller owns and wipes it."""

    passphrase: bytearray | None = None  # a passphrase, or a recovery key as typed
    tcti: str | None = None  # where the TPM is, when TPM slots may be used
    network: Timeouts | None = None  # the timeouts for Tang servers, when network slots may be used
    shares: list[bytearray] | None = None  # quorum shares as typed (each one's text)


@dataclass(frozen=True)
class EnrollOptions:
    argon2: kdf.Argon2Params | None = None  # None: calibrate
    kdf_time_ms: int = 2000
    kdf_memory_kib: int | None = None
    pcrs: tuple[int, ...] = (7,)
    bank: str = "sha256"
    extra: dict[str, str] = field(default_factory=dict)

    def argon2_params(self) -> kdf.Argon2Params:
        return self.argon2 or kdf.calibrate(self.kdf_time_ms, self.kdf_memory_kib)


class SlotType(ABC):
    name: ClassVar[str]
    needs_passphrase: ClassVar[bool]
    needs_tpm: ClassVar[bool] = False
    needs_network: ClassVar[bool] = False

    @classmethod
    def label(cls) -> bytes:
        return b"unlocker/v1 slot " + cls.name.encode("ascii")

    def accepts(self, secrets: Secrets) -> bool:
        """Whether an unlock with these secrets should try this kind of slot at all."""
        has_passphrase = secrets.passphrase is not None
        return (has_passphrase == self.needs_passphrase and (secrets.tcti is not None or not self.needs_tpm)
                and (secrets.network is not None or not self.needs_network))

    @abstractmethod
    def derive(self, slot: Slot, secrets: Secrets, keystore_id: bytes) -> bytearray:
        """The slot key for an existing slot. Raises WrongSecret, a TpmError for TPM slots,
        NetworkUnlockFailed for network slots."""

    @abstractmethod
    def create(self, secrets: Secrets, keystore_id: bytes, options: EnrollOptions) -> tuple[Params, bytearray]:
        """New slot parameters and the slot key they produce."""


# name -> (module, class). Imported on first use: a passphrase unlock never loads the TPM stack.
_REGISTRY = {
    "passphrase": ("unlocker.keystore.slots.passphrase", "PassphraseSlot"),
    "recovery": ("unlocker.keystore.slots.recovery", "RecoverySlot"),
    "tpm2": ("unlocker.keystore.slots.tpm2", "Tpm2Slot"),
    "tpm2+passphrase": ("unlocker.keystore.slots.tpm2", "Tpm2PassphraseSlot"),
    "systemd-creds+passphrase": ("unlocker.keystore.slots.systemd_creds", "SystemdCredsPassphraseSlot"),
    "clevis": ("unlocker.keystore.slots.clevis", "ClevisSlot"),
    "clevis+passphrase": ("unlocker.keystore.slots.clevis", "ClevisPassphraseSlot"),
    "clevis+tpm2": ("unlocker.keystore.slots.clevis_tpm2", "ClevisTpm2Slot"),
    "quorum": ("unlocker.keystore.slots.quorum", "QuorumSlot"),
}


def slot_type(name: str) -> SlotType:
    module, cls = _REGISTRY[name]
    instance: SlotType = getattr(importlib.import_module(module), cls)()
    return instance
