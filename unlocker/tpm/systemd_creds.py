"""The systemd-creds backend: a share kept as a systemd credential encrypted with the TPM.

An alternative to unlocker.tpm.esapi for sites that standardise on systemd's tooling. It is weaker for
tpm2+passphrase: systemd-creds 252 takes no PIN, so the TPM object has no authValue and the TPM does not
count wrong passphrases; guessing is limited by Argon2id alone once the share is out (see docs/TPM.md).

The share travels on pipes only (stdin in, stdout out): never argv, the environment or a file. The
plaintext is read from the pipe straight into the caller's bytearray, which is why this module runs
systemd-creds itself instead of through unlocker.run.run (that hands stdout back as immutable bytes).
"""

from __future__ import annotations

import io
import re
import signal
import subprocess
import threading
from collections.abc import Sequence
from typing import cast

from unlocker.errors import InvalidInput, TpmError, TpmLockout, TpmPolicyMismatch, TpmUnavailable, UnlockerError
from unlocker.memory import wipe
from unlocker.run import ENV, log
from unlocker.tpm import esapi

WITH_KEYS = ("tpm2", "host+tpm2")  # "host" alone does not involve the TPM; "auto" is not a promise
TIMEOUT = 60
# The TSS would add its own log lines to systemd-creds' message; one explanation is enough.
_ENV = {**ENV, "TSS2_LOG": "all+none"}
_NAME = re.compile(r"[A-Za-z0-9_.@+-]{1,255}")


def tpm2_device(tcti: str) -> str:
    """Our TCTI as systemd-creds' --tpm2-device=: a device path, or driver:config, which systemd 252
    hands to libtss2-tcti-<driver> (swtpm:host=127.0.0.1,port=2321). Raises InvalidInput."""
    driver, conf = esapi.parse_tcti(tcti)
    if driver != "device":
        return f"{driver}:{conf}"
    if re.fullmatch(r"/dev/tpm[0-9]+", conf):
        # systemd-creds 252 leaves a session loaded on every decrypt; only the kernel's resource manager
        # cleans up after it. On the raw device the TPM runs out of sessions after three unlocks.
        raise InvalidInput(f"use {conf.replace('/dev/tpm', '/dev/tpmrm')} (the kernel's resource manager) with "
                           f"systemd-creds, not {conf}: systemd-creds leaves a TPM session loaded on every run")
    return conf


def encrypt(tcti: str, name: str, secret: bytes | bytearray, with_key: str = "tpm2", *,
            pcrs: Sequence[int] = (7,)) -> bytes:
    """Encrypt `secret` as credential `name`, bound to the TPM at `tcti` (and to the host key with
    with_key="host+tpm2") and to the current values of `pcrs` (systemd's default: PCR 7).
    Returns the Base64 credential. Raises InvalidInput, TpmUnavailable, TpmError."""
    if with_key not in WITH_KEYS:
        raise InvalidInput(f"--with-key={with_key} is not supported: use one of {', '.join(WITH_KEYS)}")
    if any(not 0 <= p < 24 for p in pcrs):
        raise InvalidInput(f"PCR indexes must be numbers from 0 to 23, got {list(pcrs)}")
    argv = ["systemd-creds", "encrypt", f"--with-key={with_key}", f"--tpm2-device={tpm2_device(tcti)}",
            f"--tpm2-pcrs={'+'.join(map(str, sorted(pcrs)))}", f"--name={_checked(name)}", "-", "-"]
    blob = bytearray()
    _run(argv, tcti, name, stdin=secret, out=blob)
    return bytes(blob)


def decrypt(tcti: str, name: str, blob: bytes, out: bytearray) -> None:
    """Decrypt credential `name` into `out`, which must be exactly as long as the secret.
    Raises TpmPolicyMismatch (PCRs changed), TpmError (another TPM's credential, a damaged one, a wrong
    name), TpmUnavailable."""
    argv = ["systemd-creds", "decrypt", f"--tpm2-device={tpm2_device(tcti)}", f"--name={_checked(name)}",
            "-", "-"]
    _run(argv, tcti, name, stdin=blob, out=out, exact=True)


