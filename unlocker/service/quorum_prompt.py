"""Quorum shares at the boot prompt, one systemd-ask-password question at a time.

The first share is typed at the ordinary passphrase prompt (a share is told from a passphrase by its
shape); then each further question asks for one more share, names the host, the progress and any share
just refused (typo, wrong, foreign, duplicate), and has an id of its own. Admins answer with
`systemd-tty-ask-password-agent --query` over ssh, one each. Shares are never cached in a keyring (no
--keyname), and the progress lives in this process only, wiped on success, on failure and when nobody
gives the next share within the timeout.
"""

from __future__ import annotations

import socket

from unlocker.errors import InvalidInput, WrongSecret
from unlocker.keystore.fileformat import Keystore
from unlocker.keystore.slots import Secrets
from unlocker.keystore.slots.quorum import Collector, looks_like_share
from unlocker.keystore.unlock import Unlocked, open_keystore
from unlocker.memory import wipe
from unlocker.run import log

SHARE_TIMEOUT_S = 600  # between two shares; then the progress is dropped


class QuorumAtPrompt:
    def __init__(self, keystore: Keystore) -> None:
        slots = [s for s in keystore.slots if s.type == "quorum"]
        self.keystore = keystore
        self.slot = slots[0] if slots else None
        self.collector = Collector(keystore.id, self.slot) if self.slot is not None else None
        self.typed: list[bytearray] = []
        self.refused: str | None = None
        self.attempt = 0

    @property
    def collecting(self) -> bool:
        """A share was offered (accepted or refused): the next question asks for a share."""
        return self.collector is not None and (bool(self.collector.shares) or self.refused is not None)

    def wants(self, typed: bytearray) -> bool:
        return self.collector is not None and looks_like_share(typed)

    def offer(self, typed: bytearray) -> Unlocked | None:
        """Take one typed share (the caller's buffer is taken over). The opened keystore once the
        threshold is reached, else None (the next question says why a share was refused)."""
        assert self.collector is not None and self.slot is not None
        try:
            number = self.collector.add(typed)
        except InvalidInput as e:
            wipe(typed)
            self.refused = str(e)
            log.warning("quorum: %s", e)
            return None
        self.typed.append(typed)
        self.refused = None
        log.warning("quorum: share #%d accepted (%d of %d)", number, len(self.collector.shares),
                    self.collector.threshold)
        if not self.collector.complete:
            return None
        try:
            return open_keystore(self.keystore, Secrets(shares=self.typed), only_slot=self.slot.index)
        except WrongSecret:
            log.warning("quorum: the shares combine to a secret that does not open slot %d", self.slot.index)
            self.reset()
            return None

    def question(self) -> tuple[str, str]:
        """(id, message) of the question for the next share."""
        assert self.collector is not None and self.slot is not None
        have = ", ".join(f"#{x}" for x in self.collector.have)
        message = (f"Quorum share {len(self.collector.shares) + 1} of {self.collector.threshold} for the "
                   f"unlocker keystore on {socket.gethostname()} (have {have})")
        if self.refused:
            message += f"; refused: {self.refused}"
        self.attempt += 1
        return f"unlocker:quorum:{self.keystore.id.hex()}:{self.attempt}", message + ":"

    def reset(self) -> None:
        if self.collector is not None:
            self.collector.wipe()
        wipe(*self.typed)
        self.typed.clear()
        self.refused = None
