"""The keystore format: test vectors in both directions, strict parsing, corruption at every byte."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from conftest import ROOT
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from unlocker.errors import WrongSecret
from unlocker.keystore import fileformat as ks
from unlocker.keystore import kdf
from unlocker.keystore.fileformat import Dek, FormatError, Keystore, Slot, UnsupportedVersion, parse
from unlocker.keystore.kdf import Argon2Params
from unlocker.keystore.slots import Secrets
from unlocker.keystore.unlock import open_keystore

VECTOR = json.loads((ROOT / "tests" / "vectors" / "keystore-v1.json").read_text())
DATA = VECTOR["keystore"].encode()


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt, info).derive(ikm)


def _fields(line: str) -> dict[str, str]:
    return dict(f.split("=", 1) for f in line.split(" ") if "=" in f)


def test_vector_round_trips_byte_for_byte():
    assert parse(DATA).serialize() == DATA


def test_vector_opens_with_the_passphrase_and_the_recovery_key():
    for secret in (VECTOR["passphrase"], VECTOR["recovery_key"]):
        opened = open_keystore(parse(DATA), Secrets(bytearray(secret.encode())))
        assert opened.store_key.hex() == VECTOR["store_key"]
        assert opened.dek(1).hex() == VECTOR["dek"]["1"]


def test_vector_matches_an_independent_reading_of_the_spec():
    """Re-derive every value with cryptography's primitives directly, following docs/FORMAT.md."""
    lines = VECTOR["keystore"].splitlines()
    keystore_id = bytes.fromhex(lines[1].split(" ")[1])
    slot0, dek1 = lines[3], lines[5]
    f = _fields(slot0)
    memory, iterations, lanes = (int(x) for x in f["argon2id"].split(","))
    argon = Argon2id(salt=base64.b64decode(f["salt"]), length=32, iterations=iterations, lanes=lanes,
                     memory_cost=memory).derive(VECTOR["passphrase"].encode())
    assert argon.hex() == VECTOR["slot0_argon2id"]
    slot_key = _hkdf(argon, keystore_id, b"unlocker/v1 slot passphrase")
    assert slot_key.hex() == VECTOR["slot0_key"]
    slot_header = slot0[: slot0.index(" nonce=")]
    store_key = AESGCM(slot_key).decrypt(base64.b64decode(f["nonce"]), base64.b64decode(f["key"]),
                                         b"unlocker/v1 slot\n" + keystore_id + slot_header.encode())
    assert store_key.hex() == VECTOR["store_key"]

    wrap_key = _hkdf(store_key, keystore_id, b"unlocker/v1 dek wrap")
    d = _fields(dek1)
    dek_header = " ".join(dek1.split(" ")[i] for i in (0, 1, 3))  # "dek <id> <created>"
    dek = AESGCM(wrap_key).decrypt(base64.b64decode(d["nonce"]), base64.b64decode(d["key"]),
                                   b"unlocker/v1 dek\n" + keystore_id + dek_header.encode())
    assert dek.hex() == VECTOR["dek"]["1"]

    digests = dict(item.split("=", 1) for item in lines[-3].split(" ")[1:])
    for i, line in enumerate(lines[3:5]):
        assert base64.b64decode(digests[str(i)]) == hashlib.sha256(line.encode()).digest()
    covered = "\n".join(lines[:3] + lines[5:-2]) + "\n"
    mac_key = _hkdf(store_key, keystore_id, b"unlocker/v1 header mac")
    assert mac_key.hex() == VECTOR["mac_key"]
    mac = hmac.new(mac_key, covered.encode(), hashlib.sha256).digest()
    assert base64.b64encode(mac).decode() == lines[-2].split(" ")[1]
    checked = "\n".join(lines[:3] + lines[5:-1]) + "\n"
    assert hashlib.sha256(checked.encode()).hexdigest() == lines[-1].split(" ")[1]


def _edit(old: str, new: str) -> bytes:
    """The vector with one edit, checksum and slot digests recomputed: only the parser's rules stand
    between it and acceptance."""
    keystore = parse(DATA)
    text = keystore.serialize().decode().replace(old, new, 1)
    lines = text.splitlines()
    slot_lines = [line for line in lines if line.startswith("slot ")]
    lines[-3] = "slots " + " ".join(
        f"{line.split(' ')[1]}={base64.b64encode(hashlib.sha256(line.encode()).digest()).decode()}"
        for line in slot_lines
    )
    checked = "\n".join([*lines[:3], *[x for x in lines[3:-1] if not x.startswith("slot ")]]) + "\n"
    lines[-1] = "sha256 " + hashlib.sha256(checked.encode()).hexdigest()
    return ("\n".join(lines) + "\n").encode()


