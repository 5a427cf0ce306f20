"""The rotation commands of `unlocker`: rotate passphrase|tpm2|dek|kek, retire, purge.

The keystore work is in keystore/rotation.py and keystore/changes.py; this module asks for the secrets,
then hands the new generation to a running broker and writes the audit record.
"""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated

import typer

from unlocker.cli.common import (
    Globals,
    KdfMemory,
    KdfTime,
    NewPassphraseFile,
    PassphraseFile,
    SlotKind,
    SlotOption,
    Tpm2Device,
    Tpm2Pcrs,
    app,
    ask_secret,
    globals_of,
    new_secrets,
    open_store,
    pcr_list,
    show_recovery_key,
    tpm_device,
)
from unlocker.errors import InvalidInput, UnlockerError
from unlocker.keystore import storage
from unlocker.keystore.fileformat import Keystore, format_pcrs
from unlocker.memory import wipe
from unlocker.run import run
from unlocker.secret_input import ask_tty, read_secret_file
from unlocker.service import control, grants

# typing.TYPE_CHECKING without importing typing: see cli/main.py.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from unlocker.keystore.slots import EnrollOptions
    from unlocker.keystore.unlock import Unlocked

# The keystore's crypto (changes, rotation, slots, unlock) and the journal are imported inside the
# functions that use them, so that --help and the other commands do not pay for them.


class RotateKind(StrEnum):
    passphrase = "passphrase"  # noqa: S105 (a command name)
    tpm2 = "tpm2"
    dek = "dek"
    kek = "kek"


RestartConsumers = Annotated[
    bool, typer.Option("--restart-consumers", help="Restart the granted units that are running.")
]


@app.command()
def rotate(
    ctx: typer.Context,
    kind: Annotated[RotateKind, typer.Argument(help="What to rotate.")],
    passphrase_file: PassphraseFile = None,
    new_passphrase_file: NewPassphraseFile = None,
    slot_passphrase_file: Annotated[list[str] | None, typer.Option(
        "--slot-passphrase-file", help="kek: N=PATH, the passphrase of slot N (repeatable).")] = None,
    drop_slot: Annotated[list[int] | None, typer.Option(
        "--drop-slot", help="kek: do not re-create slot N (repeatable).")] = None,
    tpm2_device: Tpm2Device = None,
    tpm2_pcrs: Tpm2Pcrs = None,
    kdf_time: KdfTime = 2000,
    kdf_memory: KdfMemory = None,
    slot: SlotOption = None,
    restart_consumers: RestartConsumers = False,
) -> None:
    """passphrase: change the passphrase of the slot you unlock with (--slot N to pick it).
    tpm2: re-seal every TPM slot to the current PCR values (after a firmware or boot-chain update).
    dek: a new DEK version becomes primary; older versions stay available for decryption.
    kek: a new store key; every DEK re-wrapped, every slot re-created (asks for what each slot needs)."""
    from unlocker.keystore.slots import EnrollOptions

    g = globals_of(ctx)
    tcti = tpm_device(g, tpm2_device)
    options = EnrollOptions(kdf_time_ms=kdf_time, kdf_memory_kib=kdf_memory,
                            pcrs=pcr_list(g, tpm2_pcrs, sealing=kind in (RotateKind.tpm2, RotateKind.kek)))
    with storage.locked(g.keystore):
        if kind == RotateKind.kek:
            before, after, opened = _rotate_kek(g, tcti, options, passphrase_file, slot,
                                                dict(_pair(p) for p in slot_passphrase_file or []),
                                                set(drop_slot or []))
        else:
            opened = open_store(g, passphrase_file, tcti, slot)
            before = opened.keystore
            try:
                after = _rotate_one(g, kind, opened, tcti, options, new_passphrase_file)
            except BaseException:
                opened.close()
                raise
        try:
            _record(kind.value, before, after)
            print(f"rotated {kind.value}: keystore generation {before.generation} -> {after.generation}")
            print(_notify_broker(opened.store_key if kind == RotateKind.kek else None))
        finally:
            opened.close()
    if restart_consumers:
        _restart_consumers()


def _pair(text: str) -> tuple[int, str]:
    index, sep, path = text.partition("=")
    if not sep or not index.isdigit():
        raise InvalidInput(f"--slot-passphrase-file takes N=PATH, not {text!r}")
    return int(index), path


