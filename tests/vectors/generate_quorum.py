"""Regenerate tests/vectors/quorum-v1.json (and the copy in docs/FORMAT.md by hand).

A keystore with a passphrase slot 0 and a 3-of-5 quorum slot 1. Shamir's coefficients and x coordinates
come from `secrets` (not os.urandom), so a regenerated vector differs in the shares and the verifiers.
    .venv/bin/python tests/vectors/generate_quorum.py
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
    return hashlib.shake_256(b"unlocker quorum test vector %d" % _counter).digest(n)


os.urandom = _det_urandom  # type: ignore[assignment]
time.time = lambda: 1764374400.0  # 2025-11-29T00:00:00Z

from unlocker.keystore import changes, kdf  # noqa: E402
from unlocker.keystore.slots import EnrollOptions, Secrets  # noqa: E402
from unlocker.keystore.slots.quorum import Collector, new_shares  # noqa: E402

PASSPHRASE = b"correct horse battery staple"
options = EnrollOptions(argon2=kdf.Argon2Params(8192, 2, 4))
opened = changes.create("passphrase", Secrets(bytearray(PASSPHRASE)), options)
shares = new_shares(5, 3)
keystore = changes.add_slot(opened, "quorum", Secrets(shares=[bytearray(s) for s in shares]),
                            EnrollOptions(extra={"threshold": "3"}))
collector = Collector(keystore.id, keystore.slot(1))
for s in shares[:3]:
    collector.add(s)
secret = collector.secret()
vector = {
    "description": "passphrase slot 0 and a 3-of-5 quorum slot 1 over DEK version 1 (see docs/FORMAT.md)",
    "passphrase": PASSPHRASE.decode(),
    "shares": [s.decode() for s in shares],
    "keystore": keystore.serialize().decode(),
    "quorum_secret": secret.hex(),
    "slot1_key": kdf.hkdf(secret, keystore.id, b"unlocker/v1 slot quorum").hex(),
    "store_key": opened.store_key.hex(),
}
out = Path(__file__).with_name("quorum-v1.json")
out.write_text(json.dumps(vector, indent=2) + "\n")
print(f"wrote {out}")