def test_edit_helper_is_faithful():
    assert _edit("generation 2", "generation 2") == DATA


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("argon2id=8192,2,4", "argon2id=8192,2,4 extra=1", "expected field .salt."),
        ("argon2id=8192,2,4", "argon2id=08192,2,4", "invalid number"),
        ("argon2id=8192,2,4", "argon2id=1234567890123456789012,2,4", "invalid number"),
        ("argon2id=8192,2,4", "argon2id=4194305,2,4", "memory"),
        ("argon2id=8192,2,4", "argon2id=8192,1001,4", "iterations"),
        ("argon2id=8192,2,4", "argon2id=8192,2,0", "lanes"),
        ("slot 1 recovery", "slot 1 fingerprint", "unknown slot type"),
        ("generation 2", "generation 2 3", "invalid number"),
        ("dek 1 primary", "dek 1 active", "exactly one dek must be primary"),
        ("salt=ItC9tADbMDXg/0zBseh+4g==", "salt=ItC9tADbMDXg/0zBseh+4h==", "non-canonical base64"),
        ("salt=ItC9tADbMDXg/0zBseh+4g==", "salt=ItC9tADbMDXg/0zBseh+4g", "invalid base64"),
        ("keystore a4ee", "keystore A4EE", "lowercase hex"),
        ("primary 1764374400", "primary 999999999999999999", "creation time .* out of range"),
        # Found by tests/fuzz (keystore): any first word was taken for "dek".
        ("dek 1 primary", "xdek 1 primary", "expected a 'dek' line"),
        ("primary 1764374400", "primary 253402300800", "creation time .* out of range"),
    ],
)
def test_parser_refuses_non_canonical_or_out_of_range_input(old, new, message):
    with pytest.raises(FormatError, match=message):
        parse(_edit(old, new))


def test_a_slot_line_must_start_with_slot():
    # The same gap as the one tests/fuzz found in dek lines: the first word of a slot line was never read.
    lines = DATA.decode().splitlines()
    lines[4] = "tols" + lines[4][4:]
    digests = lines[-3].split(" ")
    digests[2] = "1=" + base64.b64encode(hashlib.sha256(lines[4].encode()).digest()).decode()
    lines[-3] = " ".join(digests)
    checked = "\n".join(lines[:3] + lines[5:-1]) + "\n"
    lines[-1] = "sha256 " + hashlib.sha256(checked.encode()).hexdigest()
    with pytest.raises(FormatError, match="slot 1: expected a 'slot' line"):
        parse(("\n".join(lines) + "\n").encode())


def test_huge_kdf_cost_is_refused_before_anything_is_allocated():
    # 4 TiB would take the machine down if it were obeyed; parse() is pure, so refusing here means
    # no Argon2id call ever sees it.
    with pytest.raises(FormatError, match="memory"):
        parse(_edit("argon2id=8192,2,4", "argon2id=4294967296,2,4"))


def test_unknown_version_is_named():
    with pytest.raises(UnsupportedVersion, match="'v2'"):
        parse(DATA.replace(b"unlocker-keystore v1", b"unlocker-keystore v2", 1))


@pytest.mark.parametrize("junk", [b"x", b"\n", b"mac AAAA\n", b"\0"])
def test_trailing_bytes_are_refused(junk):
    with pytest.raises(FormatError):
        parse(DATA + junk)


def test_every_truncation_is_reported_as_damage():
    for n in range(len(DATA)):
        with pytest.raises(FormatError):
            parse(DATA[:n])


def test_every_bit_flip_is_damage_or_harmless_never_a_wrong_key():
    """Flip each bit of the file. Either parsing reports damage, or the flip was in a slot line, which is
    then marked damaged while the other slot opens the keystore with the right DEK."""
    opened_with_other_slot = 0
    for i in range(len(DATA)):
        for bit in range(8):
            data = bytearray(DATA)
            data[i] ^= 1 << bit
            try:
                keystore = parse(bytes(data))
            except FormatError:
                continue
            assert [d.index for d in keystore.damaged] in ([0], [1]), (i, bit)
            secret = VECTOR["recovery_key"] if keystore.damaged[0].index == 0 else VECTOR["passphrase"]
            opened = open_keystore(keystore, Secrets(bytearray(secret.encode())))
            assert opened.dek(1).hex() == VECTOR["dek"]["1"]
            opened_with_other_slot += 1
    assert opened_with_other_slot > 0


def test_a_damaged_slot_is_kept_byte_for_byte():
    data = bytearray(DATA)
    data[DATA.index(b"slot 1 recovery") + 30] ^= 1
    keystore = parse(bytes(data))
    assert keystore.damaged[0].index == 1
    assert keystore.serialize() == bytes(data)


