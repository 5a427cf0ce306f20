"""The parts of JOSE that clevis uses: base64url, RFC 7638 thumbprints, compact JWE with ECDH-ES or dir
and A256GCM (RFC 7516/7518), ConcatKDF, and the signature check of a Tang advertisement (a JWS signed by
every one of its `verify` keys). Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from unlocker.errors import InvalidInput, WrongSecret
from unlocker.memory import wipe

MAX_JWE_BYTES = 256 * 1024  # an sss of 3 tang pins is 5.5 KB; nesting and many pins stay far below
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

# JOSE curve name -> (cryptography curve, pycryptodome curve name, coordinate bytes)
CURVES = {
    "P-256": (ec.SECP256R1(), "P-256", 32),
    "P-384": (ec.SECP384R1(), "P-384", 48),
    "P-521": (ec.SECP521R1(), "P-521", 66),
}
_JWS_HASH = {"ES256": (hashes.SHA256(), "P-256"), "ES384": (hashes.SHA384(), "P-384"),
             "ES512": (hashes.SHA512(), "P-521")}


class JoseError(InvalidInput):
    """A JWE, JWK or advertisement that is not shaped as clevis makes them."""


def b64url(raw: bytes | bytearray) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise JoseError("invalid base64url") from None


def b64url_json(obj: object) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def json_of(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise JoseError("not JSON") from None


def thumbprint(jwk: dict[str, Any], hash_name: str = "sha256") -> str:
    """RFC 7638: the hash of the required members, sorted, no whitespace (what `jose jwk thp` prints)."""
    required = {"EC": ("crv", "kty", "x", "y"), "oct": ("k", "kty"), "RSA": ("e", "kty", "n")}.get(jwk.get("kty", ""))
    if required is None or any(not isinstance(jwk.get(m), str) for m in required):
        raise JoseError("a JWK without the members its thumbprint needs")
    canonical = json.dumps({m: jwk[m] for m in required}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.new(hash_name, canonical.encode()).digest())


def thumbprints(jwk: dict[str, Any]) -> tuple[str, str]:
    """(S256, S1): clevis accepts a `thp` of either."""
    return thumbprint(jwk, "sha256"), thumbprint(jwk, "sha1")


def ec_point(jwk: dict[str, Any]) -> tuple[str, int, int]:
    """(curve, x, y) of a public EC JWK; the curve is one clevis uses."""
    if jwk.get("kty") != "EC" or jwk.get("crv") not in CURVES:
        raise JoseError("expected an EC key on P-256, P-384 or P-521")
    size = CURVES[jwk["crv"]][2]
    x, y = unb64url(str(jwk.get("x", ""))), unb64url(str(jwk.get("y", "")))
    if len(x) != size or len(y) != size:
        raise JoseError("EC key coordinates have the wrong size")
    return jwk["crv"], int.from_bytes(x, "big"), int.from_bytes(y, "big")


def ec_jwk(crv: str, x: int, y: int) -> dict[str, str]:
    size = CURVES[crv][2]
    return {"kty": "EC", "crv": crv, "x": b64url(x.to_bytes(size, "big")), "y": b64url(y.to_bytes(size, "big"))}


@dataclass(frozen=True)
class CompactJwe:
    protected: str  # the header exactly as written: it is the AAD
    encrypted_key: str
    iv: str
    ciphertext: str
    tag: str

    @property
    def header(self) -> dict[str, Any]:
        header = json_of(unb64url(self.protected))
        if not isinstance(header, dict):
            raise JoseError("the JWE header is not a JSON object")
        return header

    def serialize(self) -> str:
        return ".".join((self.protected, self.encrypted_key, self.iv, self.ciphertext, self.tag))


def parse_compact(text: str) -> CompactJwe:
    text = text.strip()
    if len(text) > MAX_JWE_BYTES or not _COMPACT.fullmatch(text):
        raise JoseError("not a compact JWE (five base64url parts joined by dots)")
    return CompactJwe(*text.split("."))


def concat_kdf(z: bytes | bytearray, enc: str, header: dict[str, Any], bits: int = 256) -> bytearray:
    """RFC 7518 4.6.2 with AlgorithmID = enc (direct key agreement), one SHA-256 block for 256 bits.
    Hashed piece by piece: a concatenation would leave a copy of Z in freed memory."""
    def field(raw: bytes) -> bytes:
        return len(raw).to_bytes(4, "big") + raw
    apu = unb64url(header["apu"]) if isinstance(header.get("apu"), str) else b""
    apv = unb64url(header["apv"]) if isinstance(header.get("apv"), str) else b""
    digest = hashlib.sha256(b"\x00\x00\x00\x01")
    digest.update(z)
    digest.update(field(enc.encode()) + field(apu) + field(apv) + bits.to_bytes(4, "big"))
    full = digest.digest()
    out = bytearray(full[: bits // 8])
    wipe(full)
    return out


def seal(header: dict[str, Any], cek: bytes | bytearray, plaintext: bytes | bytearray) -> str:
    """A compact A256GCM JWE with an empty encrypted key (ECDH-ES or dir)."""
    protected = b64url_json(header)
    iv = os.urandom(12)
    sealed = bytearray(len(plaintext) + 16)
    AESGCM(cek).encrypt_into(iv, plaintext, protected.encode("ascii"), sealed)
    return CompactJwe(protected, "", b64url(iv), b64url(sealed[:-16]), b64url(sealed[-16:])).serialize()


def open_(jwe: CompactJwe, cek: bytes | bytearray) -> bytearray:
    """The plaintext. Raises WrongSecret when the tag fails (a tampered header, a wrong key)."""
    if jwe.header.get("enc") != "A256GCM" or jwe.encrypted_key:
        raise JoseError("only A256GCM with direct key agreement is supported (what clevis makes)")
    iv, tag = unb64url(jwe.iv), unb64url(jwe.tag)
    if len(iv) != 12 or len(tag) != 16:
        raise JoseError("bad A256GCM IV or tag size")
    ciphertext = unb64url(jwe.ciphertext)
    # Into a buffer the caller wipes: the plaintext is a slot secret or an sss point.
    out = bytearray(len(ciphertext))
    try:
        AESGCM(cek).decrypt_into(iv, ciphertext + tag, jwe.protected.encode("ascii"), out)
    except (InvalidTag, ValueError):
        out[:] = bytes(len(out))
        raise WrongSecret() from None
    return out


def advertisement_keys(adv: dict[str, Any]) -> list[dict[str, Any]]:
    """The key set an advertisement carries, unverified."""
    payload = adv.get("payload")
    if not isinstance(payload, str):
        raise JoseError("the advertisement is not a JWS")
    body = json_of(unb64url(payload))
    keys = body.get("keys") if isinstance(body, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise JoseError("the advertisement carries no key set")
    return keys


def verify_advertisement(adv: dict[str, Any]) -> list[dict[str, Any]]:
    """The advertised keys, after checking that every `verify` key signed them (clevis's rule). Accepts
    the general and the flattened JWS JSON serialization. Raises JoseError naming what failed."""
    keys = advertisement_keys(adv)
    signatures = adv.get("signatures", [adv])
    if not isinstance(signatures, list):
        raise JoseError("the advertisement's signatures are malformed")
    verify_keys = [k for k in keys if "verify" in k.get("key_ops", [])]
    if not verify_keys:
        raise JoseError("the advertisement has no signing key")
    for key in verify_keys:
        if not any(signed_by(key, adv, s) for s in signatures if isinstance(s, dict)):
            raise JoseError(f"the advertisement's signature by key {thumbprint(key)} does not verify")
    return keys


def signed_by(jwk: dict[str, Any], adv: dict[str, Any], signature: dict[str, Any]) -> bool:
    """Whether this one signature of the JWS `adv` is by `jwk` and verifies."""
    payload, protected = str(adv.get("payload", "")), signature.get("protected", "")
    try:
        alg = json_of(unb64url(protected)).get("alg")
        hash_alg, crv = _JWS_HASH[alg]
        if jwk.get("crv") != crv:
            return False
        _, x, y = ec_point(jwk)
        raw = unb64url(str(signature.get("signature", "")))
        size = CURVES[crv][2]
        if len(raw) != 2 * size:
            return False
        der = utils.encode_dss_signature(int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big"))
        public = ec.EllipticCurvePublicNumbers(x, y, CURVES[crv][0]).public_key()
        public.verify(der, f"{protected}.{payload}".encode("ascii"), ec.ECDSA(hash_alg))
        return True
    except (InvalidSignature, KeyError, AttributeError, ValueError, JoseError):
        return False
