"""The global options as typed values, and the defaults every command resolves the same way. No typer:
the typer app (common.py) and the plain path for scripted reports (reports.py) both build these."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unlocker import config, logs
from unlocker.errors import InvalidInput

# typing.TYPE_CHECKING without importing typing: see cli/main.py.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from unlocker.clevis.http import Timeouts


@dataclass(frozen=True)
class Globals:
    keystore: Path
    config: config.Config


def global_options(keystore: Path, debug: bool) -> Globals:
    """What `unlocker [--keystore PATH] [--debug]` sets up before any command runs."""
    logs.configure(debug)
    return Globals(keystore=keystore, config=config.load())


def tpm_device(g: Globals, option: str | None) -> str | None:
    """The TPM to use: the option, the config file, or the kernel's resource manager when present."""
    if option or g.config.tpm2_device:
        return option or g.config.tpm2_device
    return config.DEFAULT_TCTI if Path("/dev/tpmrm0").exists() else None


def timeouts(total: float, connect: float) -> Timeouts:
    from unlocker.clevis.http import Timeouts

    if total <= 0 or connect <= 0:
        raise InvalidInput("--network-timeout and --connect-timeout must be positive")
    return Timeouts(connect=min(connect, total), total=total)
