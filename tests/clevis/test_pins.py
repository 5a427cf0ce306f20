"""The tang and sss pins against real Tang servers, with Debian's clevis 19 as the interop oracle in both
directions, and every failure the issue names: stopped, silent, too few, rotated, deleted keys, a
tampered header, an advertisement that does not verify."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from unlocker.clevis import pins, tang
from unlocker.clevis.http import Timeouts
from unlocker.clevis.jose import b64url, b64url_json, json_of, parse_compact, unb64url
from unlocker.errors import NetworkUnlockFailed, WrongSecret

SECRET = bytes(range(32))


def clevis_encrypt(pin: str, config: dict, data: bytes) -> str:
    p = subprocess.run(["clevis", "encrypt", pin, json.dumps(config)], input=data, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.decode()


def clevis_decrypt(jwe: str) -> bytes:
    p = subprocess.run(["clevis", "decrypt"], input=jwe.encode(), capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def sss_config(servers, t=2) -> dict:
    return {"t": t, "pins": {"tang": [s.config() for s in servers]}}


def test_clevis_decrypt_opens_our_tang_jwe(tang_servers):
    jwe = pins.encrypt("tang", tang_servers[0].config(), SECRET)
    assert clevis_decrypt(jwe) == SECRET


def test_we_open_a_tang_jwe_clevis_made(tang_servers):
    jwe = clevis_encrypt("tang", tang_servers[0].config(), SECRET)
    assert pins.decrypt(jwe) == SECRET


def test_sss_2_of_3_both_ways(tang_servers):
    ours = pins.encrypt("sss", sss_config(tang_servers), SECRET)
    assert clevis_decrypt(ours) == SECRET
    theirs = clevis_encrypt("sss", sss_config(tang_servers), SECRET)
    assert pins.decrypt(theirs) == SECRET
    header = parse_compact(ours).header
    assert header["alg"] == "dir" and header["clevis"]["sss"]["t"] == 2 and len(header["clevis"]["sss"]["jwe"]) == 3


def test_nested_sss_as_clevis_makes_it(tang_servers):
    # "this server AND any one of the other two": sss(t=2) of [tang0, sss(t=1) of [tang1, tang2]]
    config = {"t": 2, "pins": {"tang": [tang_servers[0].config()],
                                "sss": [{"t": 1, "pins": {"tang": [s.config() for s in tang_servers[1:]]}}]}}
    theirs, ours = clevis_encrypt("sss", config, SECRET), pins.encrypt("sss", config, SECRET)
    tang_servers[1].stop()
    assert pins.decrypt(theirs) == SECRET
    assert clevis_decrypt(ours) == SECRET


def test_a_stopped_server_is_named_as_refused_and_the_others_suffice(tang_servers):
    jwe = pins.encrypt("sss", sss_config(tang_servers), SECRET)
    single = pins.encrypt("tang", tang_servers[0].config(), SECRET)
    tang_servers[0].stop()
    assert pins.decrypt(jwe) == SECRET
    with pytest.raises(NetworkUnlockFailed) as e:
        pins.decrypt(single)
    assert e.value.failures == [f"{tang_servers[0].url}: refused"]


def test_a_silent_server_does_not_delay_the_threshold(tang_servers, silent_server):
    config = {"t": 2, "pins": {"tang": [tang_servers[0].config(), tang_servers[1].config(),
                                        {"url": silent_server, "adv": tang.fetch_advertisement(
                                            tang_servers[2].url, Timeouts())}]}}
    jwe = pins.encrypt("sss", config, SECRET)
    start = time.monotonic()
    assert pins.decrypt(jwe, Timeouts(connect=1, total=5)) == SECRET
    assert time.monotonic() - start < 1.0  # the two answering servers, not the silent one


def test_a_silent_server_alone_fails_within_the_total_timeout(tang_servers, silent_server):
    adv = tang.fetch_advertisement(tang_servers[0].url, Timeouts())
    jwe = pins.encrypt("tang", {"url": silent_server, "adv": adv, "thp": tang_servers[0].signing_thp()}, SECRET)
    start = time.monotonic()
    with pytest.raises(NetworkUnlockFailed) as e:
        pins.decrypt(jwe, Timeouts(connect=1, total=1.5))
    assert 1.4 < time.monotonic() - start < 2.5
    assert e.value.failures == [f"{silent_server}: timed out (no answer)"]


def test_too_few_servers_is_a_clear_error_within_the_timeout(tang_servers, silent_server):
    jwe = pins.encrypt("sss", sss_config(tang_servers), SECRET)
    tang_servers[0].stop()
    tang_servers[1].stop()
    start = time.monotonic()
    with pytest.raises(NetworkUnlockFailed) as e:
        pins.decrypt(jwe, Timeouts(connect=1, total=3))
    assert time.monotonic() - start < 1.0  # two refusals leave too few: no need to wait for anything
    assert "sss needs 2 of 3 pins, 1 answered" in str(e.value) or "0 answered" in str(e.value)
    assert sorted(e.value.failures) == sorted(f"{s.url}: refused" for s in tang_servers[:2])


def test_rotated_keys_still_open_and_the_report_flags_them(tang_servers):
    jwe = pins.encrypt("sss", sss_config(tang_servers), SECRET)
    assert {r["state"] for r in pins.report(jwe)} == {"current"}
    tang_servers[0].rotate()
    assert pins.decrypt(jwe) == SECRET
    states = {r["url"]: r["state"] for r in pins.report(jwe)}
    assert states == {tang_servers[0].url: "rotated", tang_servers[1].url: "current", tang_servers[2].url: "current"}


def test_deleted_keys_are_named_as_unknown_key(tang_servers):
    jwe = pins.encrypt("tang", tang_servers[0].config(), SECRET)
    tang_servers[0].rotate()
    tang_servers[0].delete_hidden_keys()
    with pytest.raises(NetworkUnlockFailed) as e:
        pins.decrypt(jwe)
    assert e.value.failures == [f"{tang_servers[0].url}: unknown key "
                                "(404: the server no longer has the key this JWE was made for)"]


@pytest.mark.parametrize("pin", ["tang", "sss"])
def test_a_tampered_header_fails_authentication(tang_servers, pin):
    config = tang_servers[0].config() if pin == "tang" else sss_config(tang_servers)
    jwe = parse_compact(pins.encrypt(pin, config, SECRET))
    header = jwe.header
    header["clevis"]["note"] = "tampered"  # routing is unchanged: only the tag can notice
    tampered = ".".join((b64url_json(header), jwe.encrypted_key, jwe.iv, jwe.ciphertext, jwe.tag))
    with pytest.raises(WrongSecret):
        pins.decrypt(tampered)


def test_an_advertisement_with_a_bad_signature_is_refused_at_enrollment(tang_servers):
    adv = tang.fetch_advertisement(tang_servers[0].url, Timeouts())
    signature = bytearray(unb64url(adv["signature"] if "signature" in adv else adv["signatures"][0]["signature"]))
    signature[10] ^= 1
    if "signature" in adv:
        adv["signature"] = b64url(bytes(signature))
    else:
        adv["signatures"][0]["signature"] = b64url(bytes(signature))
    with pytest.raises(tang.UntrustedAdvertisement, match=r"signature by key .* does not verify"):
        pins.encrypt("tang", {"url": tang_servers[0].url, "adv": adv, "thp": tang_servers[0].signing_thp()}, SECRET)


def test_enrollment_pins_the_thumbprint(tang_servers):
    other = tang_servers[1].signing_thp()
    with pytest.raises(tang.UntrustedAdvertisement, match=f"not signed by the pinned key {other}"):
        pins.encrypt("tang", {"url": tang_servers[0].url, "thp": other}, SECRET)
    with pytest.raises(tang.UntrustedAdvertisement, match=tang_servers[0].signing_thp()):
        pins.encrypt("tang", {"url": tang_servers[0].url}, SECRET)


def test_describe_names_the_pin_and_servers(tang_servers):
    jwe = pins.encrypt("sss", sss_config(tang_servers), SECRET)
    described = pins.describe(jwe)
    assert described["pin"] == "sss" and described["t"] == 2
    assert [s["url"] for s in described["servers"]] == [s.url for s in tang_servers]
    assert all(json_of(unb64url(parse_compact(jwe).protected)))


def _failures_through(handler, tang_servers) -> tuple[str, list[str]]:
    """Decrypts a tang JWE whose URL is a small real HTTP server with `handler` (a fault tangd cannot
    produce); returns that URL and the failures named."""
    import http.server
    import threading

    httpd = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}"
        adv = tang.fetch_advertisement(tang_servers[0].url, Timeouts())
        jwe = pins.encrypt("tang", {"url": url, "adv": adv, "thp": tang_servers[0].signing_thp()}, SECRET)
        with pytest.raises(NetworkUnlockFailed) as e:
            pins.decrypt(jwe)
        return url, e.value.failures
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_server_that_is_not_tang_is_named_as_a_bad_reply(tang_servers):
    """A real HTTP server that is not Tang (the stdlib's, which answers POST with 501) at a tang URL."""
    import http.server

    url, failures = _failures_through(http.server.SimpleHTTPRequestHandler, tang_servers)
    assert failures == [f"{url}: bad reply (HTTP 501)"]


def test_a_reply_point_off_the_curve_is_refused_as_a_bad_reply(tang_servers):
    """A server answering /rec with a point that is not on the curve (what a malicious server would try:
    an invalid-curve reply). Real tangd cannot be made to do this, so a small real HTTP server does."""
    import http.server

    from unlocker.clevis.jose import ec_jwk

    class OffCurve(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps(ec_jwk("P-521", 1, 2)).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    url, failures = _failures_through(OffCurve, tang_servers)
    assert failures == [f"{url}: bad reply (a point that is not on its curve)"]
