"""unlocker.tpm.esapi against a real swtpm: sealing, the dictionary-attack counter, the PCR policy, faults.

DA counters are read through the fixture's own ESAPI (da_state), not through the module under test.
"""

from __future__ import annotations

import os
import re
import socket
import time

import pytest
from swtpm_fixture import boot_digest
from tpm2_pytss.constants import ESYS_TR, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE

from unlocker.errors import InvalidInput, TpmError, TpmLockout, TpmPolicyMismatch, TpmUnavailable, WrongSecret
from unlocker.tpm import esapi

pytestmark = pytest.mark.tpm
AUTH = bytes(range(1, 33))  # what a tpm2+passphrase slot passes: 32 bytes derived from the passphrase
WRONG = b"\xaa" * 32
INTEGRITY_PARAM1 = 0x1DF  # TPM_RC_INTEGRITY (0x09F) on parameter 1: what Load says of a blob not made here


def _roundtrip(tcti: str, auth: bytes | None, pcrs: tuple[int, ...]) -> esapi.Sealed:
    secret = os.urandom(32)
    sealed = esapi.seal(tcti, bytearray(secret), auth, pcrs)
    out = bytearray(32)
    esapi.unseal(tcti, sealed, auth, out)
    assert out == secret
    return sealed


def _unseal_fails(tcti: str, sealed: esapi.Sealed, auth: bytes | None = AUTH) -> TpmError | WrongSecret:
    out = bytearray(32)
    with pytest.raises((TpmError, WrongSecret)) as e:
        esapi.unseal(tcti, sealed, auth, out)
    assert out == bytes(32)
    return e.value


def _without_parent_name(sealed: esapi.Sealed) -> esapi.Sealed:
    """As a keystore that does not keep the parent's name would hand it back."""
    return esapi.Sealed(sealed.public, sealed.private, sealed.pcrs, sealed.bank, sealed.with_auth)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- sealing -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pcrs", [(7,), (0, 7), ()], ids=["pcr7", "pcr0+7", "no-pcrs"])
@pytest.mark.parametrize("auth", [AUTH, None], ids=["tpm2+passphrase", "tpm2"])
def test_seal_unseal_round_trip(swtpm, auth, pcrs):
    sealed = _roundtrip(swtpm.tcti, auth, pcrs)
    assert (sealed.pcrs, sealed.bank, sealed.with_auth) == (pcrs, "sha256", auth is not None)


def test_sealed_object_is_dictionary_attack_protected_and_policy_only(swtpm):
    sealed = esapi.seal(swtpm.tcti, os.urandom(32), AUTH, (7,))
    public, _ = TPM2B_PUBLIC.unmarshal(sealed.public)
    attrs = public.publicArea.objectAttributes
    assert not attrs & TPMA_OBJECT.NODA  # wrong authValues are counted
    assert not attrs & TPMA_OBJECT.USERWITHAUTH  # unseal only through the policy
    assert attrs & TPMA_OBJECT.FIXEDTPM and attrs & TPMA_OBJECT.FIXEDPARENT
    assert len(public.publicArea.authPolicy) == 32
    assert esapi._srk_template().publicArea.objectAttributes & TPMA_OBJECT.NODA  # the parent never locks out


def test_an_auth_value_ending_in_zero_bytes_still_opens(swtpm):
    # The TPM strips trailing zeros from an authValue; one passphrase in 256 derives such a K2.
    for auth in (AUTH[:31] + b"\0", AUTH[:28] + bytes(4)):
        _roundtrip(swtpm.tcti, auth, (7,))


def test_unseal_refuses_an_output_buffer_of_the_wrong_size(swtpm):
    sealed = esapi.seal(swtpm.tcti, os.urandom(32), AUTH, (7,))
    out = bytearray(16)
    with pytest.raises(TpmError, match="holds 32 bytes where 16 were expected"):
        esapi.unseal(swtpm.tcti, sealed, AUTH, out)
    assert out == bytes(16)


def test_missing_auth_is_refused_before_it_costs_a_try(fresh_swtpm):
    sealed = esapi.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    with pytest.raises(ValueError):
        esapi.unseal(fresh_swtpm.tcti, sealed, None, bytearray(32))
    assert fresh_swtpm.da_state() == (0, False)


def test_bad_pcr_selection_is_invalid_input(swtpm):
    for pcrs, bank in (((24,), "sha256"), ((7, 7), "sha256"), ((-1,), "sha256"), ((7,), "md5")):
        with pytest.raises(InvalidInput):
            esapi.seal(swtpm.tcti, os.urandom(32), AUTH, pcrs, bank)