def _rotate_one(g: Globals, kind: RotateKind, opened: Unlocked, tcti: str | None, options: EnrollOptions,
                new_passphrase_file: str | None) -> Keystore:
    from unlocker.keystore import changes, rotation
    from unlocker.keystore.slots import Secrets, slot_type
    from unlocker.keystore.unlock import Unlocked

    if kind == RotateKind.passphrase:
        new = ask_secret(new_passphrase_file, "New passphrase: ", confirm=True)
        try:
            return rotation.passphrase(g.keystore, opened, Secrets(new, tcti), options)
        finally:
            wipe(new)
    if kind == RotateKind.dek:
        after = changes.add_dek(opened)
        storage.write(g.keystore, after, opened.keystore.generation, lock=False)
        print(f"DEK {after.primary().id} is now primary; earlier versions stay available as 'active'")
        return after
    # tpm2: re-seal every TPM slot in place (one atomic write: the old sealing or the new, never neither).
    if tcti is None:
        raise InvalidInput("rotate tpm2 needs a TPM: none found; pass --tpm2-device")
    keystore = opened.keystore
    targets = [s for s in keystore.slots if slot_type(s.type).needs_tpm and not slot_type(s.type).needs_network]
    for s in keystore.slots:
        if slot_type(s.type).needs_tpm and slot_type(s.type).needs_network:
            # Re-sealing would need the pin configuration the slot was enrolled with.
            print(f"slot {s.index} ({s.type}) is not re-sealed: wipe it and enroll it again with the new PCRs",
                  file=sys.stderr)
    if not targets:
        raise InvalidInput("the keystore has no TPM slot to re-seal")
    for target in targets:
        secret = None
        if slot_type(target.type).needs_passphrase:
            prompt = f"Passphrase for slot {target.index} ({target.type}): "
            secret = ask_secret(new_passphrase_file, prompt, confirm=True)
        try:
            keystore = changes.replace_slot(Unlocked(keystore, opened.store_key, opened.slot_index),
                                            target.index, target.type, Secrets(secret, tcti), options)
        finally:
            wipe(secret)
    storage.write(g.keystore, keystore, opened.keystore.generation, lock=False, rotate_backup=True)
    print(f"re-sealed slot(s) {', '.join(str(t.index) for t in targets)} to PCR {format_pcrs(options.pcrs)}")
    return keystore


def _rotate_kek(g: Globals, tcti: str | None, options: EnrollOptions, passphrase_file: str | None,
                slot: int | None, slot_files: dict[int, str], drop: set[int]) -> tuple[Keystore, Keystore, Unlocked]:
    from unlocker.keystore import changes
    from unlocker.keystore.slots import Secrets, slot_type
    from unlocker.keystore.unlock import open_keystore

    keystore = storage.read(g.keystore)
    passphrase = ask_secret(passphrase_file, f"Passphrase or recovery key for {g.keystore}: ")
    secrets: dict[int, Secrets] = {}
    shown: list[tuple[int, bytearray]] = []
    try:
        opened = storage.open_from(g.keystore, keystore, Secrets(passphrase, tcti), only_slot=slot)
        for s in keystore.slots:
            kind = slot_type(s.type)
            if s.index in drop:
                continue
            if s.index == opened.slot_index and s.type != "recovery":
                secrets[s.index] = Secrets(bytearray(passphrase) if kind.needs_passphrase else None, tcti)
            elif s.type == "recovery":
                fresh, key = new_secrets(SlotKind.recovery, None, None)
                secrets[s.index] = fresh
                assert key is not None
                shown.append((s.index, key))
            elif kind.needs_passphrase:
                secret = (read_secret_file(slot_files[s.index]) if s.index in slot_files
                          else ask_tty(f"Passphrase for slot {s.index} ({s.type}): "))
                # Prove it is that slot's passphrase before re-creating the slot with it.
                open_keystore(keystore, Secrets(secret, tcti), only_slot=s.index).close()
                secrets[s.index] = Secrets(secret, tcti)
            elif kind.needs_network or s.type == "quorum":
                # A clevis slot would need its pin configuration, a quorum new shares for every holder.
                raise InvalidInput(f"slot {s.index} ({s.type}) cannot be re-created by rotate kek yet: pass "
                                   f"--drop-slot {s.index}, then enroll it again with 'unlocker enroll {s.type}'")
            else:
                if tcti is None:
                    raise InvalidInput(f"slot {s.index} ({s.type}) needs the TPM to be re-sealed; pass "
                                       f"--tpm2-device, or --drop-slot {s.index} to remove it")
                secrets[s.index] = Secrets(None, tcti)
        new = changes.new_store_key(opened, secrets, options)
        opened.close()
        storage.write(g.keystore, new.keystore, keystore.generation, lock=False, rotate_backup=True)
    finally:
        wipe(passphrase, *(x.passphrase for x in secrets.values()))
    for index, key in shown:
        print(f"slot {index} (recovery) has a NEW recovery key; the old one no longer opens anything:")
        show_recovery_key(key)
    return keystore, new.keystore, new


