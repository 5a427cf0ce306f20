"""The TPM, through tpm2-pytss (ESAPI). Everything that touches the TPM is in this module.

- The parent is a primary key created on every call from the standard ECC P-256 "SRK" template, with
  noDA: power cuts and unclean kills must never lock the parent out. No persistent handle is used or
  stored, so no other tool can clobber ours.
- A share is sealed in a keyed-hash object WITHOUT noDA, so every wrong authValue is counted by the
  TPM's dictionary-attack protection. Its policy is PolicyPCR (+ PolicyAuthValue for tpm2+passphrase).
- Sessions are salted with the primary and encrypt parameters, so the share never crosses the bus in
  clear.
- Every transient object and session is flushed on every path: a raw swtpm (no resource manager) keeps
  whatever a client leaves loaded and fails with TPM_RC 0x903 after a few leaked runs.
- A failing authorization is never retried.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

# The TSS logs every TPM error to stderr on its own; we report them ourselves, once, as an error message.
os.environ.setdefault("TSS2_LOG", "all+none")

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_PT, TPM2_RC, TPM2_SE, TPMA_OBJECT, TPMA_SESSION
from tpm2_pytss.types import (
    TPM2B_DIGEST,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_PCR_SELECTION,
    TPMS_SENSITIVE_CREATE,
    TPMT_PUBLIC,
    TPMT_SYM_DEF,
)

from unlocker.errors import InvalidInput, TpmError, TpmLockout, TpmPolicyMismatch, TpmUnavailable, WrongSecret
from unlocker.memory import wipe

_SESSION_SYM = TPMT_SYM_DEF.parse("aes128cfb")
_TPMA_PERMANENT_IN_LOCKOUT = 1 << 9


@dataclass(frozen=True)
class Sealed:
    public: bytes  # marshalled TPM2B_PUBLIC of the sealed keyed-hash object
    private: bytes  # marshalled TPM2B_PRIVATE
    pcrs: tuple[int, ...]
    bank: str
    with_auth: bool  # PolicyAuthValue + PolicyPCR (tpm2+passphrase) or PolicyPCR only (tpm2)


@dataclass(frozen=True)
class TpmInfo:
    manufacturer: str
    lockout_counter: int
    max_tries: int
    recovery_time: int
    lockout_recovery: int
    in_lockout: bool


def parse_tcti(text: str) -> tuple[str, str]:
    """'device:/dev/tpmrm0' or 'swtpm:host=127.0.0.1,port=2321' -> (driver, config)."""
    driver, _, conf = text.partition(":")
    if driver not in ("device", "swtpm", "mssim", "tabrmd") or (driver == "device" and not conf.startswith("/")):
        raise InvalidInput(f"{text!r} is not a TPM TCTI; use device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=N")
    return driver, conf


def _pcr_selection(pcrs: Sequence[int], bank: str) -> TPML_PCR_SELECTION:
    return TPML_PCR_SELECTION.parse(f"{bank}:{','.join(map(str, pcrs))}" if pcrs else "")


def _srk_template() -> TPM2B_PUBLIC:
    attrs = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
             | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.NODA)
    return TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=attrs)


@contextlib.contextmanager
def _esapi(tcti: str) -> Iterator[ESAPI]:
    parse_tcti(tcti)
    try:
        ctx = ESAPI(tcti)
    except TSS2_Exception as e:
        raise TpmUnavailable(f"no TPM answers at {tcti} ({e})", rc=int(e.rc)) from None
    try:
        yield ctx
    finally:
        ctx.close()


@contextlib.contextmanager
def _flushed(ctx: ESAPI, handle: ESYS_TR) -> Iterator[ESYS_TR]:
    try:
        yield handle
    finally:
        with contextlib.suppress(TSS2_Exception):
            ctx.flush_context(handle)


def _primary(ctx: ESAPI) -> ESYS_TR:
    handle, *_ = ctx.create_primary(TPM2B_SENSITIVE_CREATE(), _srk_template(), ESYS_TR.OWNER)
    return handle


def _session(ctx: ESAPI, primary: ESYS_TR, kind: TPM2_SE) -> ESYS_TR:
    return ctx.start_auth_session(primary, ESYS_TR.NONE, kind, _SESSION_SYM, TPM2_ALG.SHA256)


def _apply_policy(ctx: ESAPI, session: ESYS_TR, pcrs: Sequence[int], bank: str, with_auth: bool) -> None:
    if pcrs:
        ctx.policy_pcr(session, TPM2B_DIGEST(), _pcr_selection(pcrs, bank))
    if with_auth:
        ctx.policy_auth_value(session)


def _error(e: TSS2_Exception, tcti: str, pcrs: Sequence[int] = ()) -> TpmError | WrongSecret:
    """What a TPM return code means for the administrator."""
    code = int(e.error)
    if code == TPM2_RC.AUTH_FAIL or code == TPM2_RC.BAD_AUTH:
        return WrongSecret()
    if code == TPM2_RC.LOCKOUT:
        return TpmLockout(
            f"the TPM at {tcti} is in dictionary-attack lockout after too many wrong passphrases "
            f"(TPM_RC {int(e.rc):#x}); wait for it to recover ({_recovery_hint(tcti)}) or unlock with the "
            "recovery key. Do not retry: every attempt during lockout is refused.", rc=int(e.rc))
    if code in (TPM2_RC.POLICY_FAIL, TPM2_RC.PCR_CHANGED, TPM2_RC.VALUE) and pcrs:
        return TpmPolicyMismatch(
            f"the TPM refused: PCR {'+'.join(map(str, pcrs))} no longer hold the values this slot was sealed to "
            "(firmware, Secure Boot or boot-chain change). Unlock with another slot, then run "
            "'unlocker rotate tpm2' to re-seal.", rc=int(e.rc))
    if code in (TPM2_RC.INTEGRITY, TPM2_RC.SIZE, TPM2_RC.INSUFFICIENT, TPM2_RC.BINDING, TPM2_RC.KEY):
        return TpmError(
            f"the sealed object does not belong to the TPM at {tcti} (TPM cleared, another machine's "
            f"keystore, or a damaged slot; TPM_RC {int(e.rc):#x}); unlock with another slot", rc=int(e.rc))
    return TpmError(f"the TPM at {tcti} failed: {e} (TPM_RC {int(e.rc):#x})", rc=int(e.rc))


def _recovery_hint(tcti: str) -> str:
    with contextlib.suppress(TpmError, TSS2_Exception):
        info = probe(tcti)
        return f"about {info.recovery_time} s per failed attempt to forget"
    return "see the TPM's lockout recovery time"


def _sealed_public(policy: TPM2B_DIGEST) -> TPM2B_PUBLIC:
    public = TPMT_PUBLIC(
        type=TPM2_ALG.KEYEDHASH,
        nameAlg=TPM2_ALG.SHA256,
        objectAttributes=TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT,
        authPolicy=policy,
    )
    public.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.NULL
    return TPM2B_PUBLIC(publicArea=public)


def seal(tcti: str, secret: bytes | bytearray, auth: bytes | bytearray | None, pcrs: Sequence[int],
         bank: str = "sha256") -> Sealed:
    """Seal `secret` to the current values of `pcrs` (and to `auth`, when given). Raises TpmError."""
    with _esapi(tcti) as ctx:
        try:
            with _flushed(ctx, _primary(ctx)) as primary:
                with _flushed(ctx, _session(ctx, primary, TPM2_SE.TRIAL)) as trial:
                    _apply_policy(ctx, trial, pcrs, bank, auth is not None)
                    policy = ctx.policy_get_digest(trial)
                sensitive = TPM2B_SENSITIVE_CREATE(
                    TPMS_SENSITIVE_CREATE(userAuth=bytes(auth or b""), data=bytes(secret)))
                with _flushed(ctx, _session(ctx, primary, TPM2_SE.HMAC)) as hmac_session:
                    ctx.trsess_set_attributes(hmac_session, TPMA_SESSION.DECRYPT | TPMA_SESSION.CONTINUESESSION)
                    private, public, *_ = ctx.create(primary, sensitive, _sealed_public(policy),
                                                     session1=hmac_session)
        except TSS2_Exception as e:
            raise _error(e, tcti) from None
    return Sealed(public.marshal(), private.marshal(), tuple(pcrs), bank, auth is not None)


def _unmarshal(sealed: Sealed) -> tuple[TPM2B_PUBLIC, TPM2B_PRIVATE]:
    try:
        public, used_pub = TPM2B_PUBLIC.unmarshal(sealed.public)
        private, used_priv = TPM2B_PRIVATE.unmarshal(sealed.private)
    except (TSS2_Exception, ValueError, TypeError):
        raise TpmError("the slot's sealed object is damaged (it does not unmarshal); use another slot") from None
    if used_pub != len(sealed.public) or used_priv != len(sealed.private):
        raise TpmError("the slot's sealed object is damaged (trailing bytes); unlock with another slot")
    return public, private


def unseal(tcti: str, sealed: Sealed, auth: bytes | bytearray | None, out: bytearray) -> None:
    """Unseal into `out` (len 32). Raises WrongSecret (wrong auth, counted by the TPM), TpmLockout,
    TpmPolicyMismatch (PCRs changed), TpmError (not this TPM's object), TpmUnavailable."""
    public, private = _unmarshal(sealed)
    with _esapi(tcti) as ctx:
        try:
            with _flushed(ctx, _primary(ctx)) as primary:
                with _flushed(ctx, ctx.load(primary, private, public)) as obj:
                    with _flushed(ctx, _session(ctx, primary, TPM2_SE.POLICY)) as session:
                        _apply_policy(ctx, session, sealed.pcrs, sealed.bank, sealed.with_auth)
                        if sealed.with_auth:
                            ctx.tr_set_auth(obj, bytes(auth or b""))
                        ctx.trsess_set_attributes(session, TPMA_SESSION.ENCRYPT | TPMA_SESSION.CONTINUESESSION)
                        data = ctx.unseal(obj, session1=session)
        except TSS2_Exception as e:
            raise _error(e, tcti, sealed.pcrs) from None
    raw = bytes(data)
    try:
        if len(raw) != len(out):
            raise TpmError("the sealed object holds data of the wrong size; unlock with another slot")
        out[:] = raw
    finally:
        wipe(raw)
        with contextlib.suppress(AttributeError, TypeError):
            data.buffer = b"\0" * len(raw)  # the cffi struct's copy


def read_pcrs(tcti: str, pcrs: Sequence[int], bank: str = "sha256") -> dict[int, bytes]:
    with _esapi(tcti) as ctx:
        try:
            _, _, digests = ctx.pcr_read(_pcr_selection(pcrs, bank))
        except TSS2_Exception as e:
            raise _error(e, tcti) from None
    return {pcr: bytes(d) for pcr, d in zip(sorted(pcrs), digests, strict=True)}


def probe(tcti: str) -> TpmInfo:
    """What the TPM says about itself and its dictionary-attack state. Raises TpmUnavailable."""
    with _esapi(tcti) as ctx:
        try:
            _, data = ctx.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.MANUFACTURER, 1)
            manufacturer = int(data.data.tpmProperties.tpmProperty[0].value).to_bytes(4, "big")
            _, data = ctx.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.PERMANENT, 1)
            permanent = int(data.data.tpmProperties.tpmProperty[0].value)
            _, data = ctx.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.LOCKOUT_COUNTER, 4)
        except TSS2_Exception as e:
            raise TpmUnavailable(f"the TPM at {tcti} does not answer: {e}", rc=int(e.rc)) from None
    props = {int(p.property): int(p.value) for p in data.data.tpmProperties.tpmProperty}
    return TpmInfo(
        manufacturer=manufacturer.decode("ascii", "replace").strip("\0 "),
        lockout_counter=props.get(int(TPM2_PT.LOCKOUT_COUNTER), 0),
        max_tries=props.get(int(TPM2_PT.MAX_AUTH_FAIL), 0),
        recovery_time=props.get(int(TPM2_PT.LOCKOUT_INTERVAL), 0),
        lockout_recovery=props.get(int(TPM2_PT.LOCKOUT_RECOVERY), 0),
        in_lockout=bool(permanent & _TPMA_PERMANENT_IN_LOCKOUT),
    )
