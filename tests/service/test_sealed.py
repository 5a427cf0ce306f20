"""Sealing a delivery as systemd's encrypted credential (unlocker/service/sealed.py). That systemd 252 itself
opens what the broker seals, and fails a unit on an empty or cut reply, is proved in a booted container
(tests/system/test_platform_facts.py)."""

from __future__ import annotations

import binascii

import pytest
from conftest import MACHINE_ID, host_secret
from cryptography.exceptions import InvalidTag

from unlocker.service.sealed import HostKey, HostKeyCache, SealError, app_specific_machine_id


def test_the_app_specific_machine_id_is_the_one_systemd_writes():
    # From a Debian 12 container: /etc/machine-id, and the first 16 bytes of the credential.secret that
    # systemd-creds (252) made there.
    assert app_specific_machine_id(MACHINE_ID).hex() == "0ee02b7a67264fddb07cb6a8d749a589"


def test_a_sealed_credential_opens_only_as_the_credential_it_was_sealed_for(tmp_path):
    key = HostKey.read(*host_secret(tmp_path))
    sealed = key.seal("dek", bytearray(b"k" * 32))
    assert b"k" * 8 not in sealed
    assert key.unseal("dek", sealed) == b"k" * 32
    with pytest.raises(ValueError, match="another credential id"):
        key.unseal("other", sealed)
    assert key.seal("dek", b"k" * 32) != sealed  # a fresh IV each time


def test_a_cut_or_altered_seal_does_not_open(tmp_path):
    key = HostKey.read(*host_secret(tmp_path))
    raw = bytearray(binascii.a2b_base64(key.seal("dek", b"k" * 32)))
    raw[-1] ^= 1
    with pytest.raises(InvalidTag):
        key.unseal("dek", binascii.b2a_base64(bytes(raw)))
    with pytest.raises(ValueError):
        key.unseal("dek", b"")


@pytest.mark.parametrize(("setup", "message"), [
    (lambda d: d / "credential.secret", "does not exist: run `systemd-creds setup`"),
    (lambda d: host_secret(d, mode=0o600)[0], "must be one regular file of mode 0400"),
    (lambda d: host_secret(d, machine_id=bytes(16))[0], "belongs to another machine id"),
])
def test_a_host_secret_systemd_would_not_use_is_named_with_its_fix(tmp_path, setup, message):
    (tmp_path / "machine-id").write_text(MACHINE_ID.hex() + "\n")
    secret = setup(tmp_path)
    (tmp_path / "machine-id").write_text(MACHINE_ID.hex() + "\n")
    with pytest.raises(SealError, match=message):
        HostKey.read(secret, tmp_path / "machine-id")


def test_the_cache_reads_the_secret_again_once_it_is_replaced(tmp_path):
    secret, machine_id = host_secret(tmp_path)
    cache = HostKeyCache(secret, machine_id)
    first = cache.get()
    assert cache.get() is first
    secret.unlink()
    with pytest.raises(SealError, match="does not exist"):
        cache.get()
    host_secret(tmp_path)  # `systemd-creds setup` made a new one
    assert cache.get() is not first


def test_the_header_is_laid_out_as_systemd_creds_writes_it(tmp_path):
    key = HostKey.read(*host_secret(tmp_path))
    raw = binascii.a2b_base64(key.seal("dek", b"k" * 32))
    # The first 32 bytes of a blob from `systemd-creds encrypt --with-key=host` (252): the key type's id,
    # then key size 32, block size 1, IV size 12, tag size 16; the IV follows, then zeros to 48 bytes.
    assert raw[:32].hex() == "5a1c6a86df9d4096b1d5a65e0862f19a" + "20000000" "01000000" "0c000000" "10000000"
    assert raw[44:48] == bytes(4)
    assert len(raw) == 48 + 24 + 32 + 16  # header, metadata with "dek" padded to 8, the key, the tag
