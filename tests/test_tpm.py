"""The TPM module against a real swtpm: sealing, the dictionary-attack counter, PCR policy, faults."""

from __future__ import annotations

import os

import pytest

from unlocker import tpm
from unlocker.errors import TpmError, TpmLockout, TpmPolicyMismatch, TpmUnavailable, WrongSecret

pytestmark = pytest.mark.tpm
AUTH = bytes(range(32))


def _roundtrip(tcti, auth, pcrs):
    secret = os.urandom(32)
    sealed = tpm.seal(tcti, secret, auth, pcrs)
    out = bytearray(32)
    tpm.unseal(tcti, sealed, auth, out)
    assert bytes(out) == secret
    return sealed


@pytest.mark.parametrize("pcrs", [(7,), (0, 7), ()])
@pytest.mark.parametrize("auth", [AUTH, None])
def test_seal_unseal_round_trip(swtpm, auth, pcrs):
    sealed = _roundtrip(swtpm.tcti, auth, pcrs)
    assert sealed.with_auth == (auth is not None) and sealed.pcrs == pcrs


def test_wrong_auth_counts_exactly_one_and_the_right_one_still_works(fresh_swtpm):
    fresh_swtpm.set_da(max_tries=5)
    sealed = tpm.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    for expected in (1, 2):
        with pytest.raises(WrongSecret):
            tpm.unseal(fresh_swtpm.tcti, sealed, b"x" * 32, bytearray(32))
        assert tpm.probe(fresh_swtpm.tcti).lockout_counter == expected
    tpm.unseal(fresh_swtpm.tcti, sealed, AUTH, bytearray(32))
    assert tpm.probe(fresh_swtpm.tcti).lockout_counter == 2  # a success does not reset it


def test_lockout_is_reported_and_costs_no_extra_attempts(fresh_swtpm):
    fresh_swtpm.set_da(max_tries=2)
    sealed = tpm.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    for _ in range(2):
        with pytest.raises(WrongSecret):
            tpm.unseal(fresh_swtpm.tcti, sealed, b"x" * 32, bytearray(32))
    assert tpm.probe(fresh_swtpm.tcti).in_lockout
    with pytest.raises(TpmLockout) as e:
        tpm.unseal(fresh_swtpm.tcti, sealed, AUTH, bytearray(32))
    assert "lockout" in str(e.value) and "recovery key" in str(e.value) and "1000 s" in str(e.value)
    assert tpm.probe(fresh_swtpm.tcti).lockout_counter == 2
    fresh_swtpm.reset_da()
    tpm.unseal(fresh_swtpm.tcti, sealed, AUTH, bytearray(32))


def test_changed_pcr_is_named_and_reseal_fixes_it(fresh_swtpm):
    sealed = tpm.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    fresh_swtpm.extend_pcr(7)
    with pytest.raises(TpmPolicyMismatch) as e:
        tpm.unseal(fresh_swtpm.tcti, sealed, AUTH, bytearray(32))
    assert "PCR 7" in str(e.value) and "unlocker rotate tpm2" in str(e.value)
    assert tpm.probe(fresh_swtpm.tcti).lockout_counter == 0  # a policy failure is not a wrong guess
    _roundtrip(fresh_swtpm.tcti, AUTH, (7,))


def test_unrelated_pcr_change_does_not_matter(fresh_swtpm):
    sealed = tpm.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    fresh_swtpm.extend_pcr(8)
    tpm.unseal(fresh_swtpm.tcti, sealed, AUTH, bytearray(32))


def test_corrupted_blobs_fail_cleanly(swtpm):
    sealed = tpm.seal(swtpm.tcti, os.urandom(32), AUTH, (7,))
    private = bytearray(sealed.private)
    private[40] ^= 1
    with pytest.raises(TpmError, match="does not belong"):
        tpm.unseal(swtpm.tcti, tpm.Sealed(sealed.public, bytes(private), (7,), "sha256", True), AUTH, bytearray(32))
    with pytest.raises(TpmError, match="damaged"):
        tpm.unseal(swtpm.tcti, tpm.Sealed(sealed.public[:10], sealed.private, (7,), "sha256", True), AUTH,
                   bytearray(32))


def test_another_tpms_blob_fails_cleanly(swtpm, fresh_swtpm):
    foreign = tpm.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    with pytest.raises(TpmError, match="does not belong") as e:
        tpm.unseal(swtpm.tcti, foreign, AUTH, bytearray(32))
    assert not isinstance(e.value, WrongSecret)


def test_cleared_tpm_fails_cleanly(fresh_swtpm):
    sealed = tpm.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    fresh_swtpm.clear()
    with pytest.raises(TpmError, match="does not belong"):
        tpm.unseal(fresh_swtpm.tcti, sealed, AUTH, bytearray(32))


def test_absent_tpm_is_named():
    with pytest.raises(TpmUnavailable, match="port=1"):
        tpm.probe("swtpm:host=127.0.0.1,port=1")


def test_unclean_kills_do_not_lock_out_the_noda_primary(fresh_swtpm):
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.types import TPM2B_SENSITIVE_CREATE

    sealed = tpm.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    for _ in range(3):
        tpm.unseal(fresh_swtpm.tcti, sealed, AUTH, bytearray(32))
        ctx = fresh_swtpm.esapi()  # a client mid-session: a primary loaded, never flushed
        ctx.create_primary(TPM2B_SENSITIVE_CREATE(), tpm._srk_template(), ESYS_TR.OWNER)
        fresh_swtpm.restart()  # SIGKILL, then start again on the same state
    # The TPM counts each non-orderly restart after a DA-protected object was used as one failure
    # (a fact of TPM 2.0, not of unlocker): with swtpm's maxTries of 3 the sealed object is now in lockout.
    info = tpm.probe(fresh_swtpm.tcti)
    assert (info.lockout_counter, info.in_lockout) == (3, True)
    # The primary is noDA, so everything that needs only the parent still works: sealing a new share,
    # which is what re-enrolling or `rotate tpm2` does.
    _roundtrip(fresh_swtpm.tcti, None, (7,))
    tpm.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    with pytest.raises(TpmLockout):
        tpm.unseal(fresh_swtpm.tcti, sealed, AUTH, bytearray(32))
    fresh_swtpm.reset_da()
    tpm.unseal(fresh_swtpm.tcti, sealed, AUTH, bytearray(32))


def test_many_unseals_leak_nothing_on_a_raw_swtpm(swtpm):
    sealed = tpm.seal(swtpm.tcti, os.urandom(32), AUTH, (7,))
    out = bytearray(32)
    for _ in range(200):
        tpm.unseal(swtpm.tcti, sealed, AUTH, out)
    for _ in range(20):  # error paths must flush too
        with pytest.raises(WrongSecret):
            tpm.unseal(swtpm.tcti, sealed, b"x" * 32, out)
        swtpm.reset_da()
    tpm.unseal(swtpm.tcti, sealed, AUTH, out)


def test_tcti_syntax_is_checked():
    from unlocker.errors import InvalidInput
    for bad in ("", "/dev/tpmrm0", "device:tpmrm0", "bogus:x"):
        with pytest.raises(InvalidInput):
            tpm.parse_tcti(bad)
