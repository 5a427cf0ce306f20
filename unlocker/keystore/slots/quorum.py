"""`quorum` slot: t of n administrators, each holding one share of a random 32-byte secret Q (Shamir over
GF(256), shamir.py); slot key = HKDF(Q, keystore id, label).

A share is written like a recovery key: modhex, with its x coordinate first (so it names itself: "share
#17") and a 2-byte checksum last (a mistyped share is reported as a typo, not as a wrong share). The slot
stores, per share, a verifier SHA-256(label ‖ keystore id ‖ x ‖ y). A single share is uniformly random
(256 bits), so its verifier gives an attacker nothing to guess at, and a wrong share is named the moment
it is typed, not after the threshold (where Vault and OpenBao fail and lose all progress, vault#2484).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from unlocker.errors import InvalidInput
from unlocker.keystore import kdf, shamir
from unlocker.keystore.fileformat import FormatError, Slot, b64encode, parse_verifiers
from unlocker.keystore.slots import EnrollOptions, Params, Secrets, SlotType
from unlocker.keystore.slots.recovery import MODHEX
from unlocker.memory import wipe

SECRET_BYTES = 32
SHARE_BYTES = 1 + SECRET_BYTES + 2  # x, y, checksum
VERIFIER_LABEL = b"unlocker/v1 quorum share\n"


class WrongShare(InvalidInput):
    """A well-typed share that is not one of this quorum's (its verifier does not match)."""

    exit_code = 2


def _checksum(body: bytes | bytearray | memoryview) -> bytes:
    digest = hashlib.sha256(b"unlocker quorum share")
    digest.update(body)  # not `+`: that would leave a copy of the share in freed memory
    return digest.digest()[:2]


def format_share(share: bytearray) -> bytearray:
    """OpenBao-format share (y ‖ x) -> the text an administrator writes down: x first, groups of 8."""
    body = bytearray(SHARE_BYTES)
    body[0], body[1:-2] = share[-1], memoryview(share)[:-1]
    body[-2:] = _checksum(memoryview(body)[:-2])
    out = bytearray()
    for i, byte in enumerate(body):
        if i and i % 4 == 0:
            out += b"-"
        out += (MODHEX[byte >> 4] + MODHEX[byte & 15]).encode("ascii")
    wipe(body)
    return out


_NIBBLE = {ord(c): i for i, c in enumerate(MODHEX)} | {ord(c.upper()): i for i, c in enumerate(MODHEX)}
_IGNORED = frozenset(b"- \t\n")


def _decode(typed: bytes | bytearray) -> bytearray | None:
    """x ‖ y ‖ checksum from the typed text, or None when it is not shaped like a share. Reads the
    caller's buffer byte by byte: no lower-cased or filtered copy of a share is left in freed memory."""
    body = bytearray(SHARE_BYTES)
    count = 0
    for c in typed:
        if c in _IGNORED:
            continue
        nibble = _NIBBLE.get(c)
        if nibble is None or count >= SHARE_BYTES * 2:
            wipe(body)
            return None
        body[count >> 1] |= nibble << 4 if count % 2 == 0 else nibble
        count += 1
    if count != SHARE_BYTES * 2:
        wipe(body)
        return None
    return body


def looks_like_share(typed: bytes | bytearray) -> bool:
    """Shaped like a share (checksum not checked): what the boot prompt uses to tell a share from a
    passphrase typed at the same prompt."""
    body = _decode(typed)
    wipe(body)
    return body is not None


def parse_share(typed: bytes | bytearray) -> bytearray:
    """The OpenBao-format share (y ‖ x). Raises InvalidInput: not a share, or mistyped (checksum)."""
    body = _decode(typed)
    if body is None:
        raise InvalidInput(f"not a quorum share ({SHARE_BYTES * 2} characters from {MODHEX})")
    try:
        if not hmac.compare_digest(_checksum(memoryview(body)[:-2]), bytes(body[-2:])):
            raise InvalidInput("that share is mistyped (its checksum does not match); check each group")
        share = bytearray(SECRET_BYTES + 1)
        share[:-1], share[-1] = memoryview(body)[1:-2], body[0]
        return share
    finally:
        wipe(body)


