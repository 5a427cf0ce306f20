"""Commands on the keystore file: init, enroll, slots, wipe-slot, unlock --check, restore-backup."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from unlocker import logs
from unlocker.clevis.http import Timeouts
from unlocker.cli import actions, reports
from unlocker.cli.common import (
    TPM_KINDS,
    ConnectTimeout,
    KdfMemory,
    KdfTime,
    NetworkTimeout,
    NewPassphraseFile,
    PassphraseFile,
    SlotKind,
    SlotOption,
    Tpm2Device,
    Tpm2Pcrs,
    app,
    globals_of,
    new_secrets,
    open_store,
    pcr_list,
    show_recovery_key,
    timeouts,
    tpm_device,
)
from unlocker.errors import InvalidInput, TpmError, UnlockerError, WrongSecret
from unlocker.keystore import storage
from unlocker.keystore.fileformat import FormatError, format_pcrs
from unlocker.memory import wipe

# typing.TYPE_CHECKING without importing typing: see cli/main.py.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from unlocker.keystore.unlock import Unlocked

# The keystore's crypto (changes, slots, unlock) is imported inside the commands that use it, so that
# --help and the other commands do not pay for it.

log = logs.logger()

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
    from unlocker.keystore import changes
    from unlocker.keystore.slots import EnrollOptions
    from unlocker.keystore.unlock import Unlocked

    g = globals_of(ctx)
    if g.keystore.exists():
        raise UnlockerError(f"a keystore already exists at {g.keystore}; refusing to overwrite it")
    tcti = None if no_tpm2 else tpm_device(g, tpm2_device)
    kind = SlotKind.passphrase
    if tcti is not None:
        from unlocker.tpm import esapi

        try:
            esapi.probe(tcti)
            kind = SlotKind.tpm2_passphrase
            pcrs = format_pcrs(pcr_list(g, tpm2_pcrs, sealing=False))
            print(f"TPM found at {tcti}: the first slot is tpm2+passphrase (PCR {pcrs})")
        except TpmError:
            if tpm2_device:
                raise
            print(f"no TPM answered at {tcti}: the first slot is a passphrase slot")
    options = EnrollOptions(kdf_time_ms=kdf_time, kdf_memory_kib=kdf_memory,
                            pcrs=pcr_list(g, tpm2_pcrs, sealing=kind in TPM_KINDS))
    secrets, _ = new_secrets(kind, passphrase_file, tcti)
    try:
        opened = changes.create(kind.value, secrets, options)
    finally:
        wipe(secrets.passphrase)
    shown = None
    try:
        keystore = opened.keystore
        if recovery_key:
            rsecrets, shown = new_secrets(SlotKind.recovery, None, None)
            keystore = changes.add_slot(Unlocked(keystore, opened.store_key, 0), "recovery", rsecrets, options)
            wipe(rsecrets.passphrase)
        storage.make_directory(storage.resolve(g.keystore).parent)
        storage.write(g.keystore, keystore, expected_generation=None)
    finally:
        opened.close()
    print(f"created {g.keystore} with DEK version 1 and {len(keystore.slots)} slot(s)")
    if shown is not None:
        show_recovery_key(shown)


@app.command()
def enroll(
    ctx: typer.Context,
    kind: Annotated[SlotKind, typer.Argument(help="Kind of keyslot to add.")],
    pin: Annotated[str | None, typer.Argument(help="clevis slots: the pin, tang or sss (as for clevis encrypt).")]
    = None,
    pin_config: Annotated[str | None, typer.Argument(
        metavar="[CONFIG]", help="clevis slots: the pin's JSON configuration, with each server's thp.")] = None,
    passphrase_file: PassphraseFile = None,
    new_passphrase_file: NewPassphraseFile = None,
    tpm2_device: Tpm2Device = None,
    tpm2_pcrs: Tpm2Pcrs = None,
    kdf_time: KdfTime = 2000,
    kdf_memory: KdfMemory = None,
    slot: SlotOption = None,
    network_timeout: NetworkTimeout = 10.0,
    connect_timeout: ConnectTimeout = 3.0,
    shares: Annotated[int | None, typer.Option("--shares", help="quorum: how many shares (2..255).")] = None,
    threshold: Annotated[int | None, typer.Option("--threshold", help="quorum: how many open it.")] = None,
) -> None:
    """Add a keyslot. Unlocks with an existing slot first. A clevis slot takes PIN and CONFIG as
    `clevis encrypt` does, e.g. tang '{"url": "http://tang1", "thp": "..."}'. A quorum slot shows each
    of --shares shares once and asks it typed back; any --threshold of them open the keystore."""
    from unlocker.cli import quorum
    from unlocker.keystore import changes
    from unlocker.keystore.slots import EnrollOptions, Secrets

    g = globals_of(ctx)
    if (kind == SlotKind.quorum) != (shares is not None and threshold is not None):
        raise InvalidInput("--shares and --threshold go with 'enroll quorum', and it needs both")
    is_clevis = kind in (SlotKind.clevis, SlotKind.clevis_passphrase, SlotKind.clevis_tpm2)
    if is_clevis and (pin is None or pin_config is None):
        raise InvalidInput(f"'enroll {kind.value}' needs PIN and CONFIG, e.g. tang '{{\"url\": ..., \"thp\": ...}}'")
    if not is_clevis and pin is not None:
        raise InvalidInput(f"'enroll {kind.value}' takes no PIN or CONFIG")
    network = timeouts(network_timeout, connect_timeout)
    tcti = tpm_device(g, tpm2_device)
    opened = open_store(g, passphrase_file, tcti, slot, network=network)
    try:
        if shares is not None and threshold is not None:
            secrets, shown = Secrets(shares=quorum.ceremony(shares, threshold)), None
            extra = {"threshold": str(threshold)}
        else:
            secrets, shown = new_secrets(kind, new_passphrase_file, tcti, network)
            extra = {"pin": pin, "config": pin_config} if pin is not None and pin_config is not None else {}
        options = EnrollOptions(kdf_time_ms=kdf_time, kdf_memory_kib=kdf_memory,
                                pcrs=pcr_list(g, tpm2_pcrs, sealing=kind in TPM_KINDS), extra=extra)
        try:
            keystore = changes.add_slot(opened, kind.value, secrets, options)
        finally:
            wipe(secrets.passphrase, *(secrets.shares or []))
        storage.write(g.keystore, keystore, opened.keystore.generation)
    finally:
        opened.close()
    added = max(s.index for s in keystore.slots if s.index not in {o.index for o in opened.keystore.slots})
    print(f"added slot {added} ({kind.value})")
    if shown is not None:
        show_recovery_key(shown)


@app.command()
def slots(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the keyslots (no secrets)."""
    reports.slots(globals_of(ctx), as_json)


