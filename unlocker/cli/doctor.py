"""doctor: what to check before trusting the next reboot, each line a verdict and a fix."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from unlocker.cli.common import Tpm2Device, app, globals_of, tpm_device
from unlocker.service import doctor as doctor_checks
from unlocker.service import health

_MARK = {health.Verdict.ok: "ok", health.Verdict.warning: "WARNING", health.Verdict.error: "ERROR"}


@app.command()
def doctor(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object: every check and the verdict.")] = False,
    tpm2_device: Tpm2Device = None,
) -> None:
    """Check the unit, keystore, TPM, grants and platform; exit 0 when all is well, 1 with warnings, 2 with
    errors."""
    g = globals_of(ctx)
    checks = doctor_checks.examine(g.keystore, tpm_device(g, tpm2_device), g.config)
    if as_json:
        print(json.dumps({"verdict": str(health.worst(checks)), "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        for c in checks:
            print(f"{_MARK[c.verdict]:<8} {c.message}")
            if c.fix:
                print(f"{'':<8} fix: {c.fix}")
    raise typer.Exit(health.exit_code(checks))