def _restart_consumers() -> None:
    units = sorted({g.unit for g in grants.load().values()})
    if units:
        run(["systemctl", "try-restart", *units])
        print(f"restarted (if running): {', '.join(units)}")


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise InvalidInput("this destroys or withdraws key material: confirm with --yes")
    if input(f"{question} Type 'yes' to go on: ").strip() != "yes":
        raise InvalidInput("nothing was changed")


@app.command()
def retire(
    ctx: typer.Context,
    dek_id: Annotated[int, typer.Argument(help="DEK version to stop delivering.")],
    passphrase_file: PassphraseFile = None,
    tpm2_device: Tpm2Device = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    restart_consumers: RestartConsumers = False,
) -> None:
    """Stop delivering DEK version ID. It stays in the keystore (purge destroys it)."""
    from unlocker.keystore import changes

    g = globals_of(ctx)
    _confirm(f"Units will no longer receive DEK {dek_id} from their next start: data still encrypted "
             f"under it becomes unreadable to them (mariadb: key id {dek_id}).", yes)
    _change_deks(g, passphrase_file, tpm_device(g, tpm2_device), "retire", lambda o: changes.retire_dek(o, dek_id))
    if restart_consumers:
        _restart_consumers()


@app.command()
def purge(
    ctx: typer.Context,
    dek_id: Annotated[int, typer.Argument(help="Retired DEK version to destroy.")],
    passphrase_file: PassphraseFile = None,
    tpm2_device: Tpm2Device = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Destroy a retired DEK version for good. Data still encrypted under it is lost."""
    from unlocker.keystore import changes

    g = globals_of(ctx)
    _confirm(f"DEK {dek_id} will be destroyed: anything still encrypted under it can never be decrypted "
             "again, from this keystore or its backup.", yes)
    _change_deks(g, passphrase_file, tpm_device(g, tpm2_device), "purge", lambda o: changes.purge_dek(o, dek_id),
                 rotate_backup=True)


def _change_deks(g: Globals, passphrase_file: str | None, tcti: str | None, what: str,
                 change: Callable[[Unlocked], Keystore], rotate_backup: bool = False) -> None:
    with storage.locked(g.keystore):
        opened = open_store(g, passphrase_file, tcti, None)
        try:
            after = change(opened)
            storage.write(g.keystore, after, opened.keystore.generation, lock=False, rotate_backup=rotate_backup)
            _record(what, opened.keystore, after)
        finally:
            opened.close()
    print(f"{what}: keystore generation {opened.keystore.generation} -> {after.generation}; "
          f"DEKs now {', '.join(f'{d.id}:{d.state}' for d in after.deks)}")
    print(_notify_broker())


def _notify_broker(store_key: bytearray | None = None) -> str:
    """Have a running broker take the new generation. Returns what happened, for the administrator."""
    try:
        # After `rotate kek` the broker's own store key no longer opens the file: hand it the new one.
        reply = control.request("reload", timeout=30, secret=store_key)
    except control.BrokerUnavailable:
        return "no broker running: the next boot uses the new keys"
    except UnlockerError as e:
        return f"the running broker did not take the new keys ({e}); restart unlocker.service"
    if reply.get("state") == "locked":
        return "the broker is locked: it will use the new keys when unlocked"
    return f"the running broker now serves generation {reply.get('generation')}"


def _record(what: str, before: Keystore, after: Keystore) -> None:
    from unlocker.service import audit  # systemd's journal bindings

    audit.rotated(what, before.generation, after.generation, by=_who())


def _who() -> str:
    """The administrator behind this command, for the audit record."""
    return os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name
