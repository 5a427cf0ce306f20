"""Reading the initrd's cached passphrase from the kernel keyring: the last entry, read only.

Each case runs in a child process that joins a new anonymous session keyring, so the keys the test adds
(as systemd-cryptsetup would) are seen by nothing else and vanish with it. The real initrd-to-service
path is proved in the VM boot tests (tests/vm/).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

CHILD = textwrap.dedent("""
    import ctypes, json, sys, time
    from unlocker.service import cached_passphrase as c
    libc = ctypes.CDLL(None, use_errno=True)
    ADD_KEY, KEYCTL = c._syscall_numbers()[0] - 1, c._syscall_numbers()[1]
    SESSION = -3  # KEY_SPEC_SESSION_KEYRING
    assert libc.syscall(KEYCTL, 1, None) > 0, "KEYCTL_JOIN_SESSION_KEYRING failed"
    payload, timeout = json.loads(sys.argv[1]).encode("latin-1"), float(sys.argv[2])
    if payload:
        serial = libc.syscall(ADD_KEY, b"user", b"cryptsetup", payload, len(payload), SESSION)
        assert serial > 0, "add_key failed"
        if timeout:
            libc.syscall(KEYCTL, 15, ctypes.c_long(serial), ctypes.c_uint(int(timeout)))  # KEYCTL_SET_TIMEOUT
            time.sleep(timeout + 0.2)
    def keyring():  # the serials linked in our session keyring
        buf = ctypes.create_string_buffer(4096)
        n = libc.syscall(KEYCTL, 11, ctypes.c_long(SESSION), buf, 4096)
        return sorted(buf.raw[:max(n, 0)])
    before = keyring()
    got = c.read_cached("cryptsetup")
    after_payload = None
    if payload and not timeout:
        serial = libc.syscall(249, b"user", b"cryptsetup", None, 0)
        buf = ctypes.create_string_buffer(4096)
        n = libc.syscall(KEYCTL, 11, ctypes.c_long(serial), buf, 4096)
        after_payload = buf.raw[:n].decode("latin-1")
    print(json.dumps({"got": None if got is None else got.decode("latin-1"),
                      "keyring_unchanged": before == keyring(), "payload_after": after_payload}))
""")


def _read(payload: bytes, timeout: float = 0) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(payload.decode("latin-1")), str(timeout)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.parametrize(("payload", "expected"), [
    (b"right", "right"),
    (b"typo\0right", "right"),            # systemd-cryptsetup appends: the last entry opened the disk
    (b"first\0typo\0right", "right"),
    (b"typo\0right\0", "right"),          # a trailing separator is not an empty passphrase
    (b"", None),                          # nothing cached
])
def test_the_last_cached_entry_is_read(payload, expected):
    result = _read(payload)
    assert result["got"] == expected


def test_reading_writes_nothing():
    result = _read(b"typo\0right")
    assert result["keyring_unchanged"]
    assert result["payload_after"] == "typo\0right"  # the initrd's key is left exactly as it was


def test_an_expired_cache_is_no_cache():
    assert _read(b"right", timeout=1)["got"] is None
