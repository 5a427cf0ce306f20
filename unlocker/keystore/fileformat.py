"""The keystore file format: parse, serialize, and the bytes that get authenticated. Pure: no I/O.

docs/FORMAT.md is the specification; this module is its reference implementation. Parsing is strict
and canonical, so parse(data).serialize() == data for every accepted file, and anything else is refused
with a FormatError saying which line is wrong.

    unlocker-keystore v1
    keystore <32 hex>
    generation <n>
    slot <n> <type> <field>=<value> ... nonce=<b64> key=<b64>
    dek <id> <primary|active|retired> <created> nonce=<b64> key=<b64>
    slots <n>=<b64 sha256 of slot line n> ...
    mac <b64>
    sha256 <64 hex>

Integrity, in layers, so that damage is reported as damage (not as a wrong passphrase) and a damaged
keyslot costs only that keyslot, as a damaged LUKS2 keyslot area does:
- the `sha256` line is an unkeyed checksum of every line except the slot lines; a mismatch means the
  file is damaged, before any secret is tried;
- the `slots` line holds each slot line's SHA-256: a slot whose line no longer matches is damaged and
  skipped; the other slots still open the keystore;
- the `mac` line is an HMAC under a key derived from the store key over every line except the slot
  lines, mac and sha256. It commits to the `slots` digests, so after an unlock it proves that no slot,
  DEK or setting was edited, added, removed or reordered (anyone can recompute the unkeyed sums).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

MAGIC = "unlocker-keystore"
VERSION = "v1"
MAX_FILE_BYTES = 1024 * 1024
MAX_SLOTS = 32
MAX_DEKS = 1024
KEYSTORE_ID_BYTES = 16
KEY_BYTES = 32
WRAPPED_KEY_BYTES = KEY_BYTES + 16
NONCE_BYTES = 12
MAC_BYTES = 32
DEK_STATES = ("primary", "active", "retired")
# A creation time up to the last second of year 9999: what a date can show (time.gmtime, strftime %Y).
MAX_CREATED = 253402300799
TPM_BANKS = ("sha256",)

# Bounds enforced before anything is allocated: a keystore edited to ask for 1 TiB of memory or a
# billion passes must be refused, not obeyed.
MIN_MEMORY_KIB = 8 * 1024
MAX_MEMORY_KIB = 4 * 1024 * 1024
MIN_ITERATIONS = 1
MAX_ITERATIONS = 1000
LANES = 4
MAX_LANES = 16


@dataclass(frozen=True)
class Argon2Params:
    memory_kib: int
    iterations: int
    lanes: int = LANES

    def check(self) -> None:
        """Raise ValueError when a parameter is out of the accepted range."""
        if not MIN_MEMORY_KIB <= self.memory_kib <= MAX_MEMORY_KIB:
            raise ValueError(f"argon2id memory {self.memory_kib} KiB outside {MIN_MEMORY_KIB}..{MAX_MEMORY_KIB}")
        if not MIN_ITERATIONS <= self.iterations <= MAX_ITERATIONS:
            raise ValueError(f"argon2id iterations {self.iterations} outside {MIN_ITERATIONS}..{MAX_ITERATIONS}")
        if not 1 <= self.lanes <= MAX_LANES:
            raise ValueError(f"argon2id lanes {self.lanes} outside 1..{MAX_LANES}")


_INT = re.compile(r"0|[1-9][0-9]{0,17}")
_HEX_ID = re.compile(r"[0-9a-f]{32}")


class FormatError(ValueError):
    """The bytes are not a well-formed keystore. The message names the line."""


class UnsupportedVersion(FormatError):
    def __init__(self, version: str) -> None:
        super().__init__(f"format version {version!r} is not supported (this unlocker reads {VERSION})")
        self.version = version


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def b64decode(text: str, length: int | None = None) -> bytes:
    """Canonical standard base64: the only accepted spelling is the one b64encode produces."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise FormatError(f"invalid base64 {text[:16]!r}") from None
    if b64encode(raw) != text:
        raise FormatError(f"non-canonical base64 {text[:16]!r}")
    if length is not None and len(raw) != length:
        raise FormatError(f"expected {length} bytes, found {len(raw)}")
    return raw


