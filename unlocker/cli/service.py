"""Commands on the boot service: status, lock, serve, install."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from unlocker import config
from unlocker.cli.common import (
    ConnectTimeout,
    NetworkTimeout,
    PassphraseFile,
    Tpm2Device,
    app,
    globals_of,
    slot_info,
    timeouts,
    tpm_device,
)
from unlocker.errors import TpmError, UnlockerError
from unlocker.keystore import storage
from unlocker.run import run
from unlocker.service import control

log = logging.getLogger("unlocker")

@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    tpm2_device: Tpm2Device = None,
) -> None:
    """Show the keystore (generation, slots, DEK versions), the TPM and the running broker."""
    g = globals_of(ctx)
    keystore = storage.read(g.keystore)
    info: dict[str, Any] = {
        "keystore": {
            "path": str(g.keystore),
            "id": keystore.id.hex(),
            "generation": keystore.generation,
            "backup": storage.backup_path(g.keystore).exists(),
            "slots": slot_info(keystore),
            "deks": [
                {"id": d.id, "state": d.state, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(d.created))}
                for d in keystore.deks
            ],
        }
    }
    tcti = tpm_device(g, tpm2_device)
    if tcti is not None:
        from unlocker.tpm import esapi

        try:
            t = esapi.probe(tcti)
            info["tpm2"] = {"device": tcti, "manufacturer": t.manufacturer, "lockout_counter": t.lockout_counter,
                            "max_tries": t.max_tries, "recovery_time_s": t.recovery_time, "in_lockout": t.in_lockout}
        except TpmError as e:
            info["tpm2"] = {"device": tcti, "error": str(e)}
    try:
        info["broker"] = control.request("status", timeout=5)
        info["broker"].pop("ok", None)
    except UnlockerError as e:
        info["broker"] = {"state": "not running", "error": str(e)}
    if as_json:
        print(json.dumps(info, indent=2))
        return
    ks = info["keystore"]
    print(f"keystore  {ks['path']} (id {ks['id']}, generation {ks['generation']})")
    print(f"backup    {'present' if ks['backup'] else 'none'}")
    print(f"slots     {', '.join(f'{s.index}:{s.type}' for s in keystore.slots)}")
    print(f"deks      {', '.join(f'{d.id}:{d.state}' for d in keystore.deks)}")
    if "tpm2" in info:
        t = info["tpm2"]
        print(f"tpm2      {t['device']}: " + (t["error"] if "error" in t else
              f"{t['manufacturer']}, lockout counter {t['lockout_counter']} of {t['max_tries']}"
              + (" (IN LOCKOUT)" if t["in_lockout"] else "")))
    broker = info["broker"]
    print(f"broker    {broker.get('state')}" + (f" since {_when(broker.get('since'))}" if broker.get("since") else "")
          + (f" by {broker['unlocked_by']}" if broker.get("unlocked_by") else ""))
    if broker.get("memory"):
        print(f"memory    {MEMORY_NOTES.get(broker['memory'], broker['memory'])}")
    if broker.get("fd_store"):
        print(f"restart   fd store {broker['fd_store']}")
    for line in broker.get("grants", []):
        print(f"grant     {line}")
    for what in ("deliveries", "denials"):
        counts = broker.get(what) or {}
        if counts:
            print(f"{what:<9} " + ", ".join(f"{unit}: {n}" for unit, n in sorted(counts.items())))


# Which protection the broker's keys have, and what to do when it is not the best one.
MEMORY_NOTES = {
    "memfd_secret": "memfd_secret: keys outside the kernel's direct map, never swapped or dumped",
    "mlock": "mlock: keys locked in RAM and left out of core dumps; memfd_secret is off "
             "(before Linux 6.5 add secretmem.enable=1 to the kernel command line)",
    "unlocked": "not locked in RAM (RLIMIT_MEMLOCK too low: raise LimitMEMLOCK=); left out of core dumps",
}


def _when(stamp: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(stamp)))  # type: ignore[arg-type]


@app.command()
def lock(ctx: typer.Context) -> None:
    """Wipe the keys from the running broker. Consumers already running keep their credential; units
    started later fail until 'unlocker unlock'."""
    control.request("lock")
    print("broker locked: keys wiped from memory")


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
    from unlocker.service import serve as serve_module
    from unlocker.service.ask import AskOptions

    g = globals_of(ctx)
    cfg = g.config
    options = serve_module.ServeOptions(
        keystore=g.keystore, run_dir=config.RUN_DIR, tcti=tpm_device(g, tpm2_device), tries=tries or cfg.tries,
        ask=AskOptions(cached_keyname=replace(cfg, keyname=keyname or cfg.keyname,
                                              accept_cached=accept_cached or cfg.accept_cached).cached_keyname),
        passphrase_file=passphrase_file, network=timeouts(network_timeout, connect_timeout),
    )
    serve_module.serve(options)


@app.command()
def install(
    ctx: typer.Context,
    enable: Annotated[bool, typer.Option("--enable/--no-enable", help="Enable unlocker.service.")] = True,
    initramfs: Annotated[bool, typer.Option(
        "--initramfs", help="Also set up one prompt at boot for LUKS and unlocker (initramfs-tools hook).")] = False,
) -> None:
    """Put unlocker.service, its tmpfiles.d entry, journal catalog and directories in place on this machine."""
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
