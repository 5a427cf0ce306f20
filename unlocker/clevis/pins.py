"""`clevis encrypt PIN CONFIG` and `clevis decrypt` for the pins unlocker speaks natively (tang, and sss
over them, nested as deep as clevis allows), and what a JWE says about its servers.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from unlocker.clevis import sss, tang
from unlocker.clevis.http import ServerFailed, Timeouts
from unlocker.clevis.jose import CompactJwe, JoseError, parse_compact
from unlocker.errors import InvalidInput, NetworkUnlockFailed, UnlockerError

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
    advertisement) or UnlockerError (a server did not give its advertisement)."""
    if pin == "tang":
        try:
            return tang.encrypt(config, plaintext, timeouts)
        except ServerFailed as e:
            # Exit 1, not 2: nothing failed to unlock, the enrollment could not be done.
            raise UnlockerError(f"cannot fetch the advertisement: {e}") from None
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
    # In a worker, so that even what the socket timeouts do not bound (a name lookup that hangs in
    # getaddrinfo) cannot hold the caller past the deadline; a stuck worker ends with its lookup.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clevis")
    try:
        return pool.submit(_decrypt, text, time.monotonic() + timeouts.total, timeouts).result(timeouts.total + 1.0)
    except ServerFailed as e:
        raise NetworkUnlockFailed("the tang server did not answer", [str(e)]) from None
    except FutureTimeout:
        raise NetworkUnlockFailed(f"no answer within {timeouts.total:g} s",
                                  ["a name lookup or a server hung"]) from None
    finally:
        pool.shutdown(wait=False)


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
    """For each tang server of a JWE: "current" while it still advertises the key the JWE was made for,
    "rotated" once it does not (it may still answer from the hidden key until that is deleted: re-bind
    before), or why it could not be asked."""
    rows = []
    for child in _tang_jwes(parse_compact(text)):
        url, kid, _ = tang.server_of(child)
        try:
            state = "current" if tang.is_current(child, timeouts) else "rotated"
        except (ServerFailed, JoseError) as e:
            state = f"unknown ({e})"
        rows.append({"url": url, "kid": kid, "state": state})
    return rows


def rebind_config(text: str, timeouts: Timeouts = DEFAULT_TIMEOUTS) -> tuple[str, dict[str, Any]]:
    """(pin, config) that binds the same servers and threshold to their current keys, each server's new
    advertisement trusted through its old signing key. Raises UntrustedAdvertisement, NetworkUnlockFailed."""
    jwe = parse_compact(text)
    try:
        if _pin(jwe) == "tang":
            return "tang", tang.rebind_config(jwe, timeouts)
    except ServerFailed as e:
        raise NetworkUnlockFailed("cannot fetch the new advertisement", [str(e)]) from None
    t, _, children = sss.parameters(jwe)
    grouped: dict[str, list[dict[str, Any]]] = {}
    for child in children:
        pin, config = rebind_config(child, timeouts)
        grouped.setdefault(pin, []).append(config)
    return "sss", {"t": t, "pins": grouped}


def _tang_jwes(jwe: CompactJwe) -> list[CompactJwe]:
    if _pin(jwe) == "tang":
        return [jwe]
    return [t for child in sss.parameters(jwe)[2] for t in _tang_jwes(parse_compact(child))]