def parse_int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise FormatError(f"invalid number {text[:20]!r}")
    return int(text)


def format_argon2(p: Argon2Params) -> str:
    return f"{p.memory_kib},{p.iterations},{p.lanes}"


def parse_argon2(text: str) -> Argon2Params:
    parts = text.split(",")
    if len(parts) != 3:
        raise FormatError("argon2id needs memory,iterations,lanes")
    params = Argon2Params(*(parse_int(p) for p in parts))
    try:
        params.check()
    except ValueError as e:
        raise FormatError(str(e)) from None
    return params


def format_pcrs(pcrs: tuple[int, ...]) -> str:
    return "+".join(str(p) for p in pcrs) if pcrs else "none"


def parse_pcrs(text: str) -> tuple[int, ...]:
    if text == "none":
        return ()
    pcrs = tuple(parse_int(p) for p in text.split("+"))
    if any(p > 23 for p in pcrs) or list(pcrs) != sorted(set(pcrs)):
        raise FormatError("pcrs must be distinct, ascending, 0..23")
    return pcrs


# A clevis compact JWE: five base64url parts. An sss of three tang pins is 5.5 KB; 256 KiB leaves room
# for nesting and many servers and still keeps the file far below its 1 MiB bound.
_JWE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
MAX_JWE_CHARS = 256 * 1024


def _jwe(text: str) -> str:
    if len(text) > MAX_JWE_CHARS or not _JWE.fullmatch(text):
        raise FormatError("jwe must be a compact JWE of at most 256 KiB")
    return text


def _threshold(text: str) -> int:
    t = parse_int(text)
    if not 2 <= t <= 255:
        raise FormatError("threshold must be 2..255")
    return t


def parse_verifiers(text: str) -> dict[int, bytes]:
    """`<x>:<b64 SHA-256>,...`: one verifier per quorum share, x ascending, 2..255 of them."""
    out: dict[int, bytes] = {}
    for item in text.split(","):
        x, sep, digest = item.partition(":")
        if not sep:
            raise FormatError("verifiers: expected <x>:<sha256>,...")
        index = parse_int(x)
        if not 1 <= index <= 255 or (out and index <= max(out)):
            raise FormatError("verifiers: x must be 1..255, ascending, unique")
        out[index] = b64decode(digest, 32)
    if len(out) < 2:
        raise FormatError("verifiers: a quorum needs at least 2 shares")
    return out


def _check_bank(text: str) -> str:
    if text not in TPM_BANKS:
        raise FormatError(f"unknown PCR bank {text!r}")
    return text


def _blob(text: str) -> bytes:
    raw = b64decode(text)
    if not 0 < len(raw) <= 4096:
        raise FormatError("TPM blob size out of range")
    return raw


# Each field a slot may carry, with its validator. A validator raises FormatError or returns the value.
FIELD_CHECKS: dict[str, Callable[[str], object]] = {
    "argon2id": parse_argon2,
    "salt": lambda v: b64decode(v, 16),
    "pcrs": parse_pcrs,
    "bank": _check_bank,
    "public": _blob,
    "private": _blob,
    "parent": _blob,
    "credential": _blob,
    "jwe": _jwe,
    "threshold": _threshold,
    "verifiers": parse_verifiers,
}

