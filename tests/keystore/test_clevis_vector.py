"""The clevis slot's test vector (tests/vectors/clevis-v1.json, docs/FORMAT.md), checked with tools and
primitives other than unlocker's own: Debian's `jose` opens the JWE with the Tang server's private key
(no network), and cryptography's HKDF and AES-GCM follow the spec to the store key."""

from __future__ import annotations

import base64
import json
import subprocess

from conftest import ROOT
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from unlocker.keystore.fileformat import parse

VECTORS = ROOT / "tests" / "vectors"
VECTOR = json.loads((VECTORS / "clevis-v1.json").read_text())
DATA = VECTOR["keystore"].encode()


def _slot1() -> dict[str, str]:
    line = DATA.decode().splitlines()[4]
    assert line.startswith("slot 1 clevis jwe=")
    return dict(f.split("=", 1) for f in line.split(" ")[3:])


def test_vector_round_trips_byte_for_byte():
    assert parse(DATA).serialize() == DATA


def test_jose_opens_the_slot_jwe_with_the_servers_key(tmp_path):
    # The server's private exchange key, as plain ECDH-ES key material: jose will not use a key marked
    # "alg": "ECMR" for ECDH-ES, so the marks go.
    key = json.loads((VECTORS / VECTOR["tang_exchange_key"]).read_text())
    plain = tmp_path / "exchange.jwk"
    plain.write_text(json.dumps({k: v for k, v in key.items() if k not in ("alg", "key_ops")}))
    p = subprocess.run(["jose", "jwe", "dec", "-i-", "-k", str(plain)],
                       input=_slot1()["jwe"].encode(), capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.hex() == VECTOR["slot1_secret"]


def test_vector_matches_an_independent_reading_of_the_spec():
    keystore_id = bytes.fromhex(DATA.decode().splitlines()[1].split(" ")[1])
    secret = bytes.fromhex(VECTOR["slot1_secret"])
    slot_key = HKDF(hashes.SHA256(), 32, keystore_id, b"unlocker/v1 slot clevis").derive(secret)
    assert slot_key.hex() == VECTOR["slot1_key"]
    fields = _slot1()
    line = DATA.decode().splitlines()[4]
    aad = b"unlocker/v1 slot\n" + keystore_id + line[: line.index(" nonce=")].encode()
    store_key = AESGCM(slot_key).decrypt(base64.b64decode(fields["nonce"]), base64.b64decode(fields["key"]), aad)
    assert store_key.hex() == VECTOR["store_key"]


def test_the_jwe_names_the_server_and_its_key():
    header = json.loads(base64.urlsafe_b64decode(_slot1()["jwe"].split(".")[0] + "=="))
    assert header["alg"] == "ECDH-ES" and header["enc"] == "A256GCM"
    assert header["clevis"]["pin"] == "tang" and header["clevis"]["tang"]["url"] == VECTOR["tang_url"]
    assert f"tang/{header['kid']}.jwk" == VECTOR["tang_exchange_key"]


def test_the_spec_shows_the_same_vector():
    spec = (ROOT / "docs" / "FORMAT.md").read_text()
    assert VECTOR["keystore"] in spec
    assert VECTOR["slot1_secret"] in spec and VECTOR["slot1_key"] in spec and VECTOR["store_key"] in spec
