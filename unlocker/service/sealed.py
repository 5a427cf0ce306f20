"""Deliveries sealed for systemd: its encrypted credential format, with this host's credential secret.

Why. On systemd 252 a LoadCredential= socket that closes without data gives the unit an EMPTY credential, and
the unit starts; a reply cut short gives it part of one. Granted units therefore ask with
LoadCredentialEncrypted=, and the broker seals each reply as `systemd-creds encrypt --with-key=host` would.
systemd decrypts it before the unit runs and fails the unit at its CREDENTIALS step (exit status 243) when
the reply is empty ("Encrypted file too short"), cut short, altered, sealed for another credential id, or
not sealed with this host's secret. So a broker killed at any moment, or one that refuses by closing, can
never start a unit without its key, and the unit needs no check of its own (tests/system/test_platform_facts.py).

The seal adds no secrecy: the host secret is root's, on disk, and the reply only crosses a root-only socket.
It is there for its integrity check, and it binds a reply to the credential id it was made for.

The format (systemd's src/shared/creds-util.c, unchanged since 250; docs/CREDENTIALS.md):

    header, the AEAD's associated data:
        id (16 bytes, CRED_AES256_GCM_BY_HOST) | key size | block size | IV size | tag size (le32 each)
        | IV (12) | zeros to a multiple of 8
    AES-256-GCM ciphertext of:
        timestamp (le64, µs) | not-after (le64, ~0: never) | name size (le32) | name | zeros to a multiple of 8
        | the credential
    tag (16)

sent base64-encoded (systemd 252 decodes it before it decrypts). The key is SHA-256 of the host secret:
/var/lib/systemd/credential.secret after its first 16 bytes, which name the machine it belongs to.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import stat
import struct
import time
from pathlib import Path

from unlocker.errors import UnlockerError
from unlocker.memory import wipe

HOST_SECRET = Path("/var/lib/systemd/credential.secret")
MACHINE_ID = Path("/etc/machine-id")
BY_HOST = bytes.fromhex("5a1c6a86df9d4096b1d5a65e0862f19a")  # CRED_AES256_GCM_BY_HOST
# The app id systemd hashes the machine id with to name the machine a host secret belongs to.
CREDENTIAL_APP_ID = bytes.fromhex("d3acecba0dad4cdfb8c9381528936c58")
IV_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = 48  # id, four sizes, the IV, zeros to a multiple of 8
NEVER = 2**64 - 1  # USEC_INFINITY: no not-after time
MAX_SECRET_BYTES = 16 * 1024 * 1024  # what systemd reads at most
SETUP = "systemd-creds setup"  # what makes a host secret (unlocker grant runs it)


class SealError(UnlockerError):
    """No usable host secret: nothing can be sealed, so every request is refused."""


def _pad8(data: bytes) -> bytes:
    return data + bytes(-len(data) % 8)


def app_specific_machine_id(machine_id: bytes) -> bytes:
    """sd_id128_get_machine_app_specific(): HMAC-SHA256 of the app id keyed by the machine id, its first half
    made a version 4 UUID. A host secret starts with it."""
    h = bytearray(hmac.new(machine_id, CREDENTIAL_APP_ID, hashlib.sha256).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x40
    h[8] = (h[8] & 0x3F) | 0x80
    return bytes(h)


def read_machine_id(path: Path = MACHINE_ID) -> bytes:
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as e:
        raise SealError(f"cannot read the machine id {path}: {e}") from None


def check_host_secret(path: Path = HOST_SECRET, machine_id_path: Path = MACHINE_ID) -> None:
    """SealError unless systemd would accept the host secret (for `unlocker grant` and doctor)."""
    wipe(_read_host_secret(path, machine_id_path))


def _read_host_secret(path: Path, machine_id_path: Path) -> bytearray:
    """The host secret file's bytes, or SealError saying why systemd would not use it and what fixes it:
    systemd refuses a secret that is not a regular file of mode 0400, and deletes one that names another
    machine (an image cloned with its secret), so sealing with either would only fail every unit."""
    fix = f"run `{SETUP}` (or `unlocker grant` any unit, which runs it)"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SealError(f"systemd's credential secret {path} does not exist: {fix}") from None
    except OSError as e:
        raise SealError(f"cannot read systemd's credential secret {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o400 or st.st_nlink != 1:
            raise SealError(f"systemd refuses its credential secret {path} (it must be one regular file of mode "
                            f"0400): remove it and {fix}")
        data = bytearray(os.read(fd, min(st.st_size, MAX_SECRET_BYTES) + 1))
    finally:
        os.close(fd)
    try:
        if not 16 < len(data) <= MAX_SECRET_BYTES:
            raise SealError(f"systemd's credential secret {path} has a bad size: remove it and {fix}")
        if not hmac.compare_digest(bytes(data[:16]), app_specific_machine_id(read_machine_id(machine_id_path))):
            raise SealError(f"systemd's credential secret {path} belongs to another machine id (an image cloned "
                            f"with it?); systemd would delete it: remove it and {fix}")
    except BaseException:
        wipe(data)
        raise
    return data


class HostKey:
    """The key systemd derives from the host secret, ready to seal deliveries."""

    def __init__(self, secret: bytes | bytearray | memoryview) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # only to seal: doctor and grant check

        key = hashlib.sha256(secret).digest()
        try:
            self._aead = AESGCM(key)  # which keeps its own copy
        finally:
            wipe(key)

    @classmethod
    def read(cls, path: Path = HOST_SECRET, machine_id_path: Path = MACHINE_ID) -> HostKey:
        """The key, from a host secret systemd itself would accept; SealError says why not and what fixes it."""
        data = _read_host_secret(path, machine_id_path)
        try:
            return cls(memoryview(data)[16:])
        finally:
            wipe(data)

    def seal(self, name: str, credential: bytes | bytearray, now: float | None = None) -> bytes:
        """The base64 text systemd's LoadCredentialEncrypted=NAME:... decrypts to `credential`."""
        iv = os.urandom(IV_BYTES)
        header = _pad8(BY_HOST + struct.pack("<4I", 32, 1, IV_BYTES, TAG_BYTES) + iv)
        encoded = name.encode()
        timestamp = int((time.time() if now is None else now) * 1_000_000)
        plaintext = bytearray(_pad8(struct.pack("<QQI", timestamp, NEVER, len(encoded)) + encoded))
        plaintext += credential
        try:
            sealed = self._aead.encrypt(iv, plaintext, header)
        finally:
            wipe(plaintext)
        return binascii.b2a_base64(header + sealed, newline=False)

    def unseal(self, name: str, text: bytes) -> bytes:
        """The inverse of seal(), for tests (systemd does this for the units): the credential, or ValueError."""
        raw = binascii.a2b_base64(text)
        header = raw[:HEADER_BYTES]
        if header[:16] != BY_HOST or len(raw) < HEADER_BYTES + 24 + TAG_BYTES:
            raise ValueError("not a credential sealed with the host key")
        plaintext = self._aead.decrypt(header[32 : 32 + IV_BYTES], raw[HEADER_BYTES:], header)
        _, _, size = struct.unpack_from("<QQI", plaintext)
        if plaintext[20 : 20 + size].decode() != name:
            raise ValueError("sealed for another credential id")
        return plaintext[len(_pad8(bytes(20 + size))):]


class HostKeyCache:
    """The host key, read again only when the secret file changes (one stat() per delivery)."""

    def __init__(self, path: Path = HOST_SECRET, machine_id_path: Path = MACHINE_ID) -> None:
        self.path = path
        self.machine_id_path = machine_id_path
        self._stamp: tuple[int, int, int, int] | None = None
        self._key: HostKey | None = None
        self._error: SealError | None = None

    def get(self) -> HostKey:
        """Raises SealError while there is no usable secret."""
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int, int] | None = (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._stamp or (self._key is None and self._error is None):
            self._stamp = stamp
            try:
                self._key, self._error = HostKey.read(self.path, self.machine_id_path), None
            except SealError as e:
                self._key, self._error = None, e
        if self._key is None:
            assert self._error is not None
            raise self._error
        return self._key