def share_number(share: bytearray) -> int:
    return share[-1]


def verifier(keystore_id: bytes, share: bytearray) -> bytes:
    digest = hashlib.sha256(VERIFIER_LABEL + keystore_id + bytes([share[-1]]))
    digest.update(memoryview(share)[:-1])  # no copy of the share's y bytes
    return digest.digest()


class Collector:
    """The shares typed so far for one quorum slot. Each one is checked as it arrives: typo, foreign,
    wrong, duplicate. The caller wipes it (progress lives only here)."""

    def __init__(self, keystore_id: bytes, slot: Slot) -> None:
        self.keystore_id = keystore_id
        self.threshold = int(slot.param("threshold"))
        self.verifiers = parse_verifiers(slot.param("verifiers"))
        if self.threshold > len(self.verifiers):
            raise FormatError(f"slot {slot.index}: threshold {self.threshold} above its {len(self.verifiers)} shares")
        self.shares: list[bytearray] = []

    @property
    def have(self) -> list[int]:
        return [share_number(s) for s in self.shares]

    @property
    def complete(self) -> bool:
        return len(self.shares) >= self.threshold

    def add(self, typed: bytes | bytearray) -> int:
        """Accept one typed share and return its number. Raises InvalidInput (typo, not of this quorum,
        already given) or WrongShare, each naming the share."""
        share = parse_share(typed)
        x = share_number(share)
        if x not in self.verifiers:
            wipe(share)
            raise WrongShare(f"share #{x} is not one of this quorum's shares (" +
                             ", ".join(f"#{v}" for v in self.verifiers) + ")")
        if x in self.have:
            wipe(share)
            raise InvalidInput(f"share #{x} was already given; the next share must come from another holder")
        if not hmac.compare_digest(verifier(self.keystore_id, share), self.verifiers[x]):
            wipe(share)
            raise WrongShare(f"share #{x} is wrong: it is not the share #{x} this quorum was made with")
        self.shares.append(share)
        return x

    def secret(self) -> bytearray:
        if not self.complete:
            raise InvalidInput(f"{len(self.shares)} of {self.threshold} shares given")
        return shamir.combine(self.shares[: self.threshold])

    def wipe(self) -> None:
        wipe(*self.shares)
        self.shares.clear()


def new_shares(count: int, threshold: int) -> list[bytearray]:
    """`count` shares of a fresh random secret, as their printable text."""
    secret = bytearray(os.urandom(SECRET_BYTES))
    try:
        raw = shamir.split(secret, count, threshold)
    except ValueError as e:
        raise InvalidInput(f"--shares and --threshold: {e}") from None
    finally:
        wipe(secret)
    texts = [format_share(s) for s in raw]
    wipe(*raw)
    return texts


class QuorumSlot(SlotType):
    name = "quorum"
    needs_passphrase = False

    def accepts(self, secrets: Secrets) -> bool:
        return secrets.shares is not None and secrets.passphrase is None

    def derive(self, slot: Slot, secrets: Secrets, keystore_id: bytes) -> bytearray:
        assert secrets.shares is not None
        collector = Collector(keystore_id, slot)
        try:
            for typed in secrets.shares:
                collector.add(typed)
            secret = collector.secret()
        finally:
            collector.wipe()
        try:
            return kdf.hkdf(secret, keystore_id, self.label())
        finally:
            wipe(secret)

    def create(self, secrets: Secrets, keystore_id: bytes, options: EnrollOptions) -> tuple[Params, bytearray]:
        """`secrets.shares` holds every share's text from new_shares(); extra["threshold"] the threshold."""
        assert secrets.shares is not None
        threshold = int(options.extra["threshold"])
        raw = [parse_share(t) for t in secrets.shares]
        try:
            verifiers = ",".join(f"{share_number(s)}:{b64encode(verifier(keystore_id, s))}"
                                 for s in sorted(raw, key=share_number))
            secret = shamir.combine(raw[:threshold])
        finally:
            wipe(*raw)
        try:
            return (("threshold", str(threshold)), ("verifiers", verifiers)), kdf.hkdf(secret, keystore_id,
                                                                                      self.label())
        finally:
            wipe(secret)