# The fields of each slot type, in the one order they are written. A new slot type adds a line here
# and a module in unlocker/slots/.
SLOT_FIELDS: dict[str, tuple[str, ...]] = {
    "passphrase": ("argon2id", "salt"),
    "recovery": (),
    "tpm2": ("pcrs", "bank", "parent", "public", "private"),
    "tpm2+passphrase": ("argon2id", "salt", "pcrs", "bank", "parent", "public", "private"),
    "systemd-creds+passphrase": ("argon2id", "salt", "credential"),
    "clevis": ("jwe",),
    "clevis+passphrase": ("argon2id", "salt", "jwe"),
    "clevis+tpm2": ("pcrs", "bank", "parent", "public", "private", "jwe"),
    "quorum": ("threshold", "verifiers"),
}


@dataclass(frozen=True)
class Slot:
    index: int
    type: str
    params: tuple[tuple[str, str], ...]  # (field, value) in SLOT_FIELDS order, as written
    nonce: bytes
    wrapped_key: bytes  # the store key, AES-256-GCM under the slot key

    def param(self, name: str) -> str:
        return dict(self.params)[name]

    def header(self) -> str:
        """The slot line up to the wrapped key: what the slot's AEAD authenticates."""
        fields = "".join(f" {k}={v}" for k, v in self.params)
        return f"slot {self.index} {self.type}{fields}"

    def line(self) -> str:
        return f"{self.header()} nonce={b64encode(self.nonce)} key={b64encode(self.wrapped_key)}"


@dataclass(frozen=True)
class Dek:
    id: int
    state: str
    created: int  # unix seconds
    nonce: bytes
    wrapped_key: bytes  # the DEK, AES-256-GCM under a key derived from the store key

    def header(self) -> str:
        """What the DEK's AEAD authenticates. The state is left out on purpose: it changes over the
        DEK's life without re-wrapping, and the header MAC covers it."""
        return f"dek {self.id} {self.created}"

    def line(self) -> str:
        return (
            f"dek {self.id} {self.state} {self.created} "
            f"nonce={b64encode(self.nonce)} key={b64encode(self.wrapped_key)}"
        )


@dataclass(frozen=True)
class DamagedSlot:
    """A slot line that no longer matches its digest: kept byte for byte, never used."""

    index: int
    text: str
    digest: bytes


def _bytes(text: str) -> bytes:
    # surrogateescape: a damaged slot line may hold any byte, kept as it was read (see _split).
    return text.encode("ascii", "surrogateescape")


def slot_digest(line: str) -> bytes:
    return hashlib.sha256(_bytes(line)).digest()


@dataclass(frozen=True)
class Keystore:
    id: bytes
    generation: int
    slots: tuple[Slot, ...]
    deks: tuple[Dek, ...]
    mac: bytes = field(default=b"")
    damaged: tuple[DamagedSlot, ...] = ()

    def _slot_lines(self) -> list[tuple[int, str, bytes]]:
        """(index, line, digest) of every slot, good or damaged, in index order."""
        rows = [(s.index, s.line(), slot_digest(s.line())) for s in self.slots]
        rows += [(d.index, d.text, d.digest) for d in self.damaged]
        return sorted(rows)

    def _header_lines(self) -> list[str]:
        return [f"{MAGIC} {VERSION}", f"keystore {self.id.hex()}", f"generation {self.generation}"]

    def _digests_line(self) -> str:
        return "slots " + " ".join(f"{i}={b64encode(d)}" for i, _, d in self._slot_lines())

    def authenticated_bytes(self) -> bytes:
        """What the header MAC covers: every line but the slot lines (covered through their digests)."""
        lines = self._header_lines() + [d.line() for d in self.deks] + [self._digests_line()]
        return ("\n".join(lines) + "\n").encode("ascii")

    def serialize(self) -> bytes:
        mac_line = f"mac {b64encode(self.mac)}"
        checked = self.authenticated_bytes() + (mac_line + "\n").encode("ascii")
        lines = self._header_lines() + [line for _, line, _ in self._slot_lines()]
        lines += [d.line() for d in self.deks] + [self._digests_line(), mac_line]
        lines.append(f"sha256 {hashlib.sha256(checked).hexdigest()}")
        return _bytes("\n".join(lines) + "\n")

    def slot(self, index: int) -> Slot:
        for s in self.slots:
            if s.index == index:
                return s
        raise KeyError(index)

    def primary(self) -> Dek:
        return next(d for d in self.deks if d.state == "primary")

    def with_slots(self, slots: tuple[Slot, ...], damaged: tuple[DamagedSlot, ...] | None = None) -> Keystore:
        damaged = self.damaged if damaged is None else damaged
        return replace(self, slots=tuple(sorted(slots, key=lambda s: s.index)), damaged=damaged, mac=b"")

    def with_deks(self, deks: tuple[Dek, ...]) -> Keystore:
        return replace(self, deks=tuple(sorted(deks, key=lambda d: d.id)), mac=b"")

    def free_slot_index(self) -> int:
        used = {i for i, _, _ in self._slot_lines()}
        return next(i for i in range(MAX_SLOTS + 1) if i not in used)


