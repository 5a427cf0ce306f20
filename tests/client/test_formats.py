"""Credential formats, byte for byte."""

from __future__ import annotations

import base64
import json

import pytest

from unlocker.client.formats import Format, FormatUnavailable, KeyVersion, render

K1, K2 = bytes(range(32)), bytes(range(100, 132))


def versions():
    return [KeyVersion(1, "active", bytearray(K1)), KeyVersion(2, "primary", bytearray(K2))]


def test_raw_hex_base64_deliver_the_primary():
    assert bytes(render(Format.raw, versions())) == K2
    assert bytes(render(Format.hex, versions())) == K2.hex().encode() + b"\n"
    assert bytes(render(Format.base64, versions())) == base64.b64encode(K2) + b"\n"


def test_mariadb_lists_every_version_under_its_stable_id():
    assert bytes(render(Format.mariadb, versions())) == f"1;{K1.hex()}\n2;{K2.hex()}\n".encode()


def test_mariadb_needs_key_id_1():
    with pytest.raises(FormatUnavailable, match="key id 1"):
        render(Format.mariadb, [KeyVersion(2, "primary", bytearray(K2))])


def test_json_lists_all_versions_and_the_primary():
    doc = json.loads(bytes(render(Format.json, versions())))
    assert doc == {"primary": 2, "keys": [
        {"id": 1, "state": "active", "key": base64.b64encode(K1).decode()},
        {"id": 2, "state": "primary", "key": base64.b64encode(K2).decode()},
    ]}


def test_render_leaves_the_source_keys_intact():
    vs = versions()
    render(Format.json, vs)
    assert bytes(vs[0].key) == K1 and bytes(vs[1].key) == K2
