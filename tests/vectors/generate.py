"""Regenerate tests/vectors/keystore-v1.json (and the copy in docs/FORMAT.md by hand).

Runs the real code with os.urandom and time.time replaced by deterministic stand-ins, so the vector is
reproducible; the tests then check the vector against an independent re-implementation of the spec.
    .venv/bin/python tests/vectors/generate.py
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

_counter = 0


def _det_urandom(n: int) -> bytes:
    global _counter
    _counter += 1
    return hashlib.shake_256(b"unlocker test vector %d" % _counter).digest(n)


os.urandom = _det_urandom  # type: ignore[assignment]
time.time = lambda: 1764374400.0  # 2025-11-29T00:00:00Z

from unlocker.keystore import changes, kdf  # noqa: E402
from unlocker.keystore.fileformat import b64decode, parse_argon2  # noqa: E402
from unlocker.keystore.slots import EnrollOptions, Secrets, recovery  # noqa: E402
from unlocker.keystore.unlock import DEK_WRAP_LABEL, MAC_LABEL  # noqa: E402

PASSPHRASE = b"correct horse battery staple"
options = EnrollOptions(argon2=kdf.Argon2Params(8192, 2, 4))
opened = changes.create("passphrase", Secrets(bytearray(PASSPHRASE)), options)
rkey = recovery.format_key(recovery.generate())
keystore = changes.add_slot(opened, "recovery", Secrets(bytearray(rkey)), options)

slot0 = keystore.slot(0)
argon = kdf.argon2id(PASSPHRASE, b64decode(slot0.param("salt")), parse_argon2(slot0.param("argon2id")), 32)
vector = {
    "description": "passphrase slot 0 and recovery slot 1 over DEK version 1 (see docs/FORMAT.md)",
    "passphrase": PASSPHRASE.decode(),
    "recovery_key": rkey.decode(),
    "keystore": keystore.serialize().decode(),
    "store_key": opened.store_key.hex(),
    "dek": {"1": opened.dek(1).hex()},
    "slot0_argon2id": argon.hex(),
    "slot0_key": kdf.hkdf(argon, keystore.id, b"unlocker/v1 slot passphrase").hex(),
    "mac_key": kdf.hkdf(opened.store_key, keystore.id, MAC_LABEL).hex(),
    "dek_wrap_key": kdf.hkdf(opened.store_key, keystore.id, DEK_WRAP_LABEL).hex(),
}
out = Path(__file__).with_name("keystore-v1.json")
out.write_text(json.dumps(vector, indent=2) + "\n")
print(f"wrote {out}")
