"""doctor: what to check before trusting the next reboot, each line a verdict and a fix (reports.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from unlocker.cli import reports
from unlocker.cli.common import Tpm2Device, app, globals_of


@app.command()
def doctor(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object: every check and the verdict.")] = False,
    tpm2_device: Tpm2Device = None,
) -> None:
    """Check the unit, keystore, TPM, grants and platform; exit 0 when all is well, 1 with warnings, 2 with
    errors."""
    raise typer.Exit(reports.doctor(globals_of(ctx), as_json, tpm2_device))