@pytest.mark.parametrize("slot", [0, 1])
def test_a_non_ascii_byte_in_a_slot_line_costs_only_that_slot(slot):
    data = bytearray(DATA)
    data[DATA.index(b"slot %d " % slot) + 30] |= 0x80
    keystore = parse(bytes(data))
    assert [d.index for d in keystore.damaged] == [slot]
    assert keystore.serialize() == bytes(data)
    other = VECTOR["recovery_key"] if slot == 0 else VECTOR["passphrase"]
    assert open_keystore(keystore, Secrets(bytearray(other.encode()))).dek(1).hex() == VECTOR["dek"]["1"]


@pytest.mark.parametrize("where", [b"generation", b"dek 1", b"slots 0", b"mac", b"sha256"])
def test_a_non_ascii_byte_outside_the_slot_lines_is_damage(where):
    data = bytearray(DATA)
    data[DATA.index(where) + 2] |= 0x80
    with pytest.raises(FormatError):
        parse(bytes(data))


def test_tampering_that_fixes_up_the_unkeyed_sums_fails_the_mac_after_unlock():
    forged = parse(_edit("dek 1 primary 1764374400", "dek 1 primary 1764374401"))
    with pytest.raises(FormatError, match="header authentication failed"):
        open_keystore(forged, Secrets(bytearray(VECTOR["passphrase"].encode())))


def test_a_forged_slot_looks_exactly_like_a_wrong_passphrase():
    forged = parse(_edit("argon2id=8192,2,4", "argon2id=8192,1,4"))
    with pytest.raises(WrongSecret) as forged_error:
        open_keystore(forged, Secrets(bytearray(VECTOR["passphrase"].encode()), None), only_slot=0)
    with pytest.raises(WrongSecret) as wrong_error:
        open_keystore(parse(DATA), Secrets(bytearray(b"wrong passphrase")), only_slot=0)
    assert str(forged_error.value) == str(wrong_error.value)


# ---- property tests: any well-formed keystore value serializes and parses back to itself ----

_b = st.binary
_slot_params = {
    "passphrase": lambda: st.tuples(
        st.builds(lambda m, t, p: ks.format_argon2(Argon2Params(m, t, p)),
                  st.integers(kdf.MIN_MEMORY_KIB, kdf.MAX_MEMORY_KIB),
                  st.integers(1, 1000), st.integers(1, 16)),
        _b(min_size=16, max_size=16).map(ks.b64encode),
    ).map(lambda v: (("argon2id", v[0]), ("salt", v[1]))),
    "recovery": lambda: st.just(()),
    "tpm2": lambda: st.tuples(
        st.lists(st.integers(0, 23), unique=True, max_size=4).map(lambda p: ks.format_pcrs(tuple(sorted(p)))),
        _b(min_size=1, max_size=300).map(ks.b64encode),
        _b(min_size=1, max_size=300).map(ks.b64encode),
        _b(min_size=34, max_size=34).map(ks.b64encode),
    ).map(lambda v: (("pcrs", v[0]), ("bank", "sha256"), ("parent", v[3]), ("public", v[1]), ("private", v[2]))),
}


@st.composite
def keystores(draw) -> Keystore:
    indexes = draw(st.lists(st.integers(0, ks.MAX_SLOTS - 1), min_size=1, max_size=5, unique=True))
    slots = tuple(
        Slot(i, kind, draw(_slot_params[kind]()), draw(_b(min_size=12, max_size=12)),
             draw(_b(min_size=48, max_size=48)))
        for i in sorted(indexes)
        for kind in [draw(st.sampled_from(sorted(_slot_params)))]
    )
    ids = sorted(draw(st.lists(st.integers(1, 2**31 - 1), min_size=1, max_size=4, unique=True)))
    primary = draw(st.sampled_from(ids))
    deks = tuple(
        Dek(i, "primary" if i == primary else draw(st.sampled_from(["active", "retired"])),
            draw(st.integers(0, ks.MAX_CREATED)), draw(_b(min_size=12, max_size=12)),
            draw(_b(min_size=48, max_size=48)))
        for i in ids
    )
    return Keystore(draw(_b(min_size=16, max_size=16)), draw(st.integers(0, 2**50)), slots, deks,
                    draw(_b(min_size=32, max_size=32)))


@settings(max_examples=300, deadline=None)
@given(keystores())
def test_serialize_then_parse_is_the_identity(keystore):
    data = keystore.serialize()
    assert parse(data) == keystore
    assert parse(data).serialize() == data


def test_the_spec_shows_the_same_vector():
    spec = (ROOT / "docs" / "FORMAT.md").read_text()
    assert VECTOR["keystore"] in spec
    assert VECTOR["dek"]["1"] in spec and VECTOR["store_key"] in spec