@app.command("wipe-slot")
def wipe_slot(
    ctx: typer.Context,
    index: Annotated[int, typer.Argument(help="Slot to remove.")],
    passphrase_file: PassphraseFile = None,
    tpm2_device: Tpm2Device = None,
    slot: SlotOption = None,
) -> None:
    """Remove a keyslot. Unlock with another slot to prove it works; the last slot is never removed."""
    from unlocker.keystore import changes

    g = globals_of(ctx)
    opened = open_store(g, passphrase_file, tpm_device(g, tpm2_device), slot)
    try:
        keystore = changes.remove_slot(opened, index)
        # The backup would otherwise be the generation that still has the slot, holding the current store
        # key: the wiped secret would keep opening every current DEK through it.
        storage.write(g.keystore, keystore, opened.keystore.generation, rotate_backup=True)
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
    unattended: Annotated[bool, typer.Option(
        "--unattended", help="Try only the slots that need no person (tpm2, clevis); say why each failed.")] = False,
    network_timeout: NetworkTimeout = 10.0,
    connect_timeout: ConnectTimeout = 3.0,
    with_quorum: Annotated[bool, typer.Option(
        "--quorum", help="Open the quorum slot: shares are asked one at a time (stdin lines when not a tty).")]
    = False,
) -> None:
    """With --check: verify a passphrase (exit 2 when it does not open). Without: have the running broker
    unlock again after 'unlocker lock' (it asks through systemd-ask-password)."""
    g = globals_of(ctx)
    if not check:
        actions.unlock()
        return
    network = timeouts(network_timeout, connect_timeout)
    if unattended:
        opened = _open_unattended(g.keystore, tpm_device(g, tpm2_device), network)
    elif with_quorum:
        from unlocker.cli import quorum

        opened = quorum.unlock(storage.read(g.keystore), slot)
    else:
        opened = open_store(g, passphrase_file, tpm_device(g, tpm2_device), slot, tpm2_only, network)
    try:
        for dek in opened.keystore.deks:
            wipe(opened.dek(dek.id))  # proves every DEK unwraps, not just the store key
    except FormatError as e:
        raise storage.damaged(g.keystore, str(e)) from None
    finally:
        opened.close()
    print(f"slot {opened.slot_index} opens {g.keystore} (generation {opened.keystore.generation})")


def _open_unattended(path: Path, tcti: str | None, network: Timeouts) -> Unlocked:
    from unlocker.keystore.slots import Secrets
    from unlocker.keystore.unlock import open_unattended, unattended_slots

    keystore = storage.read(path)
    if not unattended_slots(keystore):
        raise WrongSecret("no slot of this keystore opens without a person (enroll tpm2 or clevis)")
    opened, reasons = open_unattended(keystore, Secrets(None, tcti, network))
    for slot, reason in reasons:
        print(f"unlocker: slot {slot.index} ({slot.type}): {reason}", file=sys.stderr)
    if opened is None:
        raise WrongSecret("no slot opened without a person")
    return opened


@app.command("restore-backup")
def restore_backup(ctx: typer.Context) -> None:
    """Put back the previous keystore generation (kept at every write); the current file is kept as .damaged."""
    g = globals_of(ctx)
    keystore = storage.restore_backup(g.keystore)
    print(f"restored generation {keystore.generation} from {storage.backup_path(g.keystore)}")
