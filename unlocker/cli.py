"""The `unlocker` command. Thin: parse options into typed values, call one function per command, and turn
expected errors into a message and an exit code (0 ok, 1 error, 2 nothing unlocked). Only --debug shows
a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from unlocker import changes, config, control, grants, memory, storage
from unlocker.errors import InvalidInput, TpmError, UnlockerError
from unlocker.formats import Format
from unlocker.keystore import FormatError, Keystore, format_pcrs
from unlocker.memory import wipe
from unlocker.prompt import ask_tty, read_secret_file
from unlocker.run import run
from unlocker.slots import EnrollOptions, Secrets, recovery
from unlocker.unlock import Unlocked

log = logging.getLogger("unlocker")
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


class SlotKind(StrEnum):
    passphrase = "passphrase"  # noqa: S105 (a slot type name, not a password)
    recovery = "recovery"
    tpm2 = "tpm2"
    tpm2_passphrase = "tpm2+passphrase"  # noqa: S105
    systemd_creds_passphrase = "systemd-creds+passphrase"  # noqa: S105


@dataclass(frozen=True)
class Globals:
    keystore: Path
    config: config.Config


def _globals(ctx: typer.Context) -> Globals:
    obj: Globals = ctx.obj
    return obj


# Options shared by several commands, declared once.
PassphraseFile = Annotated[
    str | None, typer.Option("--passphrase-file", help="Read the passphrase (or recovery key) from PATH, - for stdin.")
]
NewPassphraseFile = Annotated[
    str | None, typer.Option("--new-passphrase-file", help="Read the new passphrase from PATH.")
]
Tpm2Device = Annotated[str | None, typer.Option("--tpm2-device", help="TPM TCTI, e.g. device:/dev/tpmrm0.")]
Tpm2Pcrs = Annotated[str | None, typer.Option("--tpm2-pcrs", help="PCRs to bind TPM slots to, e.g. 7 or 0,7.")]
KdfTime = Annotated[int, typer.Option("--kdf-time", help="Argon2id target time in ms.")]
KdfMemory = Annotated[int | None, typer.Option("--kdf-memory", help="Argon2id memory cap in KiB.")]
SlotOption = Annotated[int | None, typer.Option("--slot", help="Only try this keyslot.")]


@app.callback()
def main_options(
    ctx: typer.Context,
    keystore: Annotated[Path, typer.Option("--keystore", help="Keystore file.")] = config.KEYSTORE,
    debug: Annotated[bool, typer.Option("--debug", help="Log debug messages; show tracebacks.")] = False,
) -> None:
    """Keep a data key encrypted at rest; hand it only to the systemd units you grant."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(name)s: %(message)s")
    ctx.obj = Globals(keystore=keystore, config=config.load())


def _tcti(g: Globals, option: str | None) -> str | None:
    """The TPM to use: the option, the config file, or the kernel's resource manager when present."""
    if option or g.config.tpm2_device:
        return option or g.config.tpm2_device
    return config.DEFAULT_TCTI if Path("/dev/tpmrm0").exists() else None


def _pcrs(g: Globals, option: str | None) -> tuple[int, ...]:
    return config.parse_pcr_list(option) if option else g.config.tpm2_pcrs


def _ask(passphrase_file: str | None, prompt: str, confirm: bool = False) -> bytearray:
    if passphrase_file is not None:
        return read_secret_file(passphrase_file)
    return ask_tty(prompt, confirm=confirm)


def _open(g: Globals, passphrase_file: str | None, tcti: str | None, slot: int | None,
          tpm2_only: bool = False) -> Unlocked:
    keystore = storage.read(g.keystore)
    if tpm2_only and tcti is None:
        raise InvalidInput("--tpm2-only needs a TPM: none found; pass --tpm2-device")
    passphrase = None if tpm2_only else _ask(passphrase_file, f"Passphrase or recovery key for {g.keystore}: ")
    try:
        opened = storage.open_from(g.keystore, keystore, Secrets(passphrase, tcti), only_slot=slot)
    finally:
        wipe(passphrase)
    for d in keystore.damaged:
        print(f"unlocker: warning: slot {d.index} is damaged; remove it with 'unlocker wipe-slot {d.index}' "
              "and enroll a new one", file=sys.stderr)
    return opened


