"""The everyday changes: lock and unlock (requests to the running broker), grant and revoke (the grant list
and the drop-ins), as plain functions that print. Beside reports.py, and for the same reason: an
administrator's scripts run them in a loop, so cli/plain.py calls them without typer; the typer commands
(service.py, keystore.py, grants.py) call the same functions.
"""

from __future__ import annotations

from unlocker.errors import InvalidInput
from unlocker.service import control

# typing.TYPE_CHECKING without importing typing: see cli/main.py.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from unlocker.cli.options import Globals
    from unlocker.client.formats import Format

# The grant list, its drop-ins and systemctl are imported inside grant and revoke: lock and unlock only
# talk to the broker.


def lock() -> None:
    control.request("lock")
    print("broker locked: keys wiped from memory")


def unlock() -> None:
    """Have the running broker unlock again; it asks through systemd-ask-password, so no secret passes here."""
    reply = control.request("unlock", timeout=None)
    print(f"broker unlocked (keystore generation {reply.get('generation')})")


def grant(units: list[str], credential: str, fmt: Format, no_reload: bool) -> None:
    from unlocker.service import grants

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
    from unlocker.run import run
    from unlocker.service import sealed

    try:
        sealed.check_host_secret()
    except sealed.SealError as e:
        print(f"{e}; running {sealed.SETUP}")
        run(sealed.SETUP.split())
        sealed.check_host_secret()  # a SealError now says what is still wrong


def revoke(unit: str, credential: str | None, no_reload: bool) -> None:
    from unlocker.service import grants

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


def _reload(no_reload: bool) -> None:
    """Let systemd see the drop-ins (the running broker re-reads the grant list by itself)."""
    from unlocker.run import run

    if not no_reload:
        run(["systemctl", "daemon-reload"])


def serve(g: Globals, tpm2_device: str | None = None, tries: int = 3, passphrase_file: str | None = None,
          keyname: str | None = None, accept_cached: bool = False, network_timeout: float = 10.0,
          connect_timeout: float = 3.0) -> None:
    """`unlocker serve`, the boot service: exec the broker (service/serve.py). On the plain path (the unit
    runs it without options) it costs an interpreter start less than through typer: the boot waits for it."""
    from dataclasses import replace

    from unlocker import config
    from unlocker.cli.options import timeouts, tpm_device
    from unlocker.service.options import AskOptions, ServeOptions
    from unlocker.service.serve import serve as exec_broker

    cfg = g.config
    options = ServeOptions(
        keystore=g.keystore, run_dir=config.RUN_DIR, tcti=tpm_device(g, tpm2_device), tries=tries or cfg.tries,
        ask=AskOptions(cached_keyname=replace(cfg, keyname=keyname or cfg.keyname,
                                              accept_cached=accept_cached or cfg.accept_cached).cached_keyname),
        passphrase_file=passphrase_file, network=timeouts(network_timeout, connect_timeout),
    )
    exec_broker(options)
