"""Regenerate tests/vectors/clevis-v1.json (and the copy in docs/FORMAT.md by hand).

A keystore with a passphrase slot 0 and a clevis (tang) slot 1, bound to the test-only Tang keys in
tests/vectors/tang/ (made by tangd-keygen; their private halves are public test material). The
advertisement comes from running tangd on those keys over a pipe, so no server or network is needed.
os.urandom and time.time are deterministic as in generate.py; the JWE's ephemeral EC key comes from
pycryptodome's own generator, so a regenerated vector differs in `epk`, the CEK and the ciphertext.
    .venv/bin/python tests/vectors/generate_clevis.py
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

_counter = 0


def _det_urandom(n: int) -> bytes:
    global _counter
    _counter += 1
    return hashlib.shake_256(b"unlocker clevis test vector %d" % _counter).digest(n)


os.urandom = _det_urandom  # type: ignore[assignment]
time.time = lambda: 1764374400.0  # 2025-11-29T00:00:00Z

from unlocker.clevis import pins  # noqa: E402
from unlocker.keystore import changes, kdf  # noqa: E402
from unlocker.keystore.slots import EnrollOptions, Secrets  # noqa: E402

HERE = Path(__file__).parent
KEYS = HERE / "tang"
URL = "http://tang.example"
PASSPHRASE = b"correct horse battery staple"

reply = subprocess.run(["/usr/libexec/tangd", str(KEYS)], input=b"GET /adv HTTP/1.1\r\nHost: x\r\n\r\n",
                       capture_output=True, check=True).stdout
adv = json.loads(reply.split(b"\r\n\r\n", 1)[1])
signing = next(p.stem for p in KEYS.glob("*.jwk") if "verify" in json.loads(p.read_text())["key_ops"])
exchange = next(p.stem for p in KEYS.glob("*.jwk") if "deriveKey" in json.loads(p.read_text())["key_ops"])

options = EnrollOptions(argon2=kdf.Argon2Params(8192, 2, 4),
                        extra={"pin": "tang", "config": json.dumps({"url": URL, "adv": adv, "thp": signing})})
opened = changes.create("passphrase", Secrets(bytearray(PASSPHRASE)), options)
_before = _counter
keystore = changes.add_slot(opened, "clevis", Secrets(None, None, pins.DEFAULT_TIMEOUTS), options)
secret = hashlib.shake_256(b"unlocker clevis test vector %d" % (_before + 1)).digest(32)  # S, the first draw

vector = {
    "description": "passphrase slot 0 and clevis (tang) slot 1 over DEK version 1 (see docs/FORMAT.md)",
    "passphrase": PASSPHRASE.decode(),
    "tang_url": URL,
    "tang_signing_thp": signing,
    "tang_exchange_key": f"tang/{exchange}.jwk",
    "keystore": keystore.serialize().decode(),
    "slot1_secret": secret.hex(),
    "slot1_key": kdf.hkdf(secret, keystore.id, b"unlocker/v1 slot clevis").hex(),
    "store_key": opened.store_key.hex(),
}
out = HERE / "clevis-v1.json"
out.write_text(json.dumps(vector, indent=2) + "\n")
print(f"wrote {out}")
