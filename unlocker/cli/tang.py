"""Commands for network-bound slots after a Tang key rotation: tang-report (which slots' servers have
rotated their keys) and rebind (bind a slot to the servers' current keys), the analogues of
`clevis luks report` and `clevis luks regen`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from unlocker.cli.common import (
    ConnectTimeout,
    NetworkTimeout,
    PassphraseFile,
    app,
    ask_secret,
    globals_of,
    timeouts,
    tpm_device,
)
from unlocker.cli.common import Tpm2Device as Tpm2DeviceOption
from unlocker.errors import InvalidInput
from unlocker.keystore import storage
from unlocker.keystore.fileformat import parse_argon2, parse_pcrs
from unlocker.memory import wipe

# The clevis stack (JOSE, EC, HTTP) and the keystore's crypto are imported inside the commands, so that
# --help and the other commands do not pay for them.


@app.command("tang-report")
def tang_report(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    network_timeout: NetworkTimeout = 10.0,
    connect_timeout: ConnectTimeout = 3.0,
) -> None:
    """For each clevis slot's Tang servers: is the key it was bound to still advertised? A "rotated" slot
    still opens while the server keeps the hidden key; rebind it before the key is deleted."""
    from unlocker.clevis import pins
    from unlocker.keystore.slots import slot_type

    network = timeouts(network_timeout, connect_timeout)
    keystore = storage.read(globals_of(ctx).keystore)
    rows = [{"slot": s.index, "type": s.type, "servers": pins.report(s.param("jwe"), network)}
            for s in keystore.slots if slot_type(s.type).needs_network]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        for server in row["servers"]:  # type: ignore[attr-defined]
            print(f"slot {row['slot']} ({row['type']}): {server['url']} {server['state']}")
        if any(s["state"] == "rotated" for s in row["servers"]):  # type: ignore[attr-defined]
            print(f"  -> unlocker rebind {row['slot']}")


@app.command()
def rebind(
    ctx: typer.Context,
    index: Annotated[int, typer.Argument(help="The clevis slot to bind to the servers' current keys.")],
    passphrase_file: PassphraseFile = None,
    tpm2_device: Tpm2DeviceOption = None,
    network_timeout: NetworkTimeout = 10.0,
    connect_timeout: ConnectTimeout = 3.0,
) -> None:
    """Re-bind a clevis slot after its Tang servers rotated their keys. The slot opens itself (through the
    servers, which still hold the old keys), then is replaced in one atomic write by a slot bound to the
    current keys, each new advertisement trusted because the old signing key signed it."""
    from unlocker.clevis import pins
    from unlocker.keystore import changes
    from unlocker.keystore.slots import EnrollOptions, Secrets, slot_type

    g = globals_of(ctx)
    network = timeouts(network_timeout, connect_timeout)
    keystore = storage.read(g.keystore)
    try:
        slot = keystore.slot(index)
    except KeyError:
        raise InvalidInput(f"there is no slot {index}") from None
    kind = slot_type(slot.type)
    if not kind.needs_network:
        raise InvalidInput(f"slot {index} is a {slot.type} slot, not a clevis slot")
    tcti = tpm_device(g, tpm2_device) if kind.needs_tpm else None
    passphrase = ask_secret(passphrase_file, f"Passphrase for slot {index}: ") if kind.needs_passphrase else None
    secrets = Secrets(passphrase, tcti, network)
    try:
        opened = storage.open_from(g.keystore, keystore, secrets, only_slot=index)
        try:
            pin, config = pins.rebind_config(slot.param("jwe"), network)
            params = dict(slot.params)
            options = EnrollOptions(
                argon2=parse_argon2(params["argon2id"]) if "argon2id" in params else None,
                pcrs=parse_pcrs(params["pcrs"]) if "pcrs" in params else (7,),
                extra={"pin": pin, "config": json.dumps(config)})
            new = changes.replace_slot(opened, index, slot.type, secrets, options)
            storage.write(g.keystore, new, keystore.generation, rotate_backup=True)
        finally:
            opened.close()
    finally:
        wipe(passphrase)
    print(f"slot {index} ({slot.type}) is bound to the servers' current keys")
