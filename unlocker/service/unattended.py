"""The unattended slots (tpm2, clevis, clevis+tpm2), tried in a thread while the passphrase prompt is up:
race, don't chain. Boot never waits on a dead Tang server before a person can type, and a Tang server
that boots after its clients (a power cut, clevis#442) still unlocks them: network slots are retried
with back-off until one opens or the prompt is answered. TPM-only slots are tried once: retrying them
would change nothing, and a TPM's lockout must never be driven by a loop.
"""

from __future__ import annotations

import threading
from pathlib import Path

from unlocker.clevis.http import Timeouts
from unlocker.clevis.jose import JoseError
from unlocker.errors import NetworkUnlockFailed, TpmError, TpmLockout, UnlockerError, WrongSecret
from unlocker.keystore import storage
from unlocker.keystore.fileformat import FormatError
from unlocker.keystore.slots import Secrets, slot_type
from unlocker.keystore.unlock import Unlocked, open_keystore, unattended_slots
from unlocker.run import log
from unlocker.service.options import Backoff

DEFAULT_BACKOFF = Backoff()


class Unattended:
    """Start with start(); `won` is set when a slot opened, `first_round` after the first try of every
    unattended slot. claim() hands the opened keystore over exactly once; stop() ends the retries."""

    def __init__(self, keystore: Path, tcti: str | None, network: Timeouts, backoff: Backoff = DEFAULT_BACKOFF,
                 withdraw: threading.Event | None = None) -> None:
        self.keystore, self.tcti, self.network, self.backoff = keystore, tcti, network, backoff
        self.won, self.first_round, self._stopped = threading.Event(), threading.Event(), threading.Event()
        self.withdraw = withdraw  # set on success: the pending prompt is withdrawn
        self._lock = threading.Lock()
        self._opened: tuple[Unlocked, str] | None = None
        self._thread = threading.Thread(target=self._run, name="unlocker-unattended", daemon=True)

    def start(self) -> Unattended:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def claim(self) -> tuple[Unlocked, str] | None:
        """The opened keystore and the type of the slot that opened it, once; None if none (yet)."""
        with self._lock:
            opened, self._opened = self._opened, None
            return opened

    def discard(self) -> None:
        """Stop, and wipe a result nobody will claim (the prompt won the race)."""
        self.stop()
        with self._lock:
            if self._opened is not None:
                self._opened[0].close()
                self._opened = None
            self._stopped.set()

    def _run(self) -> None:
        delay, retry, tpm_ok = self.backoff.first, False, True
        while not self._stopped.is_set():
            try:
                keystore = storage.read(self.keystore)
            except UnlockerError as e:
                log.warning("cannot read the keystore for the unattended slots: %s", e)
                self.first_round.set()
                return
            network_slots = False
            for slot in unattended_slots(keystore):
                kind = slot_type(slot.type)
                network_slots |= kind.needs_network
                if (retry and not kind.needs_network) or (kind.needs_tpm and (self.tcti is None or not tpm_ok)):
                    continue
                try:
                    opened = open_keystore(keystore, Secrets(None, self.tcti, self.network), only_slot=slot.index)
                except TpmLockout as e:
                    log.warning("slot %d (%s): %s; not trying the TPM again", slot.index, slot.type, e)
                    tpm_ok = False
                    continue
                except (WrongSecret, TpmError, NetworkUnlockFailed, JoseError, FormatError) as e:
                    log.warning("slot %d (%s) did not open: %s", slot.index, slot.type, e)
                    continue
                self._won(opened, slot.type)
                return
            self.first_round.set()
            if not network_slots:
                return
            retry = True
            if self._stopped.wait(delay):
                return
            delay = min(delay * 2, self.backoff.most)

    def _won(self, opened: Unlocked, source: str) -> None:
        with self._lock:
            if self._stopped.is_set():  # the prompt already won
                opened.close()
                return
            self._opened = (opened, source)
        self.won.set()
        self.first_round.set()
        if self.withdraw is not None:
            self.withdraw.set()