def _new_secrets(kind: SlotKind, new_passphrase_file: str | None, tcti: str | None) -> tuple[Secrets, bytearray | None]:
    """The secrets for a new slot, and the recovery key to show (once) when one was generated."""
    if kind in (SlotKind.tpm2, SlotKind.tpm2_passphrase, SlotKind.systemd_creds_passphrase) and tcti is None:
        raise InvalidInput(f"a {kind} slot needs a TPM: none found; pass --tpm2-device")
    if kind == SlotKind.recovery:
        key = recovery.generate()
        shown = recovery.format_key(key)
        wipe(key)
        return Secrets(bytearray(shown), tcti), shown
    if kind == SlotKind.tpm2:
        return Secrets(None, tcti), None
    return Secrets(_ask(new_passphrase_file, "New passphrase: ", confirm=True), tcti), None


def _show_recovery_key(shown: bytearray) -> None:
    sys.stdout.write("Recovery key (shown once; write it down and keep it away from this machine):\n\n    ")
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), bytes(shown) + b"\n\n")
    wipe(shown)


@app.command()
def init(
    ctx: typer.Context,
    passphrase_file: PassphraseFile = None,
    no_tpm2: Annotated[bool, typer.Option("--no-tpm2", help="Passphrase slots only, even with a TPM.")] = False,
    tpm2_device: Tpm2Device = None,
    tpm2_pcrs: Tpm2Pcrs = None,
    kdf_time: KdfTime = 2000,
    kdf_memory: KdfMemory = None,
    recovery_key: Annotated[bool, typer.Option("--recovery-key", help="Also add a recovery-key slot.")] = False,
) -> None:
    """Create the keystore with DEK version 1 and its first keyslot(s)."""
    g = _globals(ctx)
    if g.keystore.exists():
        raise UnlockerError(f"a keystore already exists at {g.keystore}; refusing to overwrite it")
    tcti = None if no_tpm2 else _tcti(g, tpm2_device)
    kind = SlotKind.passphrase
    if tcti is not None:
        from unlocker import tpm

        try:
            tpm.probe(tcti)
            kind = SlotKind.tpm2_passphrase
            print(f"TPM found at {tcti}: the first slot is tpm2+passphrase (PCR {format_pcrs(_pcrs(g, tpm2_pcrs))})")
        except TpmError:
            if tpm2_device:
                raise
            print(f"no TPM answered at {tcti}: the first slot is a passphrase slot")
    options = EnrollOptions(kdf_time_ms=kdf_time, kdf_memory_kib=kdf_memory, pcrs=_pcrs(g, tpm2_pcrs))
    secrets, _ = _new_secrets(kind, passphrase_file, tcti)
    try:
        opened = changes.create(kind.value, secrets, options)
    finally:
        wipe(secrets.passphrase)
    shown = None
    try:
        keystore = opened.keystore
        if recovery_key:
            rsecrets, shown = _new_secrets(SlotKind.recovery, None, None)
            keystore = changes.add_slot(Unlocked(keystore, opened.store_key, 0), "recovery", rsecrets, options)
            wipe(rsecrets.passphrase)
        g.keystore.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        storage.write(g.keystore, keystore, expected_generation=None)
    finally:
        opened.close()
    print(f"created {g.keystore} with DEK version 1 and {len(keystore.slots)} slot(s)")
    if shown is not None:
        _show_recovery_key(shown)


@app.command()
def enroll(
    ctx: typer.Context,
    kind: Annotated[SlotKind, typer.Argument(help="Kind of keyslot to add.")],
    passphrase_file: PassphraseFile = None,
    new_passphrase_file: NewPassphraseFile = None,
    tpm2_device: Tpm2Device = None,
    tpm2_pcrs: Tpm2Pcrs = None,
    kdf_time: KdfTime = 2000,
    kdf_memory: KdfMemory = None,
    slot: SlotOption = None,
) -> None:
    """Add a keyslot. Unlocks with an existing slot first."""
    g = _globals(ctx)
    tcti = _tcti(g, tpm2_device)
    opened = _open(g, passphrase_file, tcti, slot)
    try:
        secrets, shown = _new_secrets(kind, new_passphrase_file, tcti)
        options = EnrollOptions(kdf_time_ms=kdf_time, kdf_memory_kib=kdf_memory, pcrs=_pcrs(g, tpm2_pcrs))
        try:
            keystore = changes.add_slot(opened, kind.value, secrets, options)
        finally:
            wipe(secrets.passphrase)
        storage.write(g.keystore, keystore, opened.keystore.generation)
    finally:
        opened.close()
    added = max(s.index for s in keystore.slots if s.index not in {o.index for o in opened.keystore.slots})
    print(f"added slot {added} ({kind.value})")
    if shown is not None:
        _show_recovery_key(shown)


