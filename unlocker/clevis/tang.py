"""The tang pin: ECDH-ES to a Tang server's exchange key at encryption, and the McCallum-Relyea exchange
at decryption, exactly as clevis-encrypt-tang and clevis-decrypt-tang do it.

Decryption, with the server key S = s·G and the JWE's ephemeral public key E = e·G (Z = e·S = s·E):
pick a fresh x, send E + x·G to POST /rec/<kid>, receive s·(E + x·G), subtract x·S to get s·E. The
server sees only a blinded point; whoever holds the JWE and can reach the server can decrypt it. That
is the design: the network is the second factor.
"""

from __future__ import annotations

import json
import time
from typing import Any

from unlocker.clevis import ecmr
from unlocker.clevis.http import ServerFailed, Timeouts, request, split_url
from unlocker.clevis.jose import (
    CompactJwe,
    JoseError,
    advertisement_keys,
    concat_kdf,
    ec_jwk,
    ec_point,
    json_of,
    open_,
    seal,
    signed_by,
    thumbprint,
    thumbprints,
    verify_advertisement,
)
from unlocker.errors import InvalidInput
from unlocker.memory import wipe


class UntrustedAdvertisement(InvalidInput):
    """The advertisement's signature does not verify, or no pinned thumbprint matches its keys."""


def fetch_advertisement(url: str, timeouts: Timeouts) -> dict[str, Any]:
    body = request(url, "GET", "/adv", None, time.monotonic() + timeouts.total, timeouts)
    adv = json_of(body)
    if not isinstance(adv, dict):
        raise ServerFailed(url, "bad reply", "the advertisement is not a JSON object")
    return adv


def trusted_keys(url: str, adv: dict[str, Any], thp: str | None) -> list[dict[str, Any]]:
    """The advertised keys when the advertisement is signed by all its verify keys and one of them is
    the pinned thumbprint. Without `thp` the keys are refused, naming the thumbprints to pin: a fleet
    enrollment must not trust the network it is about to depend on."""
    try:
        keys = verify_advertisement(adv)
    except JoseError as e:
        raise UntrustedAdvertisement(f"{url}: {e}") from None
    signing = [thumbprints(k) for k in keys if "verify" in k.get("key_ops", [])]
    if thp is None:
        offered = ", ".join(s256 for s256, _ in signing)
        raise UntrustedAdvertisement(f"{url}: no thp given; check the server's signing key out of band "
                                     f"(on the server: tang-show-keys) and pass one of: {offered}")
    if not any(thp in pair for pair in signing):
        raise UntrustedAdvertisement(f"{url}: the advertisement is not signed by the pinned key {thp}")
    return keys


def exchange_key(keys: list[dict[str, Any]]) -> dict[str, Any]:
    for key in keys:
        if "deriveKey" in key.get("key_ops", []) and key.get("alg") == "ECMR":
            return key
    raise JoseError("the advertisement has no ECMR exchange key")


def encrypt(config: dict[str, Any], plaintext: bytes | bytearray, timeouts: Timeouts) -> str:
    """`clevis encrypt tang CONFIG`: CONFIG has `url`, and `thp` (pinned) or `adv` (a trusted advertisement
    object, as clevis allows, still checked against `thp` when one is given)."""
    url = config.get("url")
    if not isinstance(url, str) or not url:
        raise InvalidInput("the tang pin needs a \"url\"")
    split_url(url)
    thp = config.get("thp")
    if thp is not None and not isinstance(thp, str):
        raise InvalidInput("tang \"thp\" must be a string")
    adv = config.get("adv")
    if isinstance(adv, dict):
        keys = verify_advertisement(adv) if thp is None else trusted_keys(url, adv, thp)
    else:
        keys = trusted_keys(url, fetch_advertisement(url, timeouts), thp)
    server = exchange_key(keys)
    crv, sx, sy = ec_point(server)
    e, epk = ecmr.ephemeral(crv)
    z = ecmr.mul(ecmr.point(crv, sx, sy), e)
    header: dict[str, Any] = {
        "alg": "ECDH-ES", "enc": "A256GCM", "kid": thumbprint(server),
        "clevis": {"pin": "tang", "tang": {"url": url, "adv": {"keys": keys}}},
        "epk": ec_jwk(crv, *ecmr.xy(epk)),
    }
    shared = ecmr.x_bytes(crv, z)
    cek = concat_kdf(shared, "A256GCM", header)
    wipe(shared)
    try:
        return seal(header, cek, plaintext)
    finally:
        wipe(cek)


