"""`unlocker doctor`: gather the facts from this machine and hand them to the verdicts in health.py.

Read-only: nothing here writes a file, unseals a share or tries an authorization, so running it costs no
TPM dictionary-attack try and changes nothing an administrator would have to undo.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from unlocker import config
from unlocker.errors import TpmError, UnlockerError
from unlocker.keystore import storage
from unlocker.keystore.fileformat import Keystore, parse_pcrs
from unlocker.keystore.slots import slot_type
from unlocker.memory import SecretMemory
from unlocker.run import run
from unlocker.service import control, grants, health
from unlocker.service.health import Check, Verdict

UNIT = "unlocker.service"
CRYPTTAB = Path("/etc/crypttab")


def examine(keystore_path: Path, tcti: str | None, cfg: config.Config) -> list[Check]:
    """Every check, in the order an administrator reads them: the unit, the keystore, the TPM, the grants,
    the platform, the broker."""
    unit = _systemd_properties(UNIT, "LoadState", "UnitFileState", "KeyringMode")
    checks = [health.unit(unit["LoadState"], unit["UnitFileState"])]
    keystore_checks, keystore = _keystore(keystore_path)
    checks += keystore_checks
    checks += tpm_checks(keystore, tcti, cfg.tpm2_pcrs)
    checks += _grants()
    state, memory, error = _broker_status()
    checks.append(health.secret_memory(memory or _memory_kind(), os.uname().release, _read("/proc/cmdline")))
    checks.append(health.one_prompt(_one_prompt(cfg, unit["KeyringMode"])))
    checks.append(health.broker(state, error))
    return checks


# -- systemd -----------------------------------------------------------------------------------------------


def _systemd_properties(unit: str, *names: str) -> dict[str, str]:
    """systemctl show's answer; "unknown (...)" for each property when systemctl cannot answer."""
    try:
        out = run(["systemctl", "show", "-p", ",".join(names), "--", unit], timeout=30).stdout.decode()
    except UnlockerError as e:
        return dict.fromkeys(names, f"unknown ({e})")
    props = dict(line.partition("=")[::2] for line in out.splitlines())
    return {n: props.get(n) or "unknown" for n in names}


# -- the keystore ------------------------------------------------------------------------------------------


def _keystore(path: Path) -> tuple[list[Check], Keystore | None]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return [health.keystore_file(str(path), False, None, None)], None
    checks = [health.keystore_file(str(path), True, st.st_mode, st.st_uid)]
    try:
        keystore = storage.read(path)
    except UnlockerError as e:
        if checks[0].verdict is Verdict.error:  # storage refuses what the file check found: one finding
            return checks, None
        return [*checks, health.keystore_parses(str(path), str(e), ())], None
    checks.append(health.keystore_parses(str(path), None, [d.index for d in keystore.damaged]))
    backup = storage.backup_path(path)
    checks.append(health.backup(str(backup), backup.exists()))
    types = [s.type for s in keystore.slots]
    checks.append(health.slots(types, {t: slot_type(t).needs_tpm for t in types}))
    return checks, keystore


# -- the TPM -----------------------------------------------------------------------------------------------


