"""The verdicts of `unlocker doctor`, pure: facts in, one Check out per question an administrator asks before
trusting the next reboot. No I/O here; service/doctor.py gathers the facts from the machine.

Each check says ok, warning (works today, but something will bite: fix it before you need it) or error
(the next boot, or a consumer's next start, fails), and a fix an administrator can run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    ok = "ok"
    warning = "warning"
    error = "error"


_RANK = {Verdict.ok: 0, Verdict.warning: 1, Verdict.error: 2}


@dataclass(frozen=True)
class Check:
    name: str  # a stable id: "unit", "keystore.mode", "tpm.pcrs", ...
    verdict: Verdict
    message: str
    fix: str = ""  # what to do; empty when the verdict is ok

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "verdict": str(self.verdict), "message": self.message, "fix": self.fix}


def ok(name: str, message: str) -> Check:
    return Check(name, Verdict.ok, message)


def worst(checks: Iterable[Check]) -> Verdict:
    return max((c.verdict for c in checks), key=_RANK.__getitem__, default=Verdict.ok)


def exit_code(checks: Iterable[Check]) -> int:
    """0 all is well, 1 warnings only, 2 at least one error."""
    return _RANK[worst(checks)]


# -- the unit ----------------------------------------------------------------------------------------------


def unit(load_state: str, unit_file_state: str) -> Check:
    if load_state != "loaded":
        return Check("unit", Verdict.error, f"unlocker.service is not installed (systemd says {load_state})",
                     "unlocker install")
    if unit_file_state not in ("enabled", "enabled-runtime", "static", "alias", "linked"):
        return Check("unit", Verdict.error,
                     f"unlocker.service is installed but {unit_file_state}: nothing unlocks the keystore at boot, "
                     "and every granted unit fails to start", "systemctl enable unlocker.service")
    return ok("unit", f"unlocker.service is installed and {unit_file_state}")


# -- the keystore ------------------------------------------------------------------------------------------


def keystore_file(path: str, exists: bool, mode: int | None, uid: int | None) -> Check:
    if not exists:
        return Check("keystore.file", Verdict.error, f"no keystore at {path}",
                     "unlocker init (or unlocker --keystore PATH doctor if it lives elsewhere)")
    assert mode is not None and uid is not None
    if mode & 0o077 or uid != 0:
        # Anyone who can read it can guess passphrases offline at Argon2id speed.
        return Check("keystore.file", Verdict.error,
                     f"{path} is mode {mode & 0o7777:04o}, owner uid {uid}: other users can read it and guess "
                     "passphrases offline", f"chown root:root {path} && chmod 0600 {path}")
    return ok("keystore.file", f"{path} is present, mode 0600, owned by root")


def keystore_parses(path: str, error: str | None, damaged_slots: Sequence[int]) -> Check:
    if error is not None:
        return Check("keystore.parse", Verdict.error, error,
                     "unlocker restore-backup (puts the previous generation back; the damaged file is kept)")
    if damaged_slots:
        listed = ", ".join(map(str, damaged_slots))
        return Check("keystore.parse", Verdict.warning,
                     f"{path} parses, but slot(s) {listed} are damaged and can no longer open it",
                     f"unlocker wipe-slot {damaged_slots[0]}, then enroll a new slot of that kind")
    return ok("keystore.parse", f"{path} parses and passes its checksums")


def backup(path: str, exists: bool) -> Check:
    if not exists:
        return Check("keystore.backup", Verdict.warning,
                     f"no backup beside the keystore ({path}); unlocker keeps one from the first change on, and a "
                     "damaged keystore without one loses the data",
                     "enroll a recovery key (unlocker enroll recovery) or make any change that writes the keystore; "
                     "keep a copy of the keystore off this machine too")
    return ok("keystore.backup", f"the previous generation is kept in {path}")


def slots(types: Sequence[str], needs_tpm: dict[str, bool]) -> Check:
    """At least one slot that opens without this machine's TPM: a cleared TPM, a new motherboard or a
    firmware update must not lock the data away for ever."""
    if not types:
        return Check("slots", Verdict.error, "the keystore has no working slot", "unlocker restore-backup")
    portable = [t for t in types if not needs_tpm[t]]
    if not portable:
        return Check("slots", Verdict.warning,
                     f"every slot ({', '.join(types)}) needs this machine's TPM: a TPM clear, a new motherboard or a "
                     "changed PCR locks the data away", "unlocker enroll recovery (and keep the key off this machine)")
    return ok("slots", f"{len(types)} slot(s); {', '.join(sorted(set(portable)))} open(s) without the TPM")


# -- the TPM -----------------------------------------------------------------------------------------------


def tpm_absent(tcti: str | None, tpm_slots: Sequence[int], error: str | None) -> Check:
    """No TPM answered (or none is configured): fine unless a slot needs one."""
    where = f"at {tcti}" if tcti else "(no /dev/tpmrm0, no [tpm2] device in unlocker.conf)"
    if tpm_slots:
        return Check("tpm", Verdict.error,
                     f"no TPM answers {where}, but slot(s) {', '.join(map(str, tpm_slots))} need it"
                     + (f": {error}" if error else ""),
                     "check the TPM in the firmware setup, or set [tpm2] device in /etc/unlocker/unlocker.conf")
    return ok("tpm", f"no TPM {where}; no slot needs one")


def tpm_lockout(tcti: str, counter: int, max_tries: int, recovery_time: int, in_lockout: bool) -> Check:
    if in_lockout:
        return Check("tpm.lockout", Verdict.error,
                     f"the TPM at {tcti} is in dictionary-attack lockout ({counter} failures, limit {max_tries}): "
                     "TPM slots refuse every passphrase until it recovers",
                     f"wait about {recovery_time} s with the machine on, or unlock with the recovery key; "
                     "the TPM owner can reset it: tpm2_dictionarylockout --clear-lockout")
    if counter:
        return Check("tpm.lockout", Verdict.warning,
                     f"the TPM at {tcti} has counted {counter} failed authorization(s) of {max_tries} allowed: "
                     "a wrong passphrase was tried, or a process was killed while it held a TPM object",
                     f"nothing if you know why; the TPM forgets one every {recovery_time} s")
    return ok("tpm.lockout", f"the TPM at {tcti} counts no failed authorizations (limit {max_tries})")


def tpm_bank(tcti: str, bank: str, pcrs: Sequence[int], error: str | None) -> Check:
    name = f"tpm.bank.{bank}"
    if error is not None:
        return Check(name, Verdict.error, f"cannot read {bank} PCRs {_pcrs(pcrs)} from the TPM at {tcti}: {error}",
                     "enable the bank in the firmware setup, or re-enroll with a bank the TPM has "
                     "(unlocker rotate tpm2)")
    return ok(name, f"the TPM at {tcti} has an active {bank} bank for PCRs {_pcrs(pcrs)}")


def tpm_slot_pcrs(index: int, pcrs: Sequence[int], matches: bool | None, error: str | None = None) -> Check:
    """Whether a TPM slot's policy still matches the current PCR values. None: not checkable (no policy
    digest stored for this slot type)."""
    name = f"tpm.slot{index}"
    if error is not None:
        return Check(name, Verdict.error, f"slot {index}: cannot compare its policy with the TPM: {error}",
                     "unlock with another slot, then re-enroll the TPM (unlocker rotate tpm2)")
    if matches is None:
        return ok(name, f"slot {index}: its PCR policy is kept by systemd-creds and is checked at unlock only")
    if not matches:
        return Check(name, Verdict.error,
                     f"slot {index} was sealed to values of PCRs {_pcrs(pcrs)} that differ from the current ones "
                     "(a firmware, Secure Boot or boot-loader change): the TPM will refuse to unseal it",
                     "unlock with a passphrase or the recovery key, then re-seal: unlocker rotate tpm2")
    return ok(name, f"slot {index} is sealed to the current values of PCRs {_pcrs(pcrs)}")


def _pcrs(pcrs: Sequence[int]) -> str:
    return ",".join(map(str, pcrs)) or "(none)"


# -- grants and drop-ins -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantFacts:
    unit: str
    credential: str
    dropin: str  # its path
    dropin_text: str | None  # None: no drop-in
    expected_text: str  # what 'unlocker grant' writes
    load_state: str  # systemd's LoadState of the unit


def grant(g: GrantFacts) -> list[Check]:
    name = f"grant.{g.unit}.{g.credential}"
    again = f"unlocker grant {g.unit} --credential {g.credential} --format FORMAT"
    checks = []
    if g.dropin_text is None:
        checks.append(Check(name, Verdict.error,
                            f"{g.unit} is granted {g.credential} but has no drop-in {g.dropin}: it never asks for "
                            "the key", f"{again}  (rewrites the drop-in)"))
    elif g.dropin_text != g.expected_text:
        wanted = next(line for line in g.expected_text.splitlines() if line.startswith("LoadCredentialEncrypted="))
        if wanted not in g.dropin_text.splitlines():
            # An older version's drop-in (plain LoadCredential= from credentials.sock): the socket is gone.
            checks.append(Check(name, Verdict.error, f"{g.dropin} does not say {wanted} (written by an older "
                                "unlocker?): the unit fails at CREDENTIALS", f"{again}  (rewrites it)"))
        else:
            checks.append(Check(name, Verdict.warning, f"{g.dropin} differs from what 'unlocker grant' writes",
                                f"{again}  (rewrites it; keep your own settings in another drop-in)"))
    else:
        checks.append(ok(name, f"{g.unit} is granted {g.credential}; its drop-in is in place"))
    if g.load_state == "not-found":
        checks.append(Check(f"unit.{g.unit}", Verdict.warning, f"{g.unit} is granted but no such unit exists",
                            f"install its package, or unlocker revoke {g.unit}"))
    elif g.load_state != "loaded":
        checks.append(Check(f"unit.{g.unit}", Verdict.warning, f"{g.unit} is granted but systemd says it is "
                            f"{g.load_state}", f"systemctl status {g.unit}"))
    return checks


def host_secret(error: str | None) -> Check:
    if error is not None:
        return Check("host-secret", Verdict.error, f"{error}; until then every granted unit fails at CREDENTIALS",
                     "systemd-creds setup")
    return ok("host-secret", "systemd's credential secret is in place: the broker seals each delivery with it")


def orphan_dropin(unit_name: str, credential: str, path: str) -> Check:
    # Its LoadCredentialEncrypted= stays in force: the broker denies the request, and the unit cannot start.
    return Check(f"dropin.{unit_name}.{credential}", Verdict.error,
                 f"{path} asks the broker for {credential}, but {unit_name} has no such grant: the unit will not start",
                 f"unlocker grant {unit_name} --credential {credential}, or: rm {path} && systemctl daemon-reload")


def grant_list(path: str, error: str | None, count: int) -> Check:
    if error is not None:
        # The broker refuses every request while its list does not parse.
        return Check("grants", Verdict.error, f"{error}: the broker refuses every request",
                     f"fix or remove the line in {path}; unlocker grant rewrites the file")
    return ok("grants", f"{count} grant(s) in {path}")


# -- the platform ------------------------------------------------------------------------------------------


def secret_memory(kind: str, kernel: str, cmdline: str) -> Check:
    if kind == "memfd_secret":
        return ok("memory", "memfd_secret(2) works: keys stay out of the kernel's direct map")
    major_minor = tuple(int(x) for x in kernel.split("-")[0].split(".")[:2] if x.isdigit())
    if major_minor < (6, 5) and "secretmem.enable=1" not in cmdline.split():
        why = f"kernel {kernel} turns memfd_secret off unless the command line has secretmem.enable=1"
        fix = "add secretmem.enable=1 to GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub, reboot"
    else:
        why = f"memfd_secret(2) is not available on kernel {kernel}"
        fix = "check CONFIG_SECRETMEM in the kernel's configuration"
    locked = "locked in RAM" if kind == "mlock" else "NOT locked in RAM (raise LimitMEMLOCK=)"
    return Check("memory", Verdict.warning, f"{why}; keys are kept {locked} and out of core dumps instead", fix)


@dataclass(frozen=True)
class OnePromptFacts:
    accept_cached: bool
    keyring_mode: str  # the unit's KeyringMode=
    initramfs_tools: bool  # update-initramfs builds this machine's initrd
    dracut: bool
    hook_installed: bool
    keyscript: str  # the path crypttab must name
    crypttab_volumes: int  # lines in /etc/crypttab
    crypttab_with_keyscript: int  # of those, how many use our keyscript


def one_prompt(f: OnePromptFacts) -> Check:
    if not f.accept_cached:
        if f.crypttab_with_keyscript:
            return Check("one-prompt", Verdict.warning,
                         "/etc/crypttab uses unlocker's keyscript but accept-cached is off: you will be asked twice",
                         "set '[prompt] accept-cached = yes' in /etc/unlocker/unlocker.conf")
        return ok("one-prompt", "accept-cached is off: the boot asks for unlocker's passphrase on its own")
    if f.keyring_mode != "shared":
        return Check("one-prompt", Verdict.warning,
                     f"accept-cached = yes, but unlocker.service has KeyringMode={f.keyring_mode}: it cannot see the "
                     "initrd's cached passphrase and asks again", "add KeyringMode=shared to unlocker.service "
                     "(unlocker install writes the current unit), then systemctl daemon-reload")
    if f.initramfs_tools and not f.dracut and f.crypttab_volumes:
        if not f.hook_installed:
            return Check("one-prompt", Verdict.warning,
                         "accept-cached = yes with initramfs-tools, but its unlocker hook is not installed: the "
                         "initrd caches nothing and you are asked twice", "unlocker install --initramfs")
        if not f.crypttab_with_keyscript:
            return Check("one-prompt", Verdict.warning,
                         f"accept-cached = yes with initramfs-tools, but no volume in /etc/crypttab uses "
                         f"keyscript={f.keyscript}: the initrd caches nothing and you are asked twice",
                         f"add keyscript={f.keyscript} to the options of the root volume in /etc/crypttab, "
                         "then update-initramfs -u")
    return ok("one-prompt", "accept-cached = yes, and the unit and initrd are set up to share one prompt")


def broker(state: str | None, error: str | None) -> Check:
    if state is None:
        return Check("broker", Verdict.warning, f"{error or 'the broker is not running'}: granted units cannot start",
                     "systemctl start unlocker.service (and answer the prompt)")
    if state != "unlocked":
        return Check("broker", Verdict.warning, f"the broker runs but is {state}: granted units cannot start",
                     "unlocker unlock")
    return ok("broker", "the broker runs and is unlocked")
