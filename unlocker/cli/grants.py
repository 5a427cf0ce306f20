"""grant and revoke: which units receive the key, as which credential."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from unlocker.cli.common import (
    app,
)
from unlocker.client.formats import Format
from unlocker.errors import InvalidInput
from unlocker.run import run
from unlocker.service import grants

log = logging.getLogger("unlocker")

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
    added = [grants.Grant(unit, credential, fmt) for unit in units]
    current.update({(g.unit, g.credential): g for g in added})
    # The list first: save() refuses a list that would not read back, and then no drop-in is written.
    grants.save(current)
    for g in added:
        print(f"granted {g.unit} credential {credential} ({fmt}); drop-in {grants.write_dropin(g)}")
    _ensure_host_secret()
    _reload(no_reload)
    print(f"the unit reads it at $CREDENTIALS_DIRECTORY/{credential} from its next start")


def _ensure_host_secret() -> None:
    """The broker seals every delivery with systemd's credential secret (service/sealed.py), which systemd
    makes only when first asked to: `systemd-creds setup` makes it (or replaces one that names another
    machine), and the broker, whose /var is read-only, picks it up at its next delivery."""
    from unlocker.service import sealed

    try:
        sealed.HostKey.read()
    except sealed.SealError as e:
        log.info("%s; running %s", e, sealed.SETUP)
        run(sealed.SETUP.split())
        sealed.HostKey.read()  # a SealError now says what is still wrong


def _reload(no_reload: bool) -> None:
    """Let systemd see the drop-ins (the running broker re-reads the grant list by itself)."""
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
    grants.save(current)
    _reload(no_reload)
    print(f"revoked {', '.join(f'{g.unit} {g.credential}' for g in gone)}; restart the unit to take the key away")