def tpm_checks(keystore: Keystore | None, tcti: str | None, default_pcrs: Sequence[int] = (7,)) -> list[Check]:
    """Presence, dictionary-attack state, the PCR banks in use, and whether each TPM slot is still sealed
    to the current PCR values."""
    tpm_slots = [s for s in keystore.slots if slot_type(s.type).needs_tpm] if keystore else []
    indexes = [s.index for s in tpm_slots]
    if tcti is None:
        return [health.tpm_absent(None, indexes, None)]
    from unlocker.keystore.slots import tpm2  # the TPM stack, only when there is a TPM to talk to
    from unlocker.tpm import esapi

    try:
        info = esapi.probe(tcti)
    except TpmError as e:
        return [health.tpm_absent(tcti, indexes, str(e))]
    checks = [health.ok("tpm", f"a TPM ({info.manufacturer}) answers at {tcti}"),
              health.tpm_lockout(tcti, info.lockout_counter, info.max_tries, info.recovery_time, info.in_lockout)]
    sealed = [s for s in tpm_slots if s.type in (tpm2.Tpm2Slot.name, tpm2.Tpm2PassphraseSlot.name)]
    # The banks and PCRs the slots use; with no TPM slot yet, the ones a new enrollment would use.
    banks: dict[str, set[int]] = {}
    for s in sealed:
        banks.setdefault(s.param("bank"), set()).update(parse_pcrs(s.param("pcrs")))
    for bank, in_use in (banks or {"sha256": set(default_pcrs)}).items():
        try:
            esapi.read_pcrs(tcti, sorted(in_use), bank)
            checks.append(health.tpm_bank(tcti, bank, sorted(in_use), None))
        except UnlockerError as e:
            checks.append(health.tpm_bank(tcti, bank, sorted(in_use), str(e)))
    for s in tpm_slots:
        pcrs = parse_pcrs(dict(s.params)["pcrs"]) if "pcrs" in dict(s.params) else ()
        if s not in sealed:
            checks.append(health.tpm_slot_pcrs(s.index, pcrs, None))
            continue
        try:
            checks.append(health.tpm_slot_pcrs(s.index, pcrs, tpm2.sealed_to_current_pcrs(s, tcti)))
        except UnlockerError as e:
            checks.append(health.tpm_slot_pcrs(s.index, pcrs, None, str(e)))
    return checks


# -- grants and drop-ins -----------------------------------------------------------------------------------


def _grants() -> list[Check]:
    try:
        granted = grants.load()
    except UnlockerError as e:
        return [health.grant_list(str(grants.GRANTS_FILE), str(e), 0)]
    checks = [health.grant_list(str(grants.GRANTS_FILE), None, len(granted))]
    if granted:
        checks.append(health.host_secret(_host_secret_error()))
    for g in sorted(granted.values(), key=lambda g: (g.unit, g.credential)):
        path = grants.dropin_path(g)
        text = _read(path) if path.exists() else None
        state = _systemd_properties(g.unit, "LoadState")["LoadState"]
        checks += health.grant(health.GrantFacts(g.unit, g.credential, str(path), text, grants.dropin(g), state))
    for path in sorted(grants.UNIT_DIR.glob("*.d/50-unlocker-*.conf")):
        unit, credential = path.parent.name[: -len(".d")], path.stem[len("50-unlocker-"):]
        if (unit, credential) not in granted:
            checks.append(health.orphan_dropin(unit, credential, str(path)))
    return checks


def _host_secret_error() -> str | None:
    """Why the broker could not seal a delivery with systemd's credential secret, or None."""
    from unlocker.service import sealed

    try:
        sealed.check_host_secret()
    except sealed.SealError as e:
        return str(e)
    return None


# -- the platform ------------------------------------------------------------------------------------------


def _broker_status() -> tuple[str | None, str | None, str | None]:
    """(state, the secret memory its keys are in, why it did not answer); state None when not running."""
    try:
        reply = control.request("status", timeout=5)
    except UnlockerError as e:
        return None, None, str(e)
    memory = reply.get("memory")
    return str(reply.get("state")), memory if isinstance(memory, str) else None, None


def _memory_kind() -> str:
    """With no broker to ask, what a process gets here (outside the unit's sandbox)."""
    probe = SecretMemory(4096)
    try:
        return probe.kind
    finally:
        probe.close()


def _one_prompt(cfg: config.Config, keyring_mode: str) -> health.OnePromptFacts:
    volumes = [line.split() for line in _read(CRYPTTAB).splitlines() if line.strip() and not line.startswith("#")]
    ours = f"keyscript={config.KEYSCRIPT}"
    with_keyscript = [v for v in volumes if len(v) > 3 and ours in v[3].split(",")]
    return health.OnePromptFacts(
        accept_cached=cfg.accept_cached, keyring_mode=keyring_mode,
        initramfs_tools=Path("/usr/sbin/update-initramfs").exists(), dracut=Path("/usr/bin/dracut").exists(),
        hook_installed=config.INITRAMFS_HOOK.exists(), keyscript=str(config.KEYSCRIPT),
        crypttab_volumes=len(volumes), crypttab_with_keyscript=len(with_keyscript))


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""
