"""The systemd-creds backend against a real swtpm, through systemd-creds' --tpm2-device=swtpm:... syntax.

systemd-creds 252 leaves one session loaded in the TPM per decrypt, and a raw swtpm holds only three:
each test uses its own swtpm, and restarts it where it decrypts more than twice.
"""

from __future__ import annotations

import base64
import os
import shutil

import pytest
from swtpm_fixture import running_swtpm

from unlocker.errors import InvalidInput, TpmError, TpmLockout, TpmPolicyMismatch, TpmUnavailable
from unlocker.tpm import systemd_creds

pytestmark = pytest.mark.tpm


@pytest.fixture(autouse=True)
def _systemd_creds_installed():
    if shutil.which("systemd-creds") is None:
        pytest.fail("systemd-creds not found: it comes with systemd (252 on Debian 12)", pytrace=False)


@pytest.fixture
def other_swtpm(tmp_path_factory):
    with running_swtpm(tmp_path_factory.mktemp("other-swtpm")) as tpm:
        yield tpm


def test_round_trip_through_the_swtpm_tcti(fresh_swtpm):
    secret = bytearray(os.urandom(32))
    blob = systemd_creds.encrypt(fresh_swtpm.tcti, "unlocker-share", secret)
    assert bytes(secret) not in base64.b64decode(blob)
    out = bytearray(32)
    systemd_creds.decrypt(fresh_swtpm.tcti, "unlocker-share", blob, out)
    assert out == secret


def test_tcti_becomes_systemd_creds_device_syntax():
    assert systemd_creds.tpm2_device("swtpm:host=127.0.0.1,port=2321") == "swtpm:host=127.0.0.1,port=2321"
    assert systemd_creds.tpm2_device("device:/dev/tpmrm0") == "/dev/tpmrm0"
    with pytest.raises(InvalidInput, match="use /dev/tpmrm0"):
        systemd_creds.tpm2_device("device:/dev/tpm0")
    with pytest.raises(InvalidInput):
        systemd_creds.tpm2_device("/dev/tpmrm0")


def test_another_tpms_credential_fails_cleanly(fresh_swtpm, other_swtpm):
    blob = systemd_creds.encrypt(fresh_swtpm.tcti, "unlocker-share", os.urandom(32))
    out = bytearray(32)
    with pytest.raises(TpmError, match="does not belong to the TPM") as e:
        systemd_creds.decrypt(other_swtpm.tcti, "unlocker-share", blob, out)
    assert type(e.value) is TpmError and "integrity check failed" in str(e.value)
    assert out == bytes(32)


def test_changed_pcr_is_a_policy_mismatch(fresh_swtpm):
    blob = systemd_creds.encrypt(fresh_swtpm.tcti, "unlocker-share", os.urandom(32), pcrs=(7,))
    fresh_swtpm.extend_pcr(7, b"Secure Boot db update")
    with pytest.raises(TpmPolicyMismatch, match="rotate tpm2"):
        systemd_creds.decrypt(fresh_swtpm.tcti, "unlocker-share", blob, bytearray(32))


def test_wrong_name_or_size_is_refused_and_out_stays_clean(fresh_swtpm):
    blob = systemd_creds.encrypt(fresh_swtpm.tcti, "unlocker-share", os.urandom(32))
    out = bytearray(32)
    with pytest.raises(TpmError, match="does not match"):
        systemd_creds.decrypt(fresh_swtpm.tcti, "other-name", blob, out)
    with pytest.raises(TpmError, match=r"returned 32 bytes .* where 16 were expected"):
        systemd_creds.decrypt(fresh_swtpm.tcti, "unlocker-share", blob, small := bytearray(16))
    assert out == bytes(32) and small == bytes(16)


def test_absent_tpm_is_named():
    tcti = "swtpm:host=127.0.0.1,port=1"
    with pytest.raises(TpmUnavailable, match=r"no TPM answers at swtpm:host=127\.0\.0\.1,port=1"):
        systemd_creds.encrypt(tcti, "unlocker-share", os.urandom(32))


def test_bad_arguments_are_invalid_input(swtpm):
    for call in (lambda: systemd_creds.encrypt(swtpm.tcti, "a/b", os.urandom(32)),
                 lambda: systemd_creds.encrypt(swtpm.tcti, "x", os.urandom(32), with_key="host"),
                 lambda: systemd_creds.encrypt(swtpm.tcti, "x", os.urandom(32), pcrs=(24,))):
        with pytest.raises(InvalidInput):
            call()


def test_systemd_creds_leaks_a_session_per_decrypt(fresh_swtpm):
    # The fact behind refusing /dev/tpm0 (no resource manager) for this backend: systemd-creds 252
    # leaves a session loaded on every decrypt. swtpm holds three; a decrypt needs two at once.
    blob = systemd_creds.encrypt(fresh_swtpm.tcti, "unlocker-share", os.urandom(32))
    assert fresh_swtpm.loaded_handles() == []  # encrypt cleans up
    for leaked in (1, 2):
        systemd_creds.decrypt(fresh_swtpm.tcti, "unlocker-share", blob, bytearray(32))
        assert len(fresh_swtpm.loaded_handles()) == leaked
    with pytest.raises(TpmError, match="out of memory for session contexts"):
        systemd_creds.decrypt(fresh_swtpm.tcti, "unlocker-share", blob, bytearray(32))
    fresh_swtpm.restart()  # TPM2_Startup flushes every session
    systemd_creds.decrypt(fresh_swtpm.tcti, "unlocker-share", blob, bytearray(32))


def test_power_cut_after_systemd_creds_counts_and_lockout_is_reported(fresh_swtpm):
    # Unlike unlocker.tpm.esapi (see test_tpm.py), systemd-creds 252 authorizes DA-protected objects even
    # without a PIN: a power cut after it ran counts one failure, and in lockout it refuses outright.
    fresh_swtpm.set_da(max_tries=1)
    blob = systemd_creds.encrypt(fresh_swtpm.tcti, "unlocker-share", os.urandom(32))
    fresh_swtpm.restart()  # SIGKILL
    assert fresh_swtpm.da_state() == (1, True)
    with pytest.raises(TpmLockout, match="recovery key"):
        systemd_creds.decrypt(fresh_swtpm.tcti, "unlocker-share", blob, bytearray(32))
    fresh_swtpm.reset_da()
    systemd_creds.decrypt(fresh_swtpm.tcti, "unlocker-share", blob, bytearray(32))
