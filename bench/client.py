"""Field encryption throughput of unlocker.client beside raw cryptography AESGCM and Google Tink's AEAD,
in one run, for 100-byte fields (AES-256-GCM everywhere, a fresh random nonce per value).

    .venv/bin/python bench/client.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import tink
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tink import aead

from unlocker.client import Keyring, field_aad
from unlocker.client.formats import Format, KeyVersion, render

N = 50_000
FIELD = os.urandom(100)
AAD = field_aad("notes", "body", 12345)


def rate(fn) -> float:
    fn()  # warm up
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(N):
            fn()
        best = max(best, N / (time.perf_counter() - start))
    return best


def main() -> None:
    key = os.urandom(32)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "dek").write_bytes(bytes(render(Format.json, [KeyVersion(1, "primary", bytearray(key))])))
        ring = Keyring.load(directory=d)
    raw = AESGCM(key)
    aead.register()
    tink_aead = tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM).primitive(aead.Aead)

    token, text = ring.encrypt_bytes(FIELD, AAD), ring.encrypt(FIELD, AAD)
    nonce = os.urandom(12)
    raw_ct = raw.encrypt(nonce, FIELD, AAD)
    tink_ct = tink_aead.encrypt(FIELD, AAD)
    rows = [
        ("raw cryptography AESGCM (baseline)",
         lambda: raw.encrypt(os.urandom(12), FIELD, AAD), lambda: raw.decrypt(nonce, raw_ct, AAD)),
        ("unlocker.client, binary token",
         lambda: ring.encrypt_bytes(FIELD, AAD), lambda: ring.decrypt_bytes(token, AAD)),
        ("unlocker.client, text token (uk1:...)",
         lambda: ring.encrypt(FIELD, AAD), lambda: ring.decrypt(text, AAD)),
        ("Google Tink AEAD (AES256_GCM)",
         lambda: tink_aead.encrypt(FIELD, AAD), lambda: tink_aead.decrypt(tink_ct, AAD)),
    ]
    print(f"100-byte fields, best of 3 x {N} operations, one core")
    print(f"{'implementation':<40} {'encrypt/s':>11} {'decrypt/s':>11} {'enc vs raw':>11} {'dec vs raw':>11}")
    base = None
    for name, enc, dec in rows:
        e, d_ = rate(enc), rate(dec)
        base = base or (e, d_)
        print(f"{name:<40} {e:>11,.0f} {d_:>11,.0f} {base[0] / e:>10.2f}x {base[1] / d_:>10.2f}x")


if __name__ == "__main__":
    main()
