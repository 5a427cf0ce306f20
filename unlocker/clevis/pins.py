"""`clevis encrypt PIN CONFIG` and `clevis decrypt` for the pins unlocker speaks natively (tang, and sss
over them, nested as deep as clevis allows), and what a JWE says about its servers.
"""

from __future__ import annotations

import json
import time
from typing import Any

from unlocker.clevis import sss, tang
from unlocker.clevis.http import ServerFailed, Timeouts
from unlocker.clevis.jose import CompactJwe, JoseError, parse_compact, unb64url
from unlocker.errors import InvalidInput, NetworkUnlockFailed

PINS = ("tang", "sss")
DEFAULT_TIMEOUTS = Timeouts()


def parse_config(text: str) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except ValueError as e:
        raise InvalidInput(f"the pin configuration is not JSON: {e}") from None
    if not isinstance(config, dict):
        raise InvalidInput("the pin configuration must be a JSON object")
    return config


def encrypt(pin: str, config: dict[str, Any], plaintext: bytes | bytearray,
            timeouts: Timeouts = DEFAULT_TIMEOUTS) -> str:
    """A compact JWE that `clevis decrypt` opens. Raises InvalidInput (bad pin or config, an untrusted
    advertisement) or NetworkUnlockFailed (a server did not give its advertisement)."""
    if pin == "tang":
        try:
            return tang.encrypt(config, plaintext, timeouts)
        except ServerFailed as e:
            raise NetworkUnlockFailed("cannot fetch the advertisement", [str(e)]) from None
    if pin == "sss":
        return sss.encrypt(config, plaintext, lambda name, child, point: encrypt(name, child, point, timeouts))
    raise InvalidInput(f"unknown pin {pin!r}: unlocker speaks {', '.join(PINS)}")


def _pin(jwe: CompactJwe) -> str:
    clevis = jwe.header.get("clevis")
    pin = clevis.get("pin") if isinstance(clevis, dict) else None
    if pin not in PINS:
        raise JoseError(f"not a clevis JWE of a pin unlocker speaks ({', '.join(PINS)})")
    return str(pin)


def _decrypt(text: str, deadline: float, timeouts: Timeouts) -> bytearray:
    jwe = parse_compact(text)
    if _pin(jwe) == "tang":
        return tang.decrypt(jwe, deadline, timeouts)
    return sss.decrypt(jwe, deadline, timeouts, _decrypt)


def decrypt(text: str, timeouts: Timeouts = DEFAULT_TIMEOUTS) -> bytearray:
    """The plaintext of a clevis JWE, within `timeouts.total`. Raises NetworkUnlockFailed naming each
    server that failed and why, WrongSecret when a tag fails (a tampered JWE), JoseError when it is not
    a JWE unlocker speaks."""
    try:
        return _decrypt(text, time.monotonic() + timeouts.total, timeouts)
    except ServerFailed as e:
        raise NetworkUnlockFailed("the tang server did not answer", [str(e)]) from None


def describe(text: str) -> dict[str, Any]:
    """What `unlocker slots` shows: the pin, its threshold and its servers (url and key id)."""
    jwe = parse_compact(text)
    if _pin(jwe) == "tang":
        url, kid, _ = tang.server_of(jwe)
        return {"pin": "tang", "servers": [{"url": url, "kid": kid}]}
    t, _, children = sss.parameters(jwe)
    described = [describe(c) for c in children]
    return {"pin": "sss", "t": t, "pins": described,
            "servers": [s for d in described for s in d["servers"]]}


def report(text: str, timeouts: Timeouts = DEFAULT_TIMEOUTS) -> list[dict[str, str]]:
    """For each server: whether it still advertises the key this JWE was made for. A key that is no
    longer advertised was rotated (the server may still answer for it while it keeps the hidden key);
    the slot should be re-bound."""
    rows = []
    for server in describe(text)["servers"]:
        try:
            adv = tang.fetch_advertisement(server["url"], timeouts)
            keys = json.loads(_payload(adv)).get("keys", [])
            advertised = any(server["kid"] in tang.thumbprints(k) for k in keys if isinstance(k, dict))
            state = "current" if advertised else "rotated"
        except (ServerFailed, JoseError, ValueError, AttributeError) as e:
            state = f"unknown ({e})"
        rows.append({**server, "state": state})
    return rows


def _payload(adv: dict[str, Any]) -> bytes:
    return unb64url(str(adv.get("payload", "")))
