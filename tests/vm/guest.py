"""What a test guest (or the VM demo) boots with: a keystore made on the host by the project's own CLI, a
unit granted the key (grant list and drop-in written by unlocker's own code) and the repository's unit file,
all carried by the boot's payload disk (machine.Payload)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from unlocker.client.formats import Format
from unlocker.service import grants

from .machine import ROOT, Payload

PASSPHRASE = "vm-boot-passphrase"  # a test passphrase, typed on the serial console

GRANTED_UNIT = """[Unit]
Description=A consumer granted the key
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'stat -c %%s "$CREDENTIALS_DIRECTORY/dek" > /var/lib/granted.size'
[Install]
WantedBy=multi-user.target
"""


def keystore_payload(dir: Path, check: str, conf: str | None = None, granted_unit: str = GRANTED_UNIT,
                     passphrase: str = PASSPHRASE) -> Payload:
    """A payload with a keystore made on the host by the project's own CLI, granted.service granted the key
    (grant list and drop-in made by unlocker's own code), and the repository's unit file."""
    dir.mkdir(parents=True, exist_ok=True)
    keystore = dir / "keystore"
    p = subprocess.run([sys.executable, "-m", "unlocker", "--keystore", str(keystore), "init", "--no-tpm2",
                        "--kdf-time", "100", "--kdf-memory", "65536", "--passphrase-file", "-"],
                       input=passphrase.encode() + b"\n", capture_output=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    payload = Payload(dir / "payload", check=check)
    payload.write("/var/lib/unlocker/keystore", keystore.read_bytes(), mode=0o600)
    grant = grants.Grant("granted.service", "dek", Format.raw)
    grants.save({(grant.unit, grant.credential): grant}, dir / "grants")
    payload.write("/etc/unlocker/grants", (dir / "grants").read_text())
    payload.write(str(grants.dropin_path(grant)), grants.dropin(grant))
    payload.write("/etc/systemd/system/granted.service", granted_unit)
    payload.write("/etc/systemd/system/unlocker.service", (ROOT / "units/unlocker.service").read_text())
    if conf is not None:
        payload.write("/etc/unlocker/unlocker.conf", conf)
    payload.enable("unlocker.service")
    payload.enable("granted.service")
    return payload
