"""unlocker.client: the keyring an application reads, and field encryption with it."""

from __future__ import annotations

import base64
import json
import os
import re

import pytest

from unlocker.client import Keyring, KeyringError, field_aad
from unlocker.client.formats import Format, KeyVersion, render


def _write(tmp_path, versions):
    (tmp_path / "dek").write_bytes(bytes(render(Format.json, versions)))
    return tmp_path


@pytest.fixture
def keys():
    return {1: os.urandom(32), 2: os.urandom(32)}


def test_loads_what_the_broker_renders_and_round_trips(tmp_path, keys, monkeypatch):
    _write(tmp_path, [KeyVersion(1, "primary", bytearray(keys[1]))])
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    ring = Keyring.load()
    aad = field_aad("notes", "body", 7)
    token = ring.encrypt(b"marker", aad)
    assert token.startswith("uk1:1:") and b"marker" not in token.encode()
    assert ring.decrypt(token, aad) == b"marker"


def test_a_value_moved_to_another_row_does_not_decrypt(tmp_path, keys):
    ring = Keyring.load(directory=_write(tmp_path, [KeyVersion(1, "primary", bytearray(keys[1]))]))
    token = ring.encrypt(b"marker", field_aad("notes", "body", 7))
    for aad in (field_aad("notes", "body", 8), field_aad("notes", "title", 7), field_aad("other", "body", 7)):
        with pytest.raises(KeyringError, match="does not decrypt here"):
            ring.decrypt(token, aad)


def test_old_values_decrypt_after_a_dek_rotation(tmp_path, keys):
    old = Keyring.load(directory=_write(tmp_path, [KeyVersion(1, "primary", bytearray(keys[1]))]))
    aad = field_aad("t", "c", 1)
    token = old.encrypt(b"written under v1", aad)
    new = Keyring.load(directory=_write(tmp_path, [KeyVersion(1, "active", bytearray(keys[1])),
                                                   KeyVersion(2, "primary", bytearray(keys[2]))]))
    assert new.decrypt(token, aad) == b"written under v1"
    assert new.encrypt(b"x", aad).startswith("uk1:2:")


def test_retired_key_is_named(tmp_path, keys):
    old = Keyring.load(directory=_write(tmp_path, [KeyVersion(1, "primary", bytearray(keys[1]))]))
    token = old.encrypt(b"x", b"")
    new = Keyring.load(directory=_write(tmp_path, [KeyVersion(2, "primary", bytearray(keys[2]))]))
    with pytest.raises(KeyringError, match="key 1 is not in this keyring"):
        new.decrypt(token, b"")


def test_missing_empty_or_malformed_credentials_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(KeyringError, match="CREDENTIALS_DIRECTORY is not set"):
        Keyring.load()
    with pytest.raises(KeyringError, match="cannot read"):
        Keyring.load(directory=tmp_path)
    (tmp_path / "dek").write_bytes(b"")
    with pytest.raises(KeyringError, match="is empty"):
        Keyring.load(directory=tmp_path)
    (tmp_path / "dek").write_bytes(os.urandom(32))  # a raw-format grant, not json
    with pytest.raises(KeyringError, match="not unlocker's json format"):
        Keyring.load(directory=tmp_path)
    short = base64.b64encode(b"x").decode()
    (tmp_path / "dek").write_text(json.dumps({"primary": 1, "keys": [{"id": 1, "key": short}]}))
    with pytest.raises(KeyringError, match="not 32 bytes"):
        Keyring.load(directory=tmp_path)


def test_tampered_tokens_fail(tmp_path, keys):
    ring = Keyring.load(directory=_write(tmp_path, [KeyVersion(1, "primary", bytearray(keys[1]))]))
    token = ring.encrypt(b"marker", b"")
    prefix, key_id, body = token.split(":")
    raw = bytearray(base64.b64decode(body))
    raw[-1] ^= 1
    for bad in (f"{prefix}:{key_id}:{base64.b64encode(raw).decode()}", "uk2:1:AAAA", "uk1:x:AAAA", "uk1:1:!!"):
        with pytest.raises(KeyringError):
            ring.decrypt(bad, b"")


@pytest.mark.parametrize("key_id", ["99999999999", "4294967296", "2147483648", "0", "01", "\u00b2", "\u0661", "-1",
                                    "+1", " 1", "1 "])
def test_a_malformed_key_id_in_a_token_is_a_keyring_error(tmp_path, keys, key_id):
    ring = Keyring.load(directory=_write(tmp_path, [KeyVersion(1, "primary", bytearray(keys[1]))]))
    body = ring.encrypt(b"marker", b"").split(":")[2]
    with pytest.raises(KeyringError):
        ring.decrypt(f"uk1:{key_id}:{body}", b"")


@pytest.mark.parametrize("body", ["\u00e9AAA", "AAAA\u0100", "AB==" * 8, "AAB=" * 8])
def test_a_body_that_is_not_canonical_ascii_base64_is_a_keyring_error(tmp_path, keys, body):
    ring = Keyring.load(directory=_write(tmp_path, [KeyVersion(1, "primary", bytearray(keys[1]))]))
    with pytest.raises(KeyringError):
        ring.decrypt(f"uk1:1:{body}", b"")


