"""Commands on the boot service: status, lock, serve, install."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from unlocker import config, logs
from unlocker.cli import actions, reports
from unlocker.cli.common import (
    ConnectTimeout,
    NetworkTimeout,
    PassphraseFile,
    Tpm2Device,
    app,
    globals_of,
)
from unlocker.errors import UnlockerError
from unlocker.run import run

log = logs.logger()

@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    tpm2_device: Tpm2Device = None,
) -> None:
    """Show the keystore (generation, slots, DEK versions), the TPM and the running broker."""
    reports.status(globals_of(ctx), as_json, tpm2_device)


@app.command()
def lock(ctx: typer.Context) -> None:
    """Wipe the keys from the running broker. Consumers already running keep their credential; units
    started later fail until 'unlocker unlock'."""
    actions.lock()


@app.command()
def serve(
    ctx: typer.Context,
    tpm2_device: Tpm2Device = None,
    tries: Annotated[int, typer.Option("--tries", help="Passphrase attempts before giving up.")] = 3,
    passphrase_file: PassphraseFile = None,
    keyname: Annotated[str | None, typer.Option(
        "--keyname", help="Kernel keyring key the initrd cached the passphrase under (default cryptsetup).")] = None,
    accept_cached: Annotated[bool, typer.Option(
        "--accept-cached", help="Try the initrd's cached passphrase once before prompting (never writes it).")] = False,
    network_timeout: NetworkTimeout = 10.0,
    connect_timeout: ConnectTimeout = 3.0,
) -> None:
    """The boot service: try the unattended slots (tpm2, clevis) while prompting, unlock, serve
    credentials, answer the control socket."""
    actions.serve(globals_of(ctx), tpm2_device, tries, passphrase_file, keyname, accept_cached,
                  network_timeout, connect_timeout)


@app.command()
def install(
    ctx: typer.Context,
    enable: Annotated[bool, typer.Option("--enable/--no-enable", help="Enable unlocker.service.")] = True,
    initramfs: Annotated[bool, typer.Option(
        "--initramfs", help="Also set up one prompt at boot for LUKS and unlocker (initramfs-tools hook).")] = False,
) -> None:
    """Put unlocker.service, its tmpfiles.d entry, journal catalog and directories in place on this machine."""
    if config.PACKAGED:
        _packaged(enable, initramfs)
        return
    source = installed_data_dir()
    Path("/etc/systemd/system/unlocker.service").write_text((source / "units/unlocker.service").read_text())
    Path("/etc/tmpfiles.d").mkdir(parents=True, exist_ok=True)
    Path("/etc/tmpfiles.d/unlocker.conf").write_text((source / "units/unlocker.conf.tmpfiles").read_text())
    run(["systemd-tmpfiles", "--create", "/etc/tmpfiles.d/unlocker.conf"])
    # journalctl -x explains unlocker's records only from a catalog in one of its own directories.
    CATALOG.parent.mkdir(parents=True, exist_ok=True)
    CATALOG.write_text((source / "catalog/unlocker.catalog").read_text())
    run(["journalctl", "--update-catalog"])
    # In a chroot or an image build there is no running systemd to reload; enabling works offline.
    if Path("/run/systemd/system").is_dir():
        run(["systemctl", "daemon-reload"])
    if enable:
        run(["systemctl", "enable", "unlocker.service"])
    print("installed unlocker.service" + (" (enabled)" if enable else ""))
    if initramfs:
        _install_initramfs(source / "initramfs")


# journalctl reads catalogs from /usr/lib/systemd/catalog (a package's) and this directory.
CATALOG = Path("/usr/local/lib/systemd/catalog/unlocker.catalog")


def _packaged(enable: bool, initramfs: bool) -> None:
    """The Debian package installed the unit, the tmpfiles.d entry, the catalog and the initramfs-tools
    hook, and keeps them up to date: a copy under /etc would shadow its unit on every upgrade."""
    print("unlocker.service, its tmpfiles.d entry, the journal catalog and the initramfs-tools hook come with "
          "the Debian package: nothing to copy")
    if enable:
        run(["systemctl", "enable", "unlocker.service"])
        print("enabled unlocker.service")
    if initramfs:
        print(f"in /etc/crypttab, add keyscript={config.KEYSCRIPT} to the options of the volume opened at boot, "
              "then run update-initramfs -u")


def _install_initramfs(source: Path) -> None:
    """initramfs-tools: the hook and the keyscript, then update-initramfs. dracut needs nothing:
    systemd-cryptsetup in its initrd caches the passphrase by itself (initramfs/README.md)."""
    if Path("/usr/share/initramfs-tools/hook-functions").exists():
        for src, dst in ((source / "initramfs-tools/hooks/unlocker", config.INITRAMFS_HOOK),
                         (source / "initramfs-tools/keyscript", config.KEYSCRIPT)):
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
            dst.chmod(0o755)
        print(f"installed {config.INITRAMFS_HOOK} and {config.KEYSCRIPT}")
        print(f"in /etc/crypttab, add keyscript={config.KEYSCRIPT} to the options of the volume opened at boot")
        run(["update-initramfs", "-u"])
        print("rebuilt the initramfs (update-initramfs -u)")
    if Path("/usr/bin/dracut").exists():
        print("dracut: nothing to install; systemd-cryptsetup in the initrd caches the passphrase for 150 s")
    print("then set, in /etc/unlocker/unlocker.conf: [prompt] accept-cached = yes  (initramfs/README.md: "
          "one shared passphrase makes the LUKS header an offline test for it)")


def installed_data_dir() -> Path:
    """A source checkout (units/, initramfs/), or the copy the wheel installs under <prefix>/share/unlocker."""
    for candidate in (Path(__file__).resolve().parents[2], Path(sys.prefix) / "share/unlocker"):
        if (candidate / "units/unlocker.service").exists():
            return candidate
    raise UnlockerError("unit files not found; reinstall unlocker")