# -- wrong passphrase, lockout -----------------------------------------------------------------------------


def test_wrong_auth_costs_exactly_one_try_and_the_right_one_still_works(fresh_swtpm):
    fresh_swtpm.set_da(max_tries=5)
    sealed = esapi.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    for expected in (1, 2, 3):
        assert isinstance(_unseal_fails(fresh_swtpm.tcti, sealed, WRONG), WrongSecret)
        assert fresh_swtpm.da_state() == (expected, False)
    _roundtrip(fresh_swtpm.tcti, AUTH, (7,))
    esapi.unseal(fresh_swtpm.tcti, sealed, AUTH, bytearray(32))
    assert fresh_swtpm.da_state() == (3, False)  # a success neither costs nor refunds a try


def test_lockout_is_reported_and_costs_no_extra_attempts(fresh_swtpm):
    fresh_swtpm.set_da(max_tries=2, recovery_time=1000)
    sealed = esapi.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    for _ in range(2):
        _unseal_fails(fresh_swtpm.tcti, sealed, WRONG)
    assert fresh_swtpm.da_state() == (2, True)

    error = _unseal_fails(fresh_swtpm.tcti, sealed, AUTH)
    assert isinstance(error, TpmLockout) and error.rc == 0x921
    message = str(error)
    assert "dictionary-attack lockout" in message and "recovery key" in message
    assert "Wait about 1000 s" in message and "Do not retry" in message
    assert fresh_swtpm.da_state() == (2, True)  # the refused attempt was not counted, nor retried

    # The noDA parent still works: a new share can be sealed (rotate tpm2), and a PCR-only slot, which
    # proves no authValue, still opens.
    _roundtrip(fresh_swtpm.tcti, None, (7,))
    fresh_swtpm.reset_da()
    esapi.unseal(fresh_swtpm.tcti, sealed, AUTH, bytearray(32))


# -- PCR policy --------------------------------------------------------------------------------------------


def test_changed_pcr_is_named_costs_no_try_and_a_reseal_fixes_it(fresh_swtpm):
    sealed = esapi.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    both = esapi.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (0, 7))
    fresh_swtpm.extend_pcr(7, b"Secure Boot db update")

    error = _unseal_fails(fresh_swtpm.tcti, sealed, AUTH)
    assert isinstance(error, TpmPolicyMismatch) and error.rc == 0x99D  # POLICY_FAIL, session 1
    assert "PCR 7 " in str(error) and "unlocker rotate tpm2" in str(error)
    assert "PCRs 0, 7 " in str(_unseal_fails(fresh_swtpm.tcti, both, AUTH))
    # The policy is checked before the authValue: a wrong one is not counted either.
    assert isinstance(_unseal_fails(fresh_swtpm.tcti, sealed, WRONG), TpmPolicyMismatch)
    assert fresh_swtpm.da_state() == (0, False)

    _roundtrip(fresh_swtpm.tcti, AUTH, (7,))  # re-sealed to the current values


def test_an_unrelated_pcr_change_does_not_matter(swtpm):
    sealed = esapi.seal(swtpm.tcti, os.urandom(32), AUTH, (7,))
    swtpm.extend_pcr(16, b"debug PCR")  # nobody seals to PCR 16
    esapi.unseal(swtpm.tcti, sealed, AUTH, bytearray(32))


def test_pcr_values_survive_a_reboot(fresh_swtpm):
    sealed = esapi.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (0, 7))
    fresh_swtpm.restart(orderly=True)  # PCRs reset, the fixture's "firmware" measures the same again
    esapi.unseal(fresh_swtpm.tcti, sealed, AUTH, bytearray(32))


def test_read_pcrs_returns_what_firmware_measured(swtpm):
    assert esapi.read_pcrs(swtpm.tcti, [0, 7]) == {0: boot_digest(0), 7: boot_digest(7)}
    many = esapi.read_pcrs(swtpm.tcti, range(12))  # more than the 8 a TPM returns per read
    assert sorted(many) == list(range(12)) and many[3] == boot_digest(3) and many[11] == bytes(32)


# -- blobs that are not this TPM's -------------------------------------------------------------------------