@pytest.mark.parametrize("key_id", [2**40, -1, 0, 1.5, True, "1", None])
def test_a_malformed_key_id_in_the_keyring_is_a_keyring_error(tmp_path, key_id):
    key = base64.b64encode(os.urandom(32)).decode()
    for doc in ({"primary": key_id, "keys": [{"id": key_id, "key": key}]},
                {"primary": 1, "keys": [{"id": 1, "key": key}, {"id": key_id, "key": key}]}):
        (tmp_path / "dek").write_text(json.dumps(doc))
        with pytest.raises(KeyringError, match="not unlocker's json format"):
            Keyring.load(directory=tmp_path)
    with pytest.raises(KeyringError):
        Keyring({key_id: os.urandom(32)}, key_id)  # type: ignore[dict-item]


# Tokens written by the code before decrypt was reworked (fixed keys and nonces): the format may not move.
VECTOR_KEYS = {1: bytes(range(32)), 7: bytes(range(32, 64))}
VECTOR_AAD = field_aad("notes", "body", 12345)
VECTOR_TEXT = ("uk1:7:ZGVmZ2hpamtsbW5v1E2/4++clrSoMf++43LyCfaiixEE6holqjNOEBksDzAaHADe/mlHvttyd7x+fg==",
               b"a 100-byte field? no: this one")
VECTOR_BINARY = (bytes.fromhex("000000076465666768696a6b6c6d6e6f4b60f80765a6cdc80bbfe0a284634739"), b"")


def test_token_vectors_decrypt_and_are_written_byte_for_byte(monkeypatch):
    from unlocker.client import fields

    ring = Keyring(VECTOR_KEYS, 7)
    assert ring.decrypt(VECTOR_TEXT[0], VECTOR_AAD) == VECTOR_TEXT[1]
    assert ring.decrypt_bytes(VECTOR_BINARY[0], VECTOR_AAD) == VECTOR_BINARY[1]
    monkeypatch.setattr(fields.os, "urandom", lambda n: bytes(range(100, 100 + n)))
    assert ring.encrypt(VECTOR_TEXT[1], VECTOR_AAD) == VECTOR_TEXT[0]
    assert ring.encrypt_bytes(VECTOR_BINARY[1], VECTOR_AAD) == VECTOR_BINARY[0]


@pytest.mark.parametrize(("token", "message"), [
    ("uk1:7:" + base64.b64encode(bytes(27)).decode(), "too short"),
    ("uk1:3:" + base64.b64encode(bytes(27)).decode(), "too short"),
    ("uk1:3:" + base64.b64encode(bytes(28)).decode(), "key 3 is not in this keyring"),
    ("uk1:3:!!", "malformed token"),
    ("uk1:03:" + base64.b64encode(bytes(28)).decode(), "not an unlocker field token"),
])
def test_errors_name_the_first_fault_whether_or_not_the_key_is_known(token, message):
    with pytest.raises(KeyringError, match=message):
        Keyring(VECTOR_KEYS, 7).decrypt(token, VECTOR_AAD)


@pytest.mark.parametrize("plaintext", [b"x" * 99, b"x" * 100])  # one and two '=' of padding
def test_only_the_canonical_encoding_of_a_body_decrypts(plaintext):
    ring = Keyring(VECTOR_KEYS, 7)
    head, body = ring.encrypt(plaintext, VECTOR_AAD).rsplit(":", 1)
    last = len(body.rstrip("=")) - 1
    for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/":
        variant = body[:last] + c + body[last + 1 :]
        if base64.b64encode(base64.b64decode(variant)).decode() != variant:
            with pytest.raises(KeyringError, match="non-canonical"):
                ring.decrypt(f"{head}:{variant}", VECTOR_AAD)
        elif variant == body:
            assert ring.decrypt(f"{head}:{variant}", VECTOR_AAD) == plaintext
        else:
            with pytest.raises(KeyringError, match="does not decrypt here"):
                ring.decrypt(f"{head}:{variant}", VECTOR_AAD)


def test_every_truncation_of_a_token_is_too_short_whether_or_not_the_key_is_known():
    # decrypt leaves the length to AESGCM's refusal (a short nonce or no room for the tag): every
    # length it may be handed must still read as too short, and nothing else.
    ring = Keyring(VECTOR_KEYS, 7)
    known = ring.encrypt_bytes(b"", VECTOR_AAD)
    for token in (known, (3).to_bytes(4, "big") + known[4:]):
        for n in range(len(token)):
            with pytest.raises(KeyringError, match=r"^token too short$"):
                ring.decrypt_bytes(token[:n], VECTOR_AAD)
    sealed = base64.b64decode(ring.encrypt(b"", VECTOR_AAD).split(":")[2])
    for key_id in (7, 3):
        for n in range(len(sealed)):
            with pytest.raises(KeyringError, match=r"^token too short$"):
                ring.decrypt(f"uk1:{key_id}:{base64.b64encode(sealed[:n]).decode()}", VECTOR_AAD)


_ZEROS = base64.b64encode(bytes(28)).decode()  # ends "AA==": a 'B' before the padding is non-canonical


@pytest.mark.parametrize(("body", "message"), [
    ("!!" + _ZEROS[2:], "malformed token"),
    ("AA==" + _ZEROS, "malformed token"),  # padding before the end
    (_ZEROS[:4] + ":" + _ZEROS[4:], "malformed token"),  # base64 has no ':'
    (_ZEROS[:-3] + "B==", "malformed token (non-canonical base64)"),
    (_ZEROS[:-3] + "A==", None),
])
def test_a_body_is_checked_alike_whether_or_not_the_key_is_known(body, message):
    ring = Keyring(VECTOR_KEYS, 7)
    for key_id, last in ((7, "does not decrypt here"), (3, "key 3 is not in this keyring")):
        with pytest.raises(KeyringError, match=f"^{re.escape(message)}$" if message else last):
            ring.decrypt(f"uk1:{key_id}:{body}", VECTOR_AAD)
