"""`unlocker serve`, the boot service: listen, unlock, report READY=1, serve credentials until stopped.

The sockets are bound before the unlock, so units that ask early are refused (fail closed) rather than
left hanging, and `unlocker status` answers while the prompt waits. After `unlocker lock`, an `unlock`
request on the control socket prompts again without a restart.

A restart (a crash under `Restart=on-abnormal`, `systemctl restart`, a package upgrade) does not prompt:
the store key waits in systemd's fd store (fdstore.py), and the keystore is opened with it again.

Privilege separation (docs/THREAT-MODEL.md): the prompt, the TPM, Tang, Argon2id happen in a short-lived
unlock child (unlock_child.py, started by spawn.py), which hands over the keys in a region of secret memory
and exits. This long-running process never holds a passphrase and never loads tpm2-pytss, pycryptodome or
the CLI: serve() execs a fresh interpreter that imports only what serving needs (about 10 MiB less).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from typing import Any

from systemd import daemon

from unlocker import logs
from unlocker.errors import UnlockerError
from unlocker.keystore import storage
from unlocker.keystore.fileformat import FormatError
from unlocker.keystore.unlock import Unlocked, with_store_key
from unlocker.memory import (
    environment_with_scrubbing,
    freed_memory_is_scrubbed,
    harden_process,
    scrub_freed_memory,
    wipe,
)
from unlocker.run import log
from unlocker.service import audit, grants
from unlocker.service.broker import CONTROL_BACKLOG, Broker, handle_control, listen, raise_descriptor_limit
from unlocker.service.fdstore import FdStore
from unlocker.service.keyring import Keyring
from unlocker.service.options import ServeOptions
from unlocker.service.sealed import SealError
from unlocker.service.spawn import UnlockChild

__all__ = ["ServeOptions", "serve"]


class Stopped(Exception):
    """SIGTERM while the unlock child was asking: it was stopped, and so is the broker."""


def notify(status: str, ready: bool = False) -> None:
    daemon.notify(("READY=1\n" if ready else "") + f"STATUS={status}")


def restore(options: ServeOptions, fd_store: FdStore) -> Unlocked | None:
    """The keystore opened with the store key a previous run left in the fd store, or None (nothing
    stored, or a stale key: removed from the store, and the normal unlock follows)."""
    store_key = fd_store.take()
    if store_key is None:
        return None
    try:
        return with_store_key(storage.read(options.keystore), store_key)
    except (FormatError, UnlockerError) as e:
        log.warning("the store key kept in the fd store does not open %s (%s); it is discarded and the "
                    "keystore unlocked as at boot", options.keystore, e)
        fd_store.discard()
        return None
    finally:
        wipe(store_key)


async def _serve(options: ServeOptions) -> None:
    fd_store = FdStore()
    restored = restore(options, fd_store)  # first: it also closes whatever else systemd passed in
    keyring = Keyring(fd_store)
    broker = Broker(keyring)
    if restored is not None:  # before the sockets exist: a request that arrives is answered, not refused
        try:
            keyring.load(restored)
        finally:
            restored.close()
        broker.state_since, broker.unlocked_by = time.time(), "fd store"
        audit.state_changed("unlocked", f"keystore generation {keyring.generation} restored from the fd store "
                            "after a restart of the broker, without a prompt", source="fd store")
        notify(f"unlocked (keystore generation {keyring.generation}, from the fd store); serving credentials")
    loop = asyncio.get_running_loop()
    options.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    credentials = await listen(options.run_dir / grants.SOCKET_NAME, broker.handle_credential, mode=0o600)
    control = await listen(options.run_dir / "control.sock",
                           lambda r, w: handle_control(broker, r, w), mode=0o600, backlog=CONTROL_BACKLOG)
    unlocking = asyncio.Lock()
    stop = asyncio.Event()

    async def unlock() -> dict[str, object]:
        if unlocking.locked():
            return {"ok": False, "error": "an unlock is already waiting for the passphrase"}
        async with unlocking:
            child = UnlockChild(options, notify)  # from this thread: the child dies with it
            waiting = asyncio.ensure_future(loop.run_in_executor(None, child.result))
            stopping = asyncio.ensure_future(stop.wait())
            either: list[asyncio.Future[Any]] = [waiting, stopping]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if stop.is_set():
                child.stop()
                with contextlib.suppress(UnlockerError):
                    (await waiting).region.close()  # opened just as the SIGTERM came: dropped
                raise Stopped
            handed = waiting.result()
            keyring.take(handed.region, handed.entries, handed.generation)
            source = handed.source
            broker.state_since, broker.unlocked_by = time.time(), source
            audit.state_changed("unlocked", f"keystore generation {keyring.generation} via slot {handed.slot_index} "
                                f"({source})", source=source)
            notify(f"unlocked (keystore generation {keyring.generation}); serving credentials")
            return {"ok": True, "state": "unlocked", "generation": keyring.generation}

    async def control_reload(request: dict[str, object], secret: bytearray | None) -> dict[str, object]:
        """Take a new keystore generation without asking for the passphrase: the broker still holds the
        store key (or, after `rotate kek`, is handed the new one)."""
        if not keyring.unlocked:
            return {"ok": True, "state": "locked"}
        store_key = bytearray(secret) if secret is not None else keyring.store_key()
        try:
            opened = with_store_key(storage.read(options.keystore), store_key)
        except (FormatError, UnlockerError) as e:
            return {"ok": False, "error": str(e)}
        finally:
            wipe(store_key)
        old = keyring.generation
        try:
            keyring.load(opened)
        finally:
            opened.close()
        audit.state_changed("unlocked", f"took keystore generation {keyring.generation} (was {old})")
        notify(f"unlocked (keystore generation {keyring.generation}); serving credentials")
        return {"ok": True, "state": "unlocked", "generation": keyring.generation}

    async def control_unlock(request: dict[str, object], secret: bytearray | None) -> dict[str, object]:
        if keyring.unlocked:
            return {"ok": True, "state": "unlocked", "generation": keyring.generation}
        try:
            return await unlock()
        except UnlockerError as e:
            return {"ok": False, "error": str(e)}

    broker.control_handlers["unlock"] = control_unlock
    broker.control_handlers["reload"] = control_reload
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if not keyring.unlocked:
            await unlock()
        try:
            broker.host_key.get()  # read once now: a broken host secret is named at start, not per request
        except SealError as e:
            log.error("%s; until then every granted unit fails at its CREDENTIALS step", e)
        daemon.notify("READY=1")
        await stop.wait()
    except Stopped:
        log.warning("stopped while the keystore was still locked")
    finally:
        keyring.close()  # SIGTERM is a stop or a restart: the fd store is systemd's to keep or release
        credentials.close()
        control.close()
        daemon.notify("STOPPING=1")


def serve(options: ServeOptions) -> None:
    """Called by the CLI: exec a fresh interpreter that imports only what serving needs (main below), so
    that the long-running broker carries neither typer nor anything the CLI pulled in. The pid stays the
    same, and with it systemd's MainPID, LISTEN_PID and the fd store's descriptors."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        options = dataclasses.replace(options, debug=True)
    argv = [sys.executable, "-m", "unlocker.service.serve", options.to_json()]
    # glibc scrubs freed memory in the broker and its unlock child, however `unlocker serve` was started
    # (the unit sets GLIBC_TUNABLES; a plain call of the CLI does not re-execute to set it).
    env = os.environ if freed_memory_is_scrubbed() else environment_with_scrubbing()
    os.execve(sys.executable, argv, env)  # noqa: S606


def main() -> None:
    """`python -m unlocker.service.serve OPTIONS`: the broker. Errors end it as the CLI would (cli/main.py)."""
    scrub_freed_memory()
    harden_process()
    options = ServeOptions.from_json(sys.argv[1])
    logs.configure(options.debug)  # to stderr, which systemd sends to the journal
    raise_descriptor_limit()
    try:
        asyncio.run(_serve(options))
    except UnlockerError as e:
        print(f"unlocker: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
