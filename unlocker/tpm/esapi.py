"""The TPM, through tpm2-pytss (ESAPI). Everything that touches the TPM is in this module.

- The parent is a primary key created on every call from the standard ECC P-256 "SRK" template, which has
  noDA: power cuts and unclean kills must never lock the parent out. No persistent handle is used or
  stored, so no other tool can clobber ours and nothing is left behind in the TPM.
- A share is sealed in a keyed-hash object WITHOUT noDA, so every wrong authValue is counted by the
  TPM's dictionary-attack protection. It can only be used through its policy: PolicyPCR, plus
  PolicyAuthValue for tpm2+passphrase.
- Sessions are salted with the primary and encrypt the sensitive parameters, so neither the share nor
  anything an eavesdropper could test passphrase guesses against crosses the bus in clear.
- Every transient object and session is flushed on every path: a raw swtpm or /dev/tpm0 (no resource
  manager) keeps whatever a client leaves loaded and fails with TPM_RC 0x903 after a few leaked runs.
- A failing authorization is never retried: each attempt costs one of the TPM's dictionary-attack tries.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss._libtpm2_pytss import ffi
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_PT,
    TPM2_RC,
    TPM2_SE,
    TPMA_OBJECT,
    TPMA_PERMANENT,
    TPMA_SESSION,
    TSS2_RC,
)
from tpm2_pytss.types import (
    TPM2B_AUTH,
    TPM2B_DIGEST,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPM2B_SIMPLE_OBJECT,
    TPM_OBJECT,
    TPML_PCR_SELECTION,
    TPMT_PUBLIC,
    TPMT_SYM_DEF,
)

from unlocker import logs
from unlocker.errors import InvalidInput, TpmError, TpmLockout, TpmPolicyMismatch, TpmUnavailable, WrongSecret
from unlocker.memory import wipe

# The TSS prints every TPM error on stderr by itself; we report each one once, as a message an administrator
# can act on. tpm2-tss reads TSS2_LOG at its first log call, so setting it before any call is enough, and an
# explicit TSS2_LOG (for debugging) wins.
os.environ.setdefault("TSS2_LOG", "all+none")
# tpm2_pytss warns through logging, which the reports leave unloaded until here: set it up (logs.py).
logs.logger()

# AES-128-CFB is the parameter-encryption cipher every PC Client TPM must implement.
_SESSION_SYM = TPMT_SYM_DEF.parse("aes128cfb")
_MAX_SEALED_BYTES = 128  # MAX_SYM_DATA: the most a keyed-hash object can hold
_MAX_AUTH_BYTES = 32  # an authValue may not be longer than the object's nameAlg digest (SHA-256)
_PCR_COUNT = 24

_AUTH_FAILURES = (TPM2_RC.AUTH_FAIL, TPM2_RC.BAD_AUTH)
_POLICY_FAILURES = (TPM2_RC.POLICY_FAIL, TPM2_RC.PCR_CHANGED, TPM2_RC.PCR)
_OUT_OF_MEMORY = (TPM2_RC.OBJECT_MEMORY, TPM2_RC.SESSION_MEMORY, TPM2_RC.SESSION_HANDLES, TPM2_RC.MEMORY)


@dataclass(frozen=True)
class Sealed:
    public: bytes  # marshalled TPM2B_PUBLIC of the sealed keyed-hash object
    private: bytes  # marshalled TPM2B_PRIVATE
    pcrs: tuple[int, ...]  # PCR indexes in the policy (may be empty)
    bank: str  # "sha256"
    with_auth: bool  # PolicyAuthValue + PolicyPCR (tpm2+passphrase) or PolicyPCR only (tpm2)
    # Name of the primary the object was sealed under. When set, unseal refuses any other primary before
    # it salts a session with it: that is what stops something on the bus from posing as the TPM.
    parent_name: bytes = b""


@dataclass(frozen=True)
class TpmInfo:
    manufacturer: str
    lockout_counter: int
    max_tries: int
    recovery_time: int  # seconds for the TPM to forget one failure
    lockout_recovery: int  # seconds before the lockout hierarchy may be tried again after a failure
    in_lockout: bool


# -- TCTI ---------------------------------------------------------------------------------------------------

_SOCKET_KEYS = {"host", "port", "path"}


def parse_tcti(s: str) -> tuple[str, str]:
    """'device:/dev/tpmrm0' or 'swtpm:host=127.0.0.1,port=2321' -> (driver, config). Raises InvalidInput."""
    driver, _, conf = s.partition(":")
    if driver == "device":
        ok = conf.startswith("/dev/")
    elif driver in ("swtpm", "mssim"):
        ok = _valid_socket_conf(conf)
    else:
        ok = driver == "tabrmd"
    if not ok:
        hint = f" (did you mean device:{s}?)" if s.startswith("/dev/") else ""
        raise InvalidInput(f"{s!r} is not a TPM TCTI{hint}: use device:/dev/tpmrm0 for the machine's TPM, "
                           "or swtpm:host=127.0.0.1,port=2321 for a software TPM")
    return driver, conf


def _valid_socket_conf(conf: str) -> bool:
    if not conf:
        return True  # the TCTI's defaults: localhost, port 2321
    pairs = [item.partition("=") for item in conf.split(",")]
    if any(not sep or key not in _SOCKET_KEYS or not value for key, sep, value in pairs):
        return False
    ports = [value for key, _, value in pairs if key == "port"]
    return all(p.isdigit() and 0 < int(p) < 65536 for p in ports)


@contextlib.contextmanager
def _connect(tcti: str) -> Iterator[ESAPI]:
    """An ESAPI context on `tcti`; it and its TCTI are closed however the block ends."""
    parse_tcti(tcti)
    try:
        ctx = ESAPI(tcti)
    except TSS2_Exception as e:
        raise _unavailable(tcti, e) from None
    try:
        yield ctx
    finally:
        ctx.close()


def _unavailable(tcti: str, e: TSS2_Exception) -> TpmUnavailable:
    driver, _ = parse_tcti(tcti)
    hint = "is swtpm running?" if driver in ("swtpm", "mssim") else "does the device exist (ls /dev/tpm*)?"
    return TpmUnavailable(f"no TPM answers at {tcti}: {hint} ({e})", rc=int(e.rc))


# -- flushing ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _loaded(ctx: ESAPI, handle: ESYS_TR) -> Iterator[ESYS_TR]:
    """Flush a transient object or session when the block ends, however it ends."""
    try:
        yield handle
    finally:
        # A failed flush means the TPM went away; the error that got us here, if any, matters more.
        with contextlib.suppress(TSS2_Exception):
            ctx.flush_context(handle)


# -- error translation -------------------------------------------------------------------------------------


def _tpm_code(e: TSS2_Exception) -> int | None:
    """The TPM's response code with the handle/session/parameter number masked off; None when the error
    came from the software stack or the transport rather than from the TPM."""
    layer = int(e.rc) & TSS2_RC.RC_LAYER_MASK
    if layer not in (TSS2_RC.TPM_RC_LAYER, TSS2_RC.RESMGR_TPM_RC_LAYER):
        return None
    rc = int(e.rc) & 0xFFFF
    # Format-one codes carry the number of the failing handle, session or parameter in bits 6-11:
    # 0x98E is AUTH_FAIL (0x08E) in session 1.
    return TPM2_RC.FMT1 | (rc & 0x3F) if rc & TPM2_RC.FMT1 else rc


@contextlib.contextmanager
def _translated(ctx: ESAPI, tcti: str, pcrs: Sequence[int] = ()) -> Iterator[None]:
    """Turn a TPM failure inside the block into the error an administrator can act on."""
    try:
        yield
    except TSS2_Exception as e:
        raise _error(e, ctx, tcti, pcrs) from None


def _error(e: TSS2_Exception, ctx: ESAPI, tcti: str, pcrs: Sequence[int]) -> TpmError | WrongSecret:
    rc, code = int(e.rc), _tpm_code(e)
    if code is None:
        if int(e.rc) & TSS2_RC.RC_LAYER_MASK == TSS2_RC.TCTI_RC_LAYER:
            return TpmUnavailable(f"lost the TPM at {tcti}: {e}", rc=rc)
        return TpmError(f"the TPM software stack failed talking to {tcti}: {e} (rc {rc:#x})", rc=rc)
    if code in _AUTH_FAILURES:
        return WrongSecret()
    if code == TPM2_RC.LOCKOUT:
        return TpmLockout(_lockout_message(ctx, tcti, rc), rc=rc)
    if code in _POLICY_FAILURES and pcrs:
        return TpmPolicyMismatch(
            f"the TPM at {tcti} refused to unseal: the values of {_pcr_names(pcrs)} differ from the ones this slot "
            "was sealed to (a firmware, Secure Boot or boot-loader change). Unlock with another slot (passphrase or "
            f"recovery key), then run 'unlocker rotate tpm2' to re-seal to the current values. (TPM_RC {rc:#x})",
            rc=rc)
    if code in _OUT_OF_MEMORY:
        return TpmError(
            f"the TPM at {tcti} is out of memory for objects or sessions: another program left them loaded. "
            "Use /dev/tpmrm0 (the kernel's resource manager), not /dev/tpm0; restart a software TPM. "
            f"(TPM_RC {rc:#x})", rc=rc)
    return TpmError(f"the TPM at {tcti} refused: {e} (TPM_RC {rc:#x})", rc=rc)


def _pcr_names(pcrs: Sequence[int]) -> str:
    return f"PCR {pcrs[0]}" if len(pcrs) == 1 else "PCRs " + ", ".join(map(str, pcrs))


def _lockout_message(ctx: ESAPI, tcti: str, rc: int) -> str:
    try:
        props = _properties(ctx, TPM2_PT.LOCKOUT_COUNTER, 4)
    except TSS2_Exception:
        props = {}
    tries = props.get(TPM2_PT.LOCKOUT_COUNTER), props.get(TPM2_PT.MAX_AUTH_FAIL)
    interval = props.get(TPM2_PT.LOCKOUT_INTERVAL)
    counted = f" ({tries[0]} failures counted, the limit is {tries[1]})" if None not in tries else ""
    if interval:
        # The TPM forgets one failure per interval of powered-on time: a reboot does not speed it up.
        wait = (f"Wait about {interval} s{_minutes(interval)} with the machine running (the TPM forgets one "
                "failure per interval and then allows one more attempt)")
    else:
        wait = "Have the TPM owner reset it (tpm2_dictionarylockout --clear-lockout)"
    return (f"the TPM at {tcti} is in dictionary-attack lockout after too many wrong passphrases{counted}. "
            f"Do not retry now: every attempt is refused until it recovers. {wait}, or unlock with the "
            f"recovery key. (TPM_RC {rc:#x})")


def _minutes(seconds: int) -> str:
    return f" (about {round(seconds / 60)} min)" if seconds >= 120 else ""


def _not_ours(tcti: str, why: str, rc: int | None = None) -> TpmError:
    code = f" (TPM_RC {rc:#x})" if rc is not None else ""
    return TpmError(
        f"the sealed object does not belong to the TPM at {tcti}: {why}. The TPM was cleared or replaced, the "
        f"keystore was copied from another machine, or the slot is damaged. Unlock with another slot (passphrase "
        f"or recovery key), then re-enroll the TPM.{code}", rc=rc)


# -- building blocks ---------------------------------------------------------------------------------------


def _check_pcrs(pcrs: Sequence[int], bank: str) -> tuple[tuple[int, ...], TPML_PCR_SELECTION]:
    if any(not 0 <= p < _PCR_COUNT for p in pcrs) or len(set(pcrs)) != len(pcrs):
        raise InvalidInput(f"PCR indexes must be distinct numbers from 0 to {_PCR_COUNT - 1}, got {list(pcrs)}")
    ordered = tuple(sorted(pcrs))
    try:
        selection = TPML_PCR_SELECTION.parse(f"{bank}:{','.join(map(str, ordered))}" if ordered else "")
    except (ValueError, TypeError):
        raise InvalidInput(f"{bank!r} is not a PCR bank; use sha256") from None
    return ordered, selection


def _selected(selection: TPML_PCR_SELECTION) -> list[int]:
    """The PCR indexes a selection names, ascending (the order the TPM returns digests in)."""
    indexes = []
    for sel in selection.pcrSelections[: selection.count]:
        bitmap = list(sel.pcrSelect)[: sel.sizeofSelect]
        indexes += [8 * i + bit for i, byte in enumerate(bitmap) for bit in range(8) if byte >> bit & 1]
    return indexes


def _srk_template() -> TPM2B_PUBLIC:
    # The TCG's ECC P-256 storage root key template (unique left empty). noDA: its authorization is the
    # empty password, so counting failures would protect nothing, and a power cut while it is loaded must
    # never count against it.
    attrs = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
             | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.NODA)
    return TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=attrs, nameAlg="sha256")


def _sealed_template(policy: TPM2B_DIGEST) -> TPM2B_PUBLIC:
    # Keyed-hash "sealed data". Not noDA: each wrong authValue counts against the dictionary-attack limit.
    # Neither userWithAuth nor an admin role without policy: the policy is the only way to use it.
    # fixedTPM/fixedParent: it can never be duplicated out of this TPM.
    public = TPMT_PUBLIC(
        type=TPM2_ALG.KEYEDHASH,
        nameAlg=TPM2_ALG.SHA256,
        objectAttributes=TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.ADMINWITHPOLICY,
        authPolicy=policy,
    )
    public.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.NULL
    return TPM2B_PUBLIC(publicArea=public)


def _fill(tpm2b: TPM2B_SIMPLE_OBJECT, data: bytes | bytearray) -> None:
    """Copy a secret straight into a TPM2B's C buffer: the pytss constructors want `bytes`, an extra copy
    nobody could wipe."""
    tpm2b._cdata.size = len(data)
    tpm2b.buffer[:] = data


def _zero_struct(obj: TPM_OBJECT) -> None:
    """Zero a structure in the C memory that pytss and the TSS hand around."""
    wipe(memoryview(ffi.buffer(obj._cdata)))


def _primary(ctx: ESAPI, tcti: str) -> ESYS_TR:
    try:
        handle, *_ = ctx.create_primary(TPM2B_SENSITIVE_CREATE(), _srk_template(), ESYS_TR.OWNER)
    except TSS2_Exception as e:
        if _tpm_code(e) in _AUTH_FAILURES:  # not a wrong passphrase: it must not read like one
            raise TpmError(f"the TPM at {tcti} refused to create its storage key: the owner hierarchy has a "
                           "password; unlocker needs an empty owner authorization, as most TPM software does "
                           f"(TPM_RC {int(e.rc):#x})", rc=int(e.rc)) from None
        raise
    return handle


def _salted_session(ctx: ESAPI, primary: ESYS_TR, kind: TPM2_SE) -> ESYS_TR:
    # Salted with the primary: only the TPM can recover the session key, so the encrypted parameters
    # and the HMAC that proves the authValue are worthless to whoever watches the bus.
    return ctx.start_auth_session(primary, ESYS_TR.NONE, kind, _SESSION_SYM, TPM2_ALG.SHA256)


def _apply_policy(ctx: ESAPI, session: ESYS_TR, selection: TPML_PCR_SELECTION, with_auth: bool) -> None:
    # PolicyPCR with an empty digest takes the PCRs' current values: in a trial session that is the state
    # we seal to; in a real one, a changed PCR shows up at unseal as TPM_RC_POLICY_FAIL.
    if selection.count:
        ctx.policy_pcr(session, TPM2B_DIGEST(), selection)
    if with_auth:
        ctx.policy_auth_value(session)


def _policy_digest(ctx: ESAPI, selection: TPML_PCR_SELECTION, with_auth: bool) -> TPM2B_DIGEST:
    trial = ctx.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, None, TPM2_ALG.SHA256)
    with _loaded(ctx, trial):
        _apply_policy(ctx, trial, selection, with_auth)
        return ctx.policy_get_digest(trial)


def _name(ctx: ESAPI, handle: ESYS_TR) -> bytes:
    return bytes(ctx.tr_get_name(handle))


# -- seal / unseal -----------------------------------------------------------------------------------------


def seal(tcti: str, secret: bytes | bytearray, auth: bytes | bytearray | None, pcrs: Sequence[int],
         bank: str = "sha256") -> Sealed:
    """Seal `secret` to the current values of `pcrs` and, when `auth` is given, to that authValue.

    Raises InvalidInput (bad PCRs or bank), TpmUnavailable, TpmError."""
    if not 0 < len(secret) <= _MAX_SEALED_BYTES:
        raise ValueError(f"a sealed secret holds 1 to {_MAX_SEALED_BYTES} bytes")
    if auth is not None and not 0 < len(auth) <= _MAX_AUTH_BYTES:
        raise ValueError(f"an authValue holds 1 to {_MAX_AUTH_BYTES} bytes")
    ordered, selection = _check_pcrs(pcrs, bank)
    sensitive = TPM2B_SENSITIVE_CREATE()
    try:
        _fill(sensitive.sensitive.data, secret)
        if auth is not None:
            _fill(sensitive.sensitive.userAuth, auth)
        with _connect(tcti) as ctx, _translated(ctx, tcti), _loaded(ctx, _primary(ctx, tcti)) as primary:
            template = _sealed_template(_policy_digest(ctx, selection, auth is not None))
            with _loaded(ctx, _salted_session(ctx, primary, TPM2_SE.HMAC)) as session:
                # DECRYPT: the first command parameter, the share and its authValue, goes over encrypted.
                ctx.trsess_set_attributes(session, TPMA_SESSION.DECRYPT | TPMA_SESSION.CONTINUESESSION)
                private, public, *_ = ctx.create(primary, sensitive, template, session1=session)
            parent_name = _name(ctx, primary)
    finally:
        _zero_struct(sensitive)
    return Sealed(public.marshal(), private.marshal(), ordered, bank, auth is not None, parent_name)


def unseal(tcti: str, sealed: Sealed, auth: bytes | bytearray | None, out: bytearray) -> None:
    """Unseal into `out`, which must be exactly as long as the sealed secret (32 bytes for a share).

    Raises WrongSecret (wrong authValue, counted by the TPM), TpmLockout, TpmPolicyMismatch (PCRs changed),
    TpmError (the object does not belong to this TPM, or another refusal), TpmUnavailable."""
    if sealed.with_auth and not auth:
        raise ValueError("this sealed object needs its authValue")  # an empty one would burn a DA try
    public, private = _unmarshal(sealed, tcti)
    _, selection = _check_pcrs(sealed.pcrs, sealed.bank)
    with _connect(tcti) as ctx, _translated(ctx, tcti, sealed.pcrs), \
            _loaded(ctx, _primary(ctx, tcti)) as primary:
        if sealed.parent_name and _name(ctx, primary) != sealed.parent_name:
            raise _not_ours(tcti, "the TPM's storage key is not the one it was sealed under")
        with _loaded(ctx, _load(ctx, tcti, primary, public, private)) as obj, \
                _loaded(ctx, _salted_session(ctx, primary, TPM2_SE.POLICY)) as session:
            _apply_policy(ctx, session, selection, sealed.with_auth)
            # ENCRYPT: the response parameter, the share, comes back encrypted.
            ctx.trsess_set_attributes(session, TPMA_SESSION.ENCRYPT | TPMA_SESSION.CONTINUESESSION)
            _unseal_into(ctx, tcti, obj, session, auth if sealed.with_auth else None, out)


def _unmarshal(sealed: Sealed, tcti: str) -> tuple[TPM2B_PUBLIC, TPM2B_PRIVATE]:
    try:
        public, used_public = TPM2B_PUBLIC.unmarshal(sealed.public)
        private, used_private = TPM2B_PRIVATE.unmarshal(sealed.private)
    except (TSS2_Exception, ValueError, TypeError):
        raise _not_ours(tcti, "its bytes do not even parse") from None
    if (used_public, used_private) != (len(sealed.public), len(sealed.private)):
        raise _not_ours(tcti, "its bytes have trailing garbage")
    return public, private


def _load(ctx: ESAPI, tcti: str, primary: ESYS_TR, public: TPM2B_PUBLIC, private: TPM2B_PRIVATE) -> ESYS_TR:
    try:
        return ctx.load(primary, private, public)
    except TSS2_Exception as e:
        code = _tpm_code(e)
        # Any refusal of the blob itself (integrity, binding, size, attributes) means it was not made by
        # this TPM's current storage key. Warnings (out of memory, lockout...) are about the TPM instead.
        if code is not None and code & TPM2_RC.WARN != TPM2_RC.WARN:
            raise _not_ours(tcti, "the TPM rejects it", int(e.rc)) from None
        raise


def _unseal_into(ctx: ESAPI, tcti: str, obj: ESYS_TR, session: ESYS_TR, auth: bytes | bytearray | None,
                 out: bytearray) -> None:
    if auth is not None:
        value = TPM2B_AUTH()
        try:
            _fill(value, auth)
            ctx.tr_set_auth(obj, value)
        finally:
            _zero_struct(value)
    try:
        data = ctx.unseal(obj, session1=session)
    finally:
        ctx.tr_set_auth(obj, None)  # overwrite ESAPI's copy of the authValue
    try:
        if len(data) != len(out):
            raise TpmError(f"the sealed object at {tcti} holds {len(data)} bytes where {len(out)} were expected; "
                           "the slot is damaged. Unlock with another slot, then re-enroll the TPM.")
        memoryview(out)[:] = data.buffer  # straight from the TSS's buffer: no immutable copy
    finally:
        _zero_struct(data)


# -- inspection --------------------------------------------------------------------------------------------


def read_pcrs(tcti: str, pcrs: Sequence[int], bank: str = "sha256") -> dict[int, bytes]:
    """Current values of `pcrs` in `bank`. Raises InvalidInput, TpmUnavailable, TpmError."""
    ordered, _ = _check_pcrs(pcrs, bank)
    values: dict[int, bytes] = {}
    with _connect(tcti) as ctx, _translated(ctx, tcti):
        # A TPM returns at most 8 digests per read: ask again for the rest.
        while remaining := [p for p in ordered if p not in values]:
            _, selection, digests = ctx.pcr_read(_check_pcrs(remaining, bank)[1])
            got = _selected(selection)
            if not got:
                raise TpmError(f"the TPM at {tcti} has no active {bank} bank for {_pcr_names(remaining)}")
            values.update(zip(got, (bytes(d) for d in digests), strict=True))
    return values


def policy_matches(tcti: str, sealed: Sealed) -> bool:
    """Whether the current PCR values satisfy the policy `sealed` was created with: a trial session computes
    the policy digest for today's values, compared with the digest in the object. The sealed object is never
    loaded and no authorization is tried, so nothing counts against the dictionary-attack limit.

    Raises InvalidInput, TpmUnavailable, TpmError (the object's bytes do not parse, its parent is not this
    TPM's storage key (a cleared or other TPM), or the TPM fails)."""
    public, _ = _unmarshal(sealed, tcti)
    _, selection = _check_pcrs(sealed.pcrs, sealed.bank)
    with _connect(tcti) as ctx, _translated(ctx, tcti), _loaded(ctx, _primary(ctx, tcti)) as primary:
        # The policy digest depends on the PCRs alone: a cleared TPM would still "match" without this.
        if sealed.parent_name and _name(ctx, primary) != sealed.parent_name:
            raise _not_ours(tcti, "the TPM's storage key is not the one it was sealed under")
        current = _policy_digest(ctx, selection, sealed.with_auth)
    return bytes(current) == bytes(public.publicArea.authPolicy)


def probe(tcti: str) -> TpmInfo:
    """What the TPM says about itself and its dictionary-attack state. Raises TpmUnavailable when nothing
    answers, TpmError when the TPM fails."""
    with _connect(tcti) as ctx, _translated(ctx, tcti):
        manufacturer = _properties(ctx, TPM2_PT.MANUFACTURER, 1)[TPM2_PT.MANUFACTURER]
        state = _properties(ctx, TPM2_PT.PERMANENT, 18)  # PERMANENT .. LOCKOUT_RECOVERY
    return TpmInfo(
        manufacturer=manufacturer.to_bytes(4, "big").decode("ascii", "replace").strip("\0 "),
        lockout_counter=state[TPM2_PT.LOCKOUT_COUNTER],
        max_tries=state[TPM2_PT.MAX_AUTH_FAIL],
        recovery_time=state[TPM2_PT.LOCKOUT_INTERVAL],
        lockout_recovery=state[TPM2_PT.LOCKOUT_RECOVERY],
        in_lockout=bool(state[TPM2_PT.PERMANENT] & TPMA_PERMANENT.INLOCKOUT),
    )


def _properties(ctx: ESAPI, first: int, count: int) -> dict[int, int]:
    _, data = ctx.get_capability(TPM2_CAP.TPM_PROPERTIES, first, count)
    props = data.data.tpmProperties
    return {int(p.property): int(p.value) for p in props.tpmProperty[: props.count]}
