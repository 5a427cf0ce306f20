"""What every command module shares: the one typer app, the global options, the option types declared
once, and the helpers that find the TPM, ask for secrets and open the keystore."""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from unlocker import config
from unlocker.cli.options import Globals as Globals
from unlocker.cli.options import global_options
from unlocker.cli.options import timeouts as timeouts
from unlocker.cli.options import tpm_device as tpm_device
from unlocker.cli.reports import slot_info as slot_info
from unlocker.errors import InvalidInput
from unlocker.memory import wipe
from unlocker.secret_input import ask_tty, read_secret_file

if TYPE_CHECKING:
    from unlocker.clevis.http import Timeouts
    from unlocker.keystore.slots import Secrets
    from unlocker.keystore.unlock import Unlocked

# The keystore, clevis and TPM stacks are imported inside the helpers that use them: --help and the
# commands that only talk to the broker should not pay for them.

# rich_markup_mode=None: plain click help. With rich, --help alone imported rich and took half a second.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None)


class SlotKind(StrEnum):
    passphrase = "passphrase"  # noqa: S105 (a slot type name, not a password)
    recovery = "recovery"
    tpm2 = "tpm2"
    tpm2_passphrase = "tpm2+passphrase"  # noqa: S105
    systemd_creds_passphrase = "systemd-creds+passphrase"  # noqa: S105
    clevis = "clevis"
    clevis_passphrase = "clevis+passphrase"  # noqa: S105
    clevis_tpm2 = "clevis+tpm2"
    quorum = "quorum"


TPM_KINDS = (SlotKind.tpm2, SlotKind.tpm2_passphrase, SlotKind.systemd_creds_passphrase, SlotKind.clevis_tpm2)
UNATTENDED_KINDS = (SlotKind.tpm2, SlotKind.clevis, SlotKind.clevis_tpm2)


def globals_of(ctx: typer.Context) -> Globals:
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
NetworkTimeout = Annotated[float, typer.Option(
    "--network-timeout", help="Seconds a clevis slot may take, all its Tang servers asked at once.")]
ConnectTimeout = Annotated[float, typer.Option("--connect-timeout", help="Seconds to connect to one Tang server.")]


@app.callback()
def main_options(
    ctx: typer.Context,
    keystore: Annotated[Path, typer.Option("--keystore", help="Keystore file.")] = config.KEYSTORE,
    debug: Annotated[bool, typer.Option("--debug", help="Log debug messages; show tracebacks.")] = False,
) -> None:
    """Keep a data key encrypted at rest; hand it only to the systemd units you grant."""
    ctx.obj = global_options(keystore, debug)


def pcr_list(g: Globals, option: str | None, sealing: bool) -> tuple[int, ...]:
    """The PCRs from --tpm2-pcrs or the config file; sealing: a TPM slot is about to be made with them."""
    pcrs = config.parse_pcr_list(option) if option is not None else g.config.tpm2_pcrs
    if sealing and not pcrs:
        print("unlocker: warning: PCRs 'none': a TPM slot made now is bound to no PCR, so any boot of this "
              "machine, whatever it runs, can unseal its share", file=sys.stderr)
    return pcrs


def ask_secret(passphrase_file: str | None, prompt: str, confirm: bool = False) -> bytearray:
    if passphrase_file is not None:
        return read_secret_file(passphrase_file)
    return ask_tty(prompt, confirm=confirm)


def open_store(g: Globals, passphrase_file: str | None, tcti: str | None, slot: int | None,
          tpm2_only: bool = False, network: Timeouts | None = None) -> Unlocked:
    from unlocker.clevis.http import Timeouts
    from unlocker.keystore import storage
    from unlocker.keystore.slots import Secrets

    keystore = storage.read(g.keystore)
    if tpm2_only and tcti is None:
        raise InvalidInput("--tpm2-only needs a TPM: none found; pass --tpm2-device")
    passphrase = None if tpm2_only else ask_secret(passphrase_file, f"Passphrase or recovery key for {g.keystore}: ")
    try:
        opened = storage.open_from(g.keystore, keystore, Secrets(passphrase, tcti, network or Timeouts()),
                                   only_slot=slot)
    finally:
        wipe(passphrase)
    for d in keystore.damaged:
        print(f"unlocker: warning: slot {d.index} is damaged; remove it with 'unlocker wipe-slot {d.index}' "
              "and enroll a new one", file=sys.stderr)
    return opened


def new_secrets(kind: SlotKind, new_passphrase_file: str | None, tcti: str | None,
                network: Timeouts | None = None) -> tuple[Secrets, bytearray | None]:
    """The secrets for a new slot, and the recovery key to show (once) when one was generated."""
    from unlocker.clevis.http import Timeouts
    from unlocker.keystore.slots import Secrets, recovery

    if kind in TPM_KINDS and tcti is None:
        raise InvalidInput(f"a {kind} slot needs a TPM: none found; pass --tpm2-device")
    network = network or Timeouts()
    if kind in UNATTENDED_KINDS:
        return Secrets(None, tcti, network), None
    if kind == SlotKind.recovery:
        key = recovery.generate()
        shown = recovery.format_key(key)
        wipe(key)
        return Secrets(bytearray(shown), tcti), shown
    passphrase = ask_secret(new_passphrase_file, "New passphrase: ", confirm=True)
    if kind in TPM_KINDS and recovery.RecoverySlot().accepts(Secrets(passphrase)):
        wipe(passphrase)
        # Such a secret goes to recovery slots, then passphrase slots, never to TPM slots (a recovery key
        # that does not fit must not cost a TPM dictionary-attack try): this slot could not be opened.
        raise InvalidInput("that passphrase is shaped like a recovery key (8 groups of modhex), so it would "
                           f"never be tried on a {kind} slot; choose another")
    return Secrets(passphrase, tcti, network), None


def show_recovery_key(shown: bytearray) -> None:
    sys.stdout.write("Recovery key (shown once; write it down and keep it away from this machine):\n\n    ")
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), bytes(shown) + b"\n\n")
    wipe(shown)