def _wrapped(fields: list[str], at: int) -> tuple[bytes, bytes]:
    if len(fields) != at + 2 or not fields[at].startswith("nonce=") or not fields[at + 1].startswith("key="):
        raise FormatError("expected nonce=<b64> key=<b64> at the end")
    return b64decode(fields[at][6:], NONCE_BYTES), b64decode(fields[at + 1][4:])


def _parse_slot(fields: list[str]) -> Slot:
    if fields[0] != "slot":
        raise FormatError("expected a 'slot' line")
    if len(fields) < 3:
        raise FormatError("truncated slot line")
    index, slot_type = parse_int(fields[1]), fields[2]
    if index >= MAX_SLOTS:
        raise FormatError(f"slot index {index} out of range")
    if slot_type not in SLOT_FIELDS:
        raise FormatError(f"unknown slot type {slot_type[:30]!r}")
    names = SLOT_FIELDS[slot_type]
    params = []
    for name, text in zip(names, fields[3 : 3 + len(names)], strict=False):
        key, sep, value = text.partition("=")
        if key != name or not sep:
            raise FormatError(f"expected field {name!r}")
        FIELD_CHECKS[name](value)
        params.append((name, value))
    if len(params) != len(names):
        raise FormatError("missing fields")
    nonce, wrapped = _wrapped(fields, 3 + len(names))
    if len(wrapped) != WRAPPED_KEY_BYTES:
        raise FormatError("wrapped key has the wrong size")
    return Slot(index, slot_type, tuple(params), nonce, wrapped)


def _parse_dek(fields: list[str]) -> Dek:
    if fields[0] != "dek":
        raise FormatError("expected a 'dek' line")
    if len(fields) != 6:
        raise FormatError("dek line needs id, state, created, nonce, key")
    dek_id, state, created = parse_int(fields[1]), fields[2], parse_int(fields[3])
    if not 1 <= dek_id <= 2**31 - 1:
        raise FormatError(f"dek id {dek_id} out of range")
    if state not in DEK_STATES:
        raise FormatError(f"dek {dek_id}: unknown state {state[:20]!r}")
    if created > MAX_CREATED:
        raise FormatError(f"dek {dek_id}: creation time {created} out of range (0..{MAX_CREATED})")
    nonce, wrapped = _wrapped(fields, 4)
    if len(wrapped) != WRAPPED_KEY_BYTES:
        raise FormatError(f"dek {dek_id}: wrapped key has the wrong size")
    return Dek(dek_id, state, created, nonce, wrapped)


def _expect(line: str, keyword: str) -> str:
    word, sep, rest = line.partition(" ")
    if word != keyword or not sep:
        raise FormatError(f"expected {keyword!r} line")
    return rest


def _parse_digests(text: str) -> list[tuple[int, bytes]]:
    entries = []
    for item in text.split(" "):
        index, sep, digest = item.partition("=")
        if not sep:
            raise FormatError("slots line: expected <index>=<sha256>")
        entries.append((parse_int(index), b64decode(digest, 32)))
    indexes = [i for i, _ in entries]
    if indexes != sorted(set(indexes)) or len(entries) > MAX_SLOTS or indexes[-1] >= MAX_SLOTS:
        raise FormatError(f"slots line: 1..{MAX_SLOTS} unique ascending slot indexes")
    return entries