def _slot_info(keystore: Keystore) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for s in keystore.slots:
        row: dict[str, object] = {"slot": s.index, "type": s.type}
        params = dict(s.params)
        if "argon2id" in params:
            m, t, p = (int(x) for x in params["argon2id"].split(","))
            row["kdf"] = {"algorithm": "argon2id", "memory_kib": m, "iterations": t, "lanes": p}
        if "pcrs" in params:
            row["tpm2"] = {"pcrs": params["pcrs"], "bank": params["bank"]}
        if s.type == "systemd-creds+passphrase":
            row["note"] = "systemd-creds takes no PIN: the TPM does not count wrong passphrases"
        rows.append(row)
    return rows


@app.command()
def slots(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the keyslots (no secrets)."""
    keystore = storage.read(_globals(ctx).keystore)
    rows = _slot_info(keystore)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        detail = ""
        if "kdf" in row:
            k = row["kdf"]
            assert isinstance(k, dict)
            detail += f"  argon2id m={k['memory_kib']}KiB t={k['iterations']} p={k['lanes']}"
        if "tpm2" in row:
            t = row["tpm2"]
            assert isinstance(t, dict)
            detail += f"  pcrs={t['pcrs']} ({t['bank']})"
        if "note" in row:
            detail += f"  ({row['note']})"
        print(f"{row['slot']:>3}  {row['type']:<16}{detail}")


@app.command("wipe-slot")
def wipe_slot(
    ctx: typer.Context,
    index: Annotated[int, typer.Argument(help="Slot to remove.")],
    passphrase_file: PassphraseFile = None,
    tpm2_device: Tpm2Device = None,
    slot: SlotOption = None,
) -> None:
    """Remove a keyslot. Unlock with another slot to prove it works; the last slot is never removed."""
    g = _globals(ctx)
    opened = _open(g, passphrase_file, _tcti(g, tpm2_device), slot)
    try:
        keystore = changes.remove_slot(opened, index)
        storage.write(g.keystore, keystore, opened.keystore.generation)
    finally:
        opened.close()
    print(f"wiped slot {index}; {len(keystore.slots)} slot(s) left")


@app.command()
def unlock(
    ctx: typer.Context,
    check: Annotated[bool, typer.Option("--check", help="Only verify that the secret opens the keystore.")] = False,
    passphrase_file: PassphraseFile = None,
    tpm2_device: Tpm2Device = None,
    slot: SlotOption = None,
    tpm2_only: Annotated[bool, typer.Option("--tpm2-only", help="Try the TPM-only slots, no passphrase.")] = False,
) -> None:
    """With --check: verify a passphrase (exit 2 when it does not open). Without: have the running broker
    unlock again after 'unlocker lock' (it asks through systemd-ask-password)."""
    g = _globals(ctx)
    if not check:
        reply = control.request("unlock", timeout=None)
        print(f"broker unlocked (keystore generation {reply.get('generation')})")
        return
    opened = _open(g, passphrase_file, _tcti(g, tpm2_device), slot, tpm2_only)
    try:
        for dek in opened.keystore.deks:
            wipe(opened.dek(dek.id))  # proves every DEK unwraps, not just the store key
    except FormatError as e:
        raise storage.damaged(g.keystore, str(e)) from None
    finally:
        opened.close()
    print(f"slot {opened.slot_index} opens {g.keystore} (generation {opened.keystore.generation})")


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    tpm2_device: Tpm2Device = None,
) -> None:
    """Show the keystore (generation, slots, DEK versions), the TPM and the running broker."""
    g = _globals(ctx)
    keystore = storage.read(g.keystore)
    info: dict[str, Any] = {
        "keystore": {
            "path": str(g.keystore),
            "id": keystore.id.hex(),
            "generation": keystore.generation,
            "backup": storage.backup_path(g.keystore).exists(),
            "slots": _slot_info(keystore),
            "deks": [
                {"id": d.id, "state": d.state, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(d.created))}
                for d in keystore.deks
            ],
        }
    }
    tcti = _tcti(g, tpm2_device)
    if tcti is not None:
        from unlocker import tpm

        try:
            t = tpm.probe(tcti)
            info["tpm2"] = {"device": tcti, "manufacturer": t.manufacturer, "lockout_counter": t.lockout_counter,
                            "max_tries": t.max_tries, "recovery_time_s": t.recovery_time, "in_lockout": t.in_lockout}
        except TpmError as e:
            info["tpm2"] = {"device": tcti, "error": str(e)}
    try:
        info["broker"] = control.request("status", timeout=5)
        info["broker"].pop("ok", None)
    except UnlockerError as e:
        info["broker"] = {"state": "not running", "error": str(e)}
    if as_json:
        print(json.dumps(info, indent=2))
        return
    ks = info["keystore"]
    print(f"keystore  {ks['path']} (id {ks['id']}, generation {ks['generation']})")
    print(f"backup    {'present' if ks['backup'] else 'none'}")
    print(f"slots     {', '.join(f'{s.index}:{s.type}' for s in keystore.slots)}")
    print(f"deks      {', '.join(f'{d.id}:{d.state}' for d in keystore.deks)}")
    if "tpm2" in info:
        t = info["tpm2"]
        print(f"tpm2      {t['device']}: " + (t["error"] if "error" in t else
              f"{t['manufacturer']}, lockout counter {t['lockout_counter']} of {t['max_tries']}"
              + (" (IN LOCKOUT)" if t["in_lockout"] else "")))
    broker = info["broker"]
    print(f"broker    {broker.get('state')}" + (f" since {_when(broker.get('since'))}" if broker.get("since") else ""))
    for line in broker.get("grants", []):
        print(f"grant     {line}")
    for what in ("deliveries", "denials"):
        counts = broker.get(what) or {}
        if counts:
            print(f"{what:<9} " + ", ".join(f"{unit}: {n}" for unit, n in sorted(counts.items())))


def _when(stamp: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(stamp)))  # type: ignore[arg-type]


@app.command()
def lock(ctx: typer.Context) -> None:
    """Wipe the keys from the running broker. Consumers already running keep their credential; units
    started later fail until 'unlocker unlock'."""
    control.request("lock")
    print("broker locked: keys wiped from memory")


@app.command()
def grant(
    ctx: typer.Context,
    units: Annotated[list[str], typer.Argument(help="Service unit(s), e.g. mariadb.service.")],
    credential: Annotated[str, typer.Option("--credential", help="Credential id in the unit.")] = "dek",
    fmt: Annotated[Format, typer.Option("--format", help="How the key is written.")] = Format.raw,
    no_reload: Annotated[bool, typer.Option("--no-reload", help="Do not run systemctl daemon-reload.")] = False,
) -> None:
    """Allow UNIT to receive the key as credential ID, and write its systemd drop-in."""
    for unit in units:
        grants.check(unit, credential)
    current = grants.load()
    for unit in units:
        new = grants.Grant(unit, credential, fmt)
        current[(unit, credential)] = new
        path = grants.write_dropin(new)
        print(f"granted {unit} credential {credential} ({fmt}); drop-in {path}")
    _save_grants(current, no_reload)
    print(f"the unit reads it at $CREDENTIALS_DIRECTORY/{credential} from its next start")


def _save_grants(current: dict[tuple[str, str], grants.Grant], no_reload: bool) -> None:
    """Write the grant list (the running broker re-reads it) and let systemd see the drop-ins."""
    grants.save(current)
    if not no_reload:
        run(["systemctl", "daemon-reload"])


@app.command()
def revoke(
    ctx: typer.Context,
    unit: Annotated[str, typer.Argument(help="Service unit.")],
    credential: Annotated[str | None, typer.Option("--credential", help="Only this credential id.")] = None,
    no_reload: Annotated[bool, typer.Option("--no-reload", help="Do not run systemctl daemon-reload.")] = False,
) -> None:
    """Remove UNIT's grant(s) and drop-in(s). A running unit keeps what it has until it stops."""
    current = grants.load()
    gone = [g for g in current.values() if g.unit == unit and credential in (None, g.credential)]
    if not gone:
        raise InvalidInput(f"{unit} has no grant" + (f" for credential {credential}" if credential else ""))
    for g in gone:
        grants.remove_dropin(g)
        del current[(g.unit, g.credential)]
    _save_grants(current, no_reload)
    print(f"revoked {', '.join(f'{g.unit} {g.credential}' for g in gone)}; restart the unit to take the key away")


@app.command()
def serve(
    ctx: typer.Context,
    tpm2_device: Tpm2Device = None,
    tries: Annotated[int, typer.Option("--tries", help="Passphrase attempts before giving up.")] = 3,
    passphrase_file: PassphraseFile = None,
    keyname: Annotated[str | None, typer.Option("--keyname", help="Kernel keyring name to cache under.")] = None,
    accept_cached: Annotated[bool, typer.Option("--accept-cached", help="Reuse a cached passphrase.")] = False,
) -> None:
    """The boot service: prompt, unlock, serve credentials, answer the control socket."""
    from unlocker import serve as serve_module
    from unlocker.ask import AskOptions

    g = _globals(ctx)
    cfg = g.config
    options = serve_module.ServeOptions(
        keystore=g.keystore, run_dir=config.RUN_DIR, tcti=_tcti(g, tpm2_device), tries=tries or cfg.tries,
        ask=AskOptions(keyname=keyname or cfg.keyname, accept_cached=accept_cached or cfg.accept_cached),
        passphrase_file=passphrase_file,
    )
    serve_module.serve(options)


@app.command()
def install(
    ctx: typer.Context,
    enable: Annotated[bool, typer.Option("--enable/--no-enable", help="Enable unlocker.service.")] = True,
) -> None:
    """Put unlocker.service, its tmpfiles.d entry and directories in place on this machine."""
    source = installed_units_dir()
    Path("/etc/systemd/system/unlocker.service").write_text((source / "unlocker.service").read_text())
    Path("/etc/tmpfiles.d").mkdir(parents=True, exist_ok=True)
    Path("/etc/tmpfiles.d/unlocker.conf").write_text((source / "unlocker.conf.tmpfiles").read_text())
    run(["systemd-tmpfiles", "--create", "/etc/tmpfiles.d/unlocker.conf"])
    run(["systemctl", "daemon-reload"])
    if enable:
        run(["systemctl", "enable", "unlocker.service"])
    print("installed unlocker.service" + (" (enabled)" if enable else ""))


def installed_units_dir() -> Path:
    """units/ of a source checkout, or the copy the wheel installs under <prefix>/share/unlocker."""
    for candidate in (Path(__file__).resolve().parent.parent / "units", Path(sys.prefix) / "share/unlocker/units"):
        if (candidate / "unlocker.service").exists():
            return candidate
    raise UnlockerError("unit files not found; reinstall unlocker")


@app.command("restore-backup")
def restore_backup(ctx: typer.Context) -> None:
    """Put back the previous keystore generation (kept at every write); the current file is kept as .damaged."""
    g = _globals(ctx)
    keystore = storage.restore_backup(g.keystore)
    print(f"restored generation {keystore.generation} from {storage.backup_path(g.keystore)}")


# The rotation commands live in their own module; importing it registers them on `app`.
from unlocker import cli_rotate  # noqa: E402,F401


def main() -> None:
    if not memory.freed_memory_is_scrubbed():
        argv = [sys.executable, "-m", "unlocker", *sys.argv[1:]]
        os.execve(sys.executable, argv, memory.environment_with_scrubbing())  # noqa: S606
    memory.scrub_freed_memory()
    debug = "--debug" in sys.argv
    try:
        app(prog_name="unlocker", standalone_mode=False)
    except UnlockerError as e:
        if debug:
            traceback.print_exc()
        print(f"unlocker: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:
        print("unlocker: aborted", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.exceptions.TyperException as e:
        show = getattr(e, "show", None)
        show() if show else print(f"unlocker: {e}", file=sys.stderr)
        sys.exit(1)  # usage errors exit 1: exit code 2 means "nothing unlocked"
    except KeyboardInterrupt:
        sys.exit(130)