def server_of(jwe: CompactJwe) -> tuple[str, str, dict[str, Any]]:
    """(url, kid, the server's exchange key) of a tang JWE, checked as clevis-decrypt-tang checks it."""
    header = jwe.header
    tang = header.get("clevis", {}).get("tang", {}) if isinstance(header.get("clevis"), dict) else {}
    url, kid, adv = tang.get("url"), header.get("kid"), tang.get("adv")
    if header.get("alg") != "ECDH-ES" or not isinstance(url, str) or not isinstance(kid, str):
        raise JoseError("not a tang JWE (alg ECDH-ES, kid and clevis.tang.url needed)")
    keys = adv.get("keys") if isinstance(adv, dict) else None
    if not isinstance(keys, list):
        raise JoseError("the tang JWE carries no advertisement")
    for key in keys:
        if isinstance(key, dict) and kid in thumbprints(key):
            return url, kid, key
    raise JoseError("the tang JWE's kid names no key of its advertisement")


def decrypt(jwe: CompactJwe, deadline: float, timeouts: Timeouts) -> bytearray:
    """The plaintext. Raises ServerFailed (the server's part), WrongSecret (the tag fails: tampered),
    JoseError (not shaped like a tang JWE)."""
    url, kid, server = server_of(jwe)
    header = jwe.header
    crv, sx, sy = ec_point(server)
    ecrv, ex, ey = ec_point(header.get("epk", {}))
    if ecrv != crv:
        raise JoseError("the JWE's epk is not on the server key's curve")
    x, big_x = ecmr.ephemeral(crv)
    blinded = ecmr.add(ecmr.point(crv, ex, ey), big_x)
    body = json.dumps({**ec_jwk(crv, *ecmr.xy(blinded)), "alg": "ECMR"}).encode()
    answer = request(url, "POST", f"/rec/{kid}", body, deadline, timeouts)
    try:
        reply = json_of(answer)
        rcrv, rx, ry = ec_point(reply if isinstance(reply, dict) else {})
        if rcrv != crv:
            raise JoseError("the reply is on another curve")
        z = ecmr.sub(ecmr.point(crv, rx, ry), ecmr.mul(ecmr.point(crv, sx, sy), x))
    except JoseError as e:
        raise ServerFailed(url, "bad reply", str(e)) from None
    # Z and the CEK each open the JWE: wiped as soon as used. (The EC arithmetic's Python integers cannot
    # be wiped; they are not stored as these byte strings.)
    shared = ecmr.x_bytes(crv, z)
    cek = concat_kdf(shared, "A256GCM", header)
    wipe(shared)
    try:
        return open_(jwe, cek)
    finally:
        wipe(cek)


def rebind_config(jwe: CompactJwe, timeouts: Timeouts) -> dict[str, Any]:
    """A tang configuration for the server's current keys, trusted because a signing key of the JWE's own
    (old) advertisement signed the new one: GET /adv/<old signing thp> has tangd sign with that key too,
    hidden after a rotation or not. This is how a slot follows `tangd-rotate-keys` without a person."""
    url, _, _ = server_of(jwe)
    old = [k for k in jwe.header["clevis"]["tang"]["adv"]["keys"] if "verify" in k.get("key_ops", [])]
    if not old:
        raise JoseError("the JWE's advertisement has no signing key")
    adv = json_of(request(url, "GET", f"/adv/{thumbprint(old[0])}", None, time.monotonic() + timeouts.total,
                          timeouts))
    if not isinstance(adv, dict):
        raise ServerFailed(url, "bad reply", "the advertisement is not a JSON object")
    try:
        verify_advertisement(adv)
    except JoseError as e:
        raise UntrustedAdvertisement(f"{url}: {e}") from None
    if not any(signed_by(old[0], adv, sig) for sig in adv.get("signatures", [adv])):
        raise UntrustedAdvertisement(f"{url}: the new advertisement is not signed by the key this slot trusted")
    return {"url": url, "adv": adv}


def is_current(jwe: CompactJwe, timeouts: Timeouts) -> bool:
    """Whether the server still advertises the key this JWE was made for (False after a rotation)."""
    url, kid, _ = server_of(jwe)
    keys = advertisement_keys(fetch_advertisement(url, timeouts))
    return any(kid in thumbprints(k) for k in keys)