def _checked(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidInput(f"{name!r} is not a credential name: use letters, digits and _.@+-")
    return name


def _run(argv: list[str], tcti: str, name: str, stdin: bytes | bytearray, out: bytearray,
         exact: bool = False) -> None:
    """Run systemd-creds with `stdin` on its stdin and its stdout read into `out`: appended to, or, with
    `exact`, filled exactly (more or less output is an error, and `out` is wiped)."""
    log.debug("+ %s", " ".join(argv))
    try:
        # bufsize=0: readinto goes from the pipe straight into `out`, through no buffer of Python's.
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=_ENV, bufsize=0)
    except FileNotFoundError:
        raise UnlockerError("systemd-creds is not installed (it comes with systemd 250 or later)") from None
    timer = threading.Timer(TIMEOUT, p.kill)  # a TPM that stops answering must not hang the boot
    timer.start()
    try:
        stdout, stderr = cast(io.RawIOBase, p.stdout), cast(io.RawIOBase, p.stderr)
        with cast(io.RawIOBase, p.stdin) as pipe:
            _write_all(pipe, stdin)  # a few KiB at most: fits in the pipe, so no deadlock with stdout
        length = _read_exact(stdout, out) if exact else _read_all(stdout, out)
        message = stderr.readall() or b""  # short, and never secret: systemd-creds does not print credentials
        returncode = p.wait()
    except BaseException:
        wipe(out)
        p.kill()
        p.wait()
        raise
    finally:
        timer.cancel()
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream is not None:
                stream.close()
    if returncode != 0 or length != len(out):
        wipe(out)
        raise _error(argv[1], tcti, name, returncode, message.decode(errors="replace"), length, len(out))


def _write_all(pipe: io.RawIOBase, data: bytes | bytearray) -> None:
    view, written = memoryview(data), 0
    while written < len(view):
        written += pipe.write(view[written:]) or 0
    view.release()


def _read_exact(pipe: io.RawIOBase, out: bytearray) -> int:
    """Fill `out` from the pipe; return how many bytes came in all (more than len(out) is an error)."""
    view, length = memoryview(out), 0
    while length < len(view) and (n := pipe.readinto(view[length:])):
        length += n
    view.release()
    scratch = bytearray(64)  # excess plaintext is counted, and wiped
    while n := pipe.readinto(scratch):
        length += n
    wipe(scratch)
    return length


def _read_all(pipe: io.RawIOBase, out: bytearray) -> int:
    while chunk := pipe.read(4096):
        out += chunk  # the ciphertext: not secret
    return len(out)


def _error(verb: str, tcti: str, name: str, returncode: int, stderr: str, length: int,
           expected: int) -> UnlockerError:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = lines[-1] if lines else f"exit status {returncode}"
    if returncode == -signal.SIGKILL:
        return TpmUnavailable(f"systemd-creds did not finish within {TIMEOUT} s with the TPM at {tcti}")
    if returncode == 0:
        return TpmError(f"systemd-creds returned {length} bytes for credential {name!r} where {expected} were "
                        "expected: it is not a credential unlocker made")
    if "Failed to initialize TCTI context" in stderr:
        return TpmUnavailable(f"no TPM answers at {tcti} for systemd-creds: {said}")
    if "dictionary attack lockout" in stderr:
        # systemd-creds checks the lockout flag itself and does not even try.
        return TpmLockout(
            f"the TPM at {tcti} is in dictionary-attack lockout, and systemd-creds refuses to use it until it "
            "recovers: wait (see 'unlocker status' for the recovery time) or unlock with the recovery key. "
            f"({said})")
    if "policy digest does not match" in stderr:
        return TpmPolicyMismatch(
            f"systemd-creds refused credential {name!r}: the PCRs it is bound to no longer hold the values it "
            f"was encrypted under ({said}). Unlock with another slot, then run 'unlocker rotate tpm2'.")
    if "integrity check failed" in stderr:
        return TpmError(
            f"credential {name!r} does not belong to the TPM at {tcti}: the TPM was cleared or replaced, the "
            f"keystore was copied from another machine, or the credential is damaged ({said}). Unlock with "
            "another slot.")
    return TpmError(f"systemd-creds {verb} of credential {name!r} failed with the TPM at {tcti}: {said}")
