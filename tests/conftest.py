"""Shared fixtures. The swtpm fixtures live in swtpm_fixture.py, the Tang ones in tang_fixture.py;
the container ones in system/."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from swtpm_fixture import fresh_swtpm, swtpm  # noqa: F401  (fixtures)
from tang_fixture import silent_server, tang_servers  # noqa: F401  (fixtures)

from unlocker.keystore import changes, storage
from unlocker.keystore.kdf import Argon2Params
from unlocker.keystore.slots import EnrollOptions, Secrets
from unlocker.service.sealed import app_specific_machine_id

ROOT = Path(__file__).resolve().parent.parent
UNLOCKER = [sys.executable, "-m", "unlocker"]

# Argon2id at its floor: the tests exercise the format and the logic, not the cost.
FAST = EnrollOptions(argon2=Argon2Params(8192, 1))


# A machine id and the host secret systemd would make for it (unlocker/service/sealed.py).
MACHINE_ID = bytes.fromhex("16982e9391134214bad36f30a6301f0d")


def host_secret(directory: Path, machine_id: bytes = MACHINE_ID, mode: int = 0o400) -> tuple[Path, Path]:
    """A host secret as `systemd-creds setup` writes it, and the machine id file it belongs to."""
    (directory / "machine-id").write_text(machine_id.hex() + "\n")
    secret = directory / "credential.secret"
    secret.write_bytes(app_specific_machine_id(machine_id) + os.urandom(4096))
    secret.chmod(mode)
    return secret, directory / "machine-id"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str | Path, input: bytes | None = None, keystore: Path | None = None) -> Result:
    """Run the real `unlocker` command in a child process."""
    argv = [*UNLOCKER]
    if keystore is not None:
        argv += ["--keystore", str(keystore)]
    argv += [str(a) for a in args]
    p = subprocess.run(argv, input=input, capture_output=True, timeout=120, cwd=ROOT,
                       stdin=None if input is not None else subprocess.DEVNULL)
    return Result(p.returncode, p.stdout.decode(), p.stderr.decode())


def write_secret(path: Path, secret: bytes) -> Path:
    path.write_bytes(secret)
    return path


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def two_slot_keystore(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    """A keystore with passphrase slots 0 and 1, written by the library (fast KDF)."""
    path = tmp_path / "keystore"
    first, second = b"first passphrase", b"second passphrase"
    opened = changes.create("passphrase", Secrets(bytearray(first)), FAST)
    keystore = changes.add_slot(opened, "passphrase", Secrets(bytearray(second)), FAST)
    storage.write(path, keystore, expected_generation=None)
    opened.close()
    return path, first, second


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