def _flip(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


@pytest.mark.parametrize("damage", [
    lambda s: esapi.Sealed(s.public, _flip(s.private, 10), s.pcrs, s.bank, s.with_auth),  # integrity HMAC
    lambda s: esapi.Sealed(s.public, _flip(s.private, len(s.private) - 1), s.pcrs, s.bank, s.with_auth),
    lambda s: esapi.Sealed(_flip(s.public, 20), s.private, s.pcrs, s.bank, s.with_auth),  # authPolicy
], ids=["private-hmac", "private-sensitive", "public-policy"])
def test_corrupted_blob_is_reported_as_not_this_tpms(fresh_swtpm, damage):
    sealed = esapi.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    error = _unseal_fails(fresh_swtpm.tcti, damage(sealed))
    assert type(error) is TpmError and error.rc == INTEGRITY_PARAM1
    assert "does not belong to the TPM" in str(error) and "another slot" in str(error)
    assert fresh_swtpm.da_state() == (0, False)  # the TPM never got as far as the authValue


@pytest.mark.parametrize("damage", [
    lambda s: esapi.Sealed(s.public[:10], s.private, s.pcrs, s.bank, s.with_auth),
    lambda s: esapi.Sealed(s.public, s.private + b"\0", s.pcrs, s.bank, s.with_auth),
    lambda s: esapi.Sealed(b"", b"", s.pcrs, s.bank, s.with_auth),
], ids=["truncated", "trailing-bytes", "empty"])
def test_unparseable_blob_is_refused_before_the_tpm_sees_it(swtpm, damage):
    sealed = esapi.seal(swtpm.tcti, os.urandom(32), AUTH, (7,))
    error = _unseal_fails(swtpm.tcti, damage(sealed))
    assert type(error) is TpmError and error.rc is None and "does not belong" in str(error)


def test_another_tpms_blob_is_reported_as_not_this_tpms(swtpm, fresh_swtpm):
    foreign = esapi.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    error = _unseal_fails(swtpm.tcti, foreign)  # refused on the parent's name, before any session
    assert type(error) is TpmError and "does not belong" in str(error) and "storage key" in str(error)
    error = _unseal_fails(swtpm.tcti, _without_parent_name(foreign))  # refused by the TPM's Load
    assert type(error) is TpmError and error.rc == INTEGRITY_PARAM1 and "does not belong" in str(error)


def test_cleared_tpm_is_reported_and_sealing_again_works(fresh_swtpm):
    sealed = esapi.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    fresh_swtpm.clear()
    for blob in (sealed, _without_parent_name(sealed)):
        error = _unseal_fails(fresh_swtpm.tcti, blob)
        assert type(error) is TpmError and "does not belong to the TPM" in str(error)
        assert "cleared" in str(error)
    assert _unseal_fails(fresh_swtpm.tcti, _without_parent_name(sealed)).rc == INTEGRITY_PARAM1
    _roundtrip(fresh_swtpm.tcti, AUTH, (7,))  # the new owner seed works for a new slot


def test_owner_password_is_not_mistaken_for_a_wrong_passphrase(fresh_swtpm):
    with fresh_swtpm.esapi() as ctx:
        ctx.hierarchy_change_auth(ESYS_TR.OWNER, b"owner password")
    with pytest.raises(TpmError, match="owner hierarchy has a password") as e:
        esapi.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    assert not isinstance(e.value, WrongSecret) and e.value.rc == 0x9A2  # BAD_AUTH: hierarchies are noDA
    assert fresh_swtpm.da_state() == (0, False)


# -- no TPM ------------------------------------------------------------------------------------------------


def test_absent_tpm_is_named(swtpm):
    sealed = esapi.seal(swtpm.tcti, os.urandom(32), AUTH, (7,))
    tcti = f"swtpm:host=127.0.0.1,port={_closed_port()}"
    for call in (lambda: esapi.probe(tcti), lambda: esapi.read_pcrs(tcti, [7]),
                 lambda: esapi.seal(tcti, os.urandom(32), AUTH, (7,)),
                 lambda: esapi.unseal(tcti, sealed, AUTH, bytearray(32))):
        with pytest.raises(TpmUnavailable, match=re.escape(f"no TPM answers at {tcti}: is swtpm running?")) as e:
            call()
        assert e.value.rc == 0xA000A  # the TCTI's IO failure
    with pytest.raises(TpmUnavailable, match="no TPM answers at device:/dev/tpmrm99"):
        esapi.probe("device:/dev/tpmrm99")


def test_tcti_syntax_is_checked():
    assert esapi.parse_tcti("device:/dev/tpmrm0") == ("device", "/dev/tpmrm0")
    assert esapi.parse_tcti("swtpm:host=127.0.0.1,port=2321") == ("swtpm", "host=127.0.0.1,port=2321")
    assert esapi.parse_tcti("swtpm:port=2321") == ("swtpm", "port=2321")
    for bad in ("", "/dev/tpmrm0", "device:tpmrm0", "bogus:x", "swtpm:port=x", "swtpm:port=70000",
                "swtpm:hots=1", "swtpm:host=,port=1"):
        with pytest.raises(InvalidInput, match="is not a TPM TCTI"):
            esapi.parse_tcti(bad)
    with pytest.raises(InvalidInput, match="did you mean device:/dev/tpmrm0"):
        esapi.parse_tcti("/dev/tpmrm0")


def test_probe_reports_the_dictionary_attack_state(fresh_swtpm):
    info = esapi.probe(fresh_swtpm.tcti)
    assert info == esapi.TpmInfo(manufacturer="IBM", lockout_counter=0, max_tries=3, recovery_time=1000,
                               lockout_recovery=1000, in_lockout=False)  # swtpm's defaults


# -- power cuts and leaks ----------------------------------------------------------------------------------


def test_unclean_kills_never_count_against_the_noda_primary(fresh_swtpm):
    # swtpm's defaults (3 tries): three counted power cuts would lock out. A client is killed each time
    # while it still holds the primary, as a boot interrupted mid-unlock would.
    sealed = esapi.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    for _ in range(3):
        esapi.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
        with fresh_swtpm.esapi() as ctx:
            ctx.create_primary(TPM2B_SENSITIVE_CREATE(), esapi._srk_template(), ESYS_TR.OWNER)  # left loaded on purpose
        fresh_swtpm.restart()  # SIGKILL, then start again on the same state
    assert fresh_swtpm.da_state() == (0, False)
    esapi.unseal(fresh_swtpm.tcti, sealed, AUTH, bytearray(32))
    _roundtrip(fresh_swtpm.tcti, AUTH, (7,))


def test_power_cut_after_a_passphrase_unseal_counts_one_failure(fresh_swtpm):
    # A TPM 2.0 fact, not unlocker's choice: once a DA-protected object has been authorized with its
    # authValue, a restart without TPM2_Shutdown counts as one failure. unlocker never adds to it.
    fresh_swtpm.set_da(max_tries=5)
    sealed = esapi.seal(fresh_swtpm.tcti, os.urandom(32), AUTH, (7,))
    policy_only = esapi.seal(fresh_swtpm.tcti, os.urandom(32), None, (7,))

    esapi.unseal(fresh_swtpm.tcti, sealed, AUTH, bytearray(32))
    fresh_swtpm.restart(orderly=True)  # a clean reboot: the kernel sends TPM2_Shutdown
    esapi.unseal(fresh_swtpm.tcti, policy_only, None, bytearray(32))
    fresh_swtpm.restart()  # no authValue was proven: nothing to count
    assert fresh_swtpm.da_state() == (0, False)

    for expected in (1, 2, 3):
        esapi.unseal(fresh_swtpm.tcti, sealed, AUTH, bytearray(32))
        fresh_swtpm.restart()
        assert fresh_swtpm.da_state() == (expected, False)
    esapi.unseal(fresh_swtpm.tcti, sealed, AUTH, bytearray(32))  # below max_tries the right auth still works


def test_many_unseals_leave_nothing_loaded_on_a_raw_swtpm(swtpm):
    sealed = esapi.seal(swtpm.tcti, os.urandom(32), AUTH, (7,))
    out = bytearray(32)
    start = time.monotonic()
    for _ in range(200):
        esapi.unseal(swtpm.tcti, sealed, AUTH, out)
    assert time.monotonic() - start < 30
    assert swtpm.loaded_handles() == []

    # Every error path flushes too.
    stale = esapi.seal(swtpm.tcti, os.urandom(32), AUTH, (16,))
    swtpm.extend_pcr(16, b"changed")
    failures = [
        (sealed, WRONG, WrongSecret),
        (stale, AUTH, TpmPolicyMismatch),
        (esapi.Sealed(sealed.public, _flip(sealed.private, 10), (7,), "sha256", True), AUTH, TpmError),
    ]
    for _ in range(5):
        for blob, auth, error in failures:
            with pytest.raises(error):
                esapi.unseal(swtpm.tcti, blob, auth, out)
            assert swtpm.loaded_handles() == []
        swtpm.reset_da()
    esapi.unseal(swtpm.tcti, sealed, AUTH, out)
