"""The small error vocabulary of unlocker.

Every expected failure is an UnlockerError; the CLI turns it into a message and an exit code, and only
--debug shows a traceback. Messages never contain secret material.
"""


class UnlockerError(Exception):
    """An expected failure with a message an administrator can act on."""

    exit_code = 1


class WrongSecret(UnlockerError):
    """Nothing unlocked. Deliberately one message for every cause (wrong passphrase, bad tag, tampered
    slot), so the tool never tells an attacker which part failed."""

    exit_code = 2

    def __init__(self, message: str = "no keyslot opened with that passphrase or key") -> None:
        super().__init__(message)


class KeystoreDamaged(UnlockerError):
    """The keystore file cannot be parsed or fails its integrity check."""

    def __init__(self, path: object, detail: str) -> None:
        super().__init__(f"keystore {path} is damaged: {detail}")
        self.path = path
        self.detail = detail


class KeystoreBusy(UnlockerError):
    """Another unlocker process holds the keystore's write lock."""


class InvalidInput(UnlockerError):
    """A passphrase, option or file the administrator supplied is not acceptable."""


class KdfCostRefused(InvalidInput):
    """A slot asks Argon2id for more memory or work than this machine will spend on one try."""


class TpmError(UnlockerError):
    """The TPM refused or failed. `rc` keeps the TPM return code when there is one."""

    def __init__(self, message: str, rc: int | None = None) -> None:
        super().__init__(message)
        self.rc = rc


class TpmLockout(TpmError):
    """The TPM is in dictionary-attack lockout; retrying only makes it worse."""


class TpmPolicyMismatch(TpmError):
    """The PCR values differ from the ones the slot was sealed to."""


class TpmUnavailable(TpmError):
    """No TPM answered at the configured TCTI."""


class NetworkUnlockFailed(UnlockerError):
    """A network-bound slot could not reach enough servers. `failures` names each server and why (refused,
    timed out, unknown key, bad reply, unreachable)."""

    exit_code = 2

    def __init__(self, message: str, failures: list[str]) -> None:
        super().__init__(message + (": " + "; ".join(failures) if failures else ""))
        self.failures = failures
