"""Fuzz targets: every parser that takes bytes from outside, each with a property, not just "no crash".

Each target takes the fuzzer's bytes and raises AssertionError when the property fails: an accepted
input round-trips (parse -> serialize gives the same bytes, or the same value where a serializer
normalizes), and a refused input is refused with the project's own error type, never another exception.
tests/fuzz/run.py drives them with atheris; tests/test_fuzz.py runs each briefly, scripts/fuzz for long.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable

from unlocker import config
from unlocker.client import Keyring, KeyringError
from unlocker.errors import InvalidInput
from unlocker.keystore import fileformat
from unlocker.keystore.slots import recovery
from unlocker.service import broker, grants, peer


def keystore(data: bytes) -> None:
    try:
        parsed = fileformat.parse(data)
    except fileformat.FormatError:
        return
    assert parsed.serialize() == data, "an accepted keystore must serialize to the same bytes"


def grant_list(data: bytes) -> None:
    try:
        parsed = grants.parse_bytes(data)
    except InvalidInput:
        return
    text = grants.serialize(parsed)  # a list that parsed must be writable, and read back the same
    assert grants.parse(text) == parsed
    assert grants.serialize(grants.parse_bytes(text.encode("ascii"))) == text, "not a fixed point"


def peer_address(data: bytes) -> None:
    try:
        request = peer.parse_address(data)
    except peer.PeerError:
        pass
    else:
        nonce = data[1 : data.index(b"/unit/")].decode("ascii")
        rebuilt = f"\0{nonce}/unit/{request.unit}/{request.credential}".encode("ascii")
        assert rebuilt == data, "the address must be exactly its parts"
    # The other outside text of a request: the peer's /proc/<pid>/cgroup. Any text is a yes or a no.
    text = data.decode("utf-8", "replace")
    assert peer.in_unit_cgroup(text, "granted.service") in (True, False)


def control_request(data: bytes) -> None:
    try:
        request = broker.parse_control_request(data)
    except ValueError:
        return
    assert isinstance(request, dict)


def config_file(data: bytes) -> None:
    try:
        parsed = config.loads(data, "fuzz.conf")
    except InvalidInput:
        return
    assert all(0 <= p <= 23 for p in parsed.tpm2_pcrs) and 1 <= parsed.tries <= config.MAX_TRIES


_RING = Keyring({1: bytes(range(32)), 2: bytes(range(32, 64))}, 2)


def client_token(data: bytes) -> None:
    token = data.decode("utf-8", "replace")
    try:
        plaintext = _RING.decrypt(token, b"")
    except KeyringError:
        pass
    else:  # only a token encrypt() wrote decrypts, so it is canonical: its parts give it back exactly
        key_id, body = token.split(":")[1:]
        raw = int(key_id).to_bytes(4, "big") + base64.b64decode(body)
        assert _RING.decrypt_bytes(raw, b"") == plaintext
        assert token == f"uk1:{int(key_id)}:{base64.b64encode(raw[4:]).decode()}"
    try:
        _RING.decrypt_bytes(data, b"")
    except KeyringError:
        pass
    aad = data[:8]
    assert _RING.decrypt(_RING.encrypt(data, aad), aad) == data


def client_keyring(data: bytes) -> None:
    try:
        ring = Keyring.from_bytes(data)
    except KeyringError:
        return
    token = ring.encrypt(b"x", b"")
    assert ring.decrypt(token, b"") == b"x"


def recovery_key(data: bytes) -> None:
    try:
        key = recovery.parse_key(data)
    except InvalidInput:
        return
    if key is None:
        return
    typed = bytes(c for c in data if c not in b"- \t").lower()
    assert bytes(recovery.format_key(key)).replace(b"-", b"") == typed, "the key must be what was typed"


TARGETS: dict[str, Callable[[bytes], None]] = {
    "keystore": keystore,
    "grant_list": grant_list,
    "peer_address": peer_address,
    "control_request": control_request,
    "config_file": config_file,
    "client_token": client_token,
    "client_keyring": client_keyring,
    "recovery_key": recovery_key,
}

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