def _split(data: bytes) -> list[str]:
    if len(data) > MAX_FILE_BYTES:
        raise FormatError("file too large")
    # Bytes that are not ASCII are kept (as lone surrogates) so that one in a slot line costs only that
    # slot, which no longer matches its digest; parse() refuses them anywhere else.
    text = data.decode("ascii", "surrogateescape")
    lines = text.split("\n")
    first = lines[0].split(" ")
    if first[0] != MAGIC or len(first) != 2:
        raise FormatError("not an unlocker keystore")
    if first[1] != VERSION:
        raise UnsupportedVersion(first[1][:20])
    if lines[-1] != "":
        raise FormatError("file is truncated (no final newline)")
    lines.pop()
    if len(lines) < 8:
        raise FormatError("file is truncated")
    if any(not line or line != line.strip() or "  " in line for line in lines):
        raise FormatError("blank line or stray whitespace")
    return lines


def parse(data: bytes) -> Keystore:
    """Parse a keystore file. Raises FormatError (UnsupportedVersion for another format version).

    A slot line that does not match its digest becomes a DamagedSlot instead of failing the parse.
    """
    lines = _split(data)
    digests = _parse_digests(_expect(lines[-3], "slots"))
    if len(lines) < 3 + len(digests) + 1 + 3:
        raise FormatError("file is truncated (fewer slot lines than the slots line lists)")
    slot_lines, dek_lines = lines[3 : 3 + len(digests)], lines[3 + len(digests) : -3]
    if not all(line.isascii() for line in lines[:3] + dek_lines + lines[-3:]):
        raise FormatError("file contains non-ASCII bytes outside the slot lines")
    checked = "\n".join(lines[:3] + dek_lines + lines[-3:-1]) + "\n"
    if _expect(lines[-1], "sha256") != hashlib.sha256(checked.encode("ascii")).hexdigest():
        raise FormatError("checksum mismatch (disk error, truncated copy or edited file)")
    keystore_id = _expect(lines[1], "keystore")
    if not _HEX_ID.fullmatch(keystore_id):
        raise FormatError("keystore id must be 32 lowercase hex digits")
    generation = parse_int(_expect(lines[2], "generation"))
    mac = b64decode(_expect(lines[-2], "mac"), MAC_BYTES)

    slots: list[Slot] = []
    damaged: list[DamagedSlot] = []
    for (index, digest), line in zip(digests, slot_lines, strict=True):
        if slot_digest(line) != digest:
            damaged.append(DamagedSlot(index, line, digest))
            continue
        try:
            slot = _parse_slot(line.split(" "))
        except FormatError as e:
            raise FormatError(f"slot {index}: {e}") from None
        if slot.index != index:
            raise FormatError(f"slot line {index} names slot {slot.index}")
        slots.append(slot)
    deks: list[Dek] = []
    for number, line in enumerate(dek_lines, start=4 + len(slot_lines)):
        try:
            deks.append(_parse_dek(line.split(" ")))
        except FormatError as e:
            raise FormatError(f"line {number}: {e}") from None
    _check_deks(deks)
    return Keystore(bytes.fromhex(keystore_id), generation, tuple(slots), tuple(deks), mac, tuple(damaged))


def _check_deks(deks: list[Dek]) -> None:
    if not deks or len(deks) > MAX_DEKS:
        raise FormatError(f"needs 1..{MAX_DEKS} data keys")
    if [d.id for d in deks] != sorted({d.id for d in deks}):
        raise FormatError("dek ids must be unique and ascending")
    if sum(d.state == "primary" for d in deks) != 1:
        raise FormatError("exactly one dek must be primary")
