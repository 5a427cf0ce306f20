"""grant and revoke: which units receive the key, as which credential."""

from __future__ import annotations

from typing import Annotated

import typer

from unlocker.cli import actions
from unlocker.cli.common import app
from unlocker.client.formats import Format


@app.command()
def grant(
    ctx: typer.Context,
    units: Annotated[list[str], typer.Argument(help="Service unit(s), e.g. mariadb.service.")],
    credential: Annotated[str, typer.Option("--credential", help="Credential id in the unit.")] = "dek",
    fmt: Annotated[Format, typer.Option("--format", help="How the key is written.")] = Format.raw,
    no_reload: Annotated[bool, typer.Option("--no-reload", help="Do not run systemctl daemon-reload.")] = False,
) -> None:
    """Allow UNIT to receive the key as credential ID, and write its systemd drop-in."""
    actions.grant(units, credential, fmt, no_reload)


@app.command()
def revoke(
    ctx: typer.Context,
    unit: Annotated[str, typer.Argument(help="Service unit.")],
    credential: Annotated[str | None, typer.Option("--credential", help="Only this credential id.")] = None,
    no_reload: Annotated[bool, typer.Option("--no-reload", help="Do not run systemctl daemon-reload.")] = False,
) -> None:
    """Remove UNIT's grant(s) and drop-in(s). A running unit keeps what it has until it stops."""
    actions.revoke(unit, credential, no_reload)
