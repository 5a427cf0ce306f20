"""`unlocker serve`, the boot service: listen, unlock, report READY=1, serve credentials until stopped.

The sockets are bound before the unlock, so units that ask early are refused (fail closed) rather than
left hanging, and `unlocker status` answers while the prompt waits. After `unlocker lock`, an `unlock`
request on the control socket prompts again without a restart.

A restart (a crash under `Restart=on-abnormal`, `systemctl restart`, a package upgrade) does not prompt:
the store key waits in systemd's fd store (fdstore.py), and the keystore is opened with it again.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from systemd import daemon

from unlocker.clevis.http import Timeouts
from unlocker.errors import UnlockerError, WrongSecret
from unlocker.keystore import storage
from unlocker.keystore.fileformat import FormatError
from unlocker.keystore.slots import Secrets
from unlocker.keystore.unlock import Unlocked, unattended_slots, with_store_key
from unlocker.memory import harden_process, wipe
from unlocker.run import log
from unlocker.secret_input import read_secret_file
from unlocker.service import ask, audit, cached_passphrase
from unlocker.service.broker import CONTROL_BACKLOG, Broker, handle_control, listen, raise_descriptor_limit
from unlocker.service.fdstore import FdStore
from unlocker.service.keyring import Keyring
from unlocker.service.quorum_prompt import SHARE_TIMEOUT_S, QuorumAtPrompt
from unlocker.service.unattended import Backoff, Unattended


@dataclass(frozen=True)
class ServeOptions:
    keystore: Path
    run_dir: Path
    tcti: str | None
    tries: int = 3
    ask: ask.AskOptions = field(default_factory=ask.AskOptions)
    passphrase_file: str | None = None  # for tests and scripted demos; the prompt is the normal path
    network: Timeouts = field(default_factory=Timeouts)
    backoff: Backoff = field(default_factory=Backoff)
    # How long the unattended slots' first try may hold the prompt back: long enough that a Tang server
    # that answers spares the prompt altogether, short enough that a silent one does not delay a person.
    grace_s: float = 1.0


def notify(status: str, ready: bool = False) -> None:
    daemon.notify(("READY=1\n" if ready else "") + f"STATUS={status}")


def _unlock_from_cache(options: ServeOptions) -> Unlocked | None:
    """The passphrase the initrd cached (the last entry, tried once: a wrong one costs a TPM try on a
    tpm2+passphrase slot). None, and the prompt follows, when there is none or it does not open."""
    keyname = options.ask.cached_keyname
    if keyname is None:
        return None
    passphrase = cached_passphrase.read_cached(keyname)
    if passphrase is None:
        return None
    try:
        return storage.open_from(options.keystore, storage.read(options.keystore),
                                 Secrets(passphrase, options.tcti, options.network))
    except WrongSecret:
        log.warning("the passphrase cached under %r does not open the keystore; asking", keyname)
        return None
    finally:
        wipe(passphrase)


def unlock_interactively(options: ServeOptions) -> tuple[Unlocked, str]:
    """Unlock, and say how: through an unattended slot (tpm2, clevis, clevis+tpm2: the slot type), from
    the initrd's cached passphrase, or at the prompt, asking at most `tries` times. The unattended slots
    keep being tried, with back-off, while the prompt is up; the first to open withdraws the prompt.
    Stops at once on a TPM lockout: every further guess would only extend it."""
    keystore = storage.read(options.keystore)
    race = None
    withdraw = threading.Event()
    if unattended_slots(keystore):
        race = Unattended(options.keystore, options.tcti, options.network, options.backoff, withdraw).start()
        notify("trying the unattended slots")
        race.first_round.wait(options.grace_s)
    try:
        won = race.claim() if race is not None else None
        if won is not None:
            return won
        opened = _unlock_from_cache(options)
        if opened is not None:
            return opened, "cached passphrase"
        return _prompt(options, race, withdraw)
    finally:
        if race is not None:
            race.discard()  # a slot that opened too late is wiped, not left in memory


def _prompt(options: ServeOptions, race: Unattended | None, withdraw: threading.Event) -> tuple[Unlocked, str]:
    quorum = QuorumAtPrompt(storage.read(options.keystore))
    try:
        return _ask_until_open(options, race, withdraw, quorum)
    finally:
        quorum.reset()


def _ask(options: ServeOptions, race: Unattended | None, withdraw: threading.Event, message: str,
         question_id: str = "unlocker:keystore", timeout_s: int | None = None) -> bytearray | tuple[Unlocked, str]:
    """What was typed, or what won the race while the question was up."""
    try:
        return ask.ask(message, options.ask, withdraw, question_id, timeout_s)
    except ask.Withdrawn:
        won = race.claim() if race is not None else None
        if won is None:
            raise
        log.warning("the prompt was withdrawn: slot %d (%s) opened", won[0].slot_index, won[1])
        return won


def _ask_until_open(options: ServeOptions, race: Unattended | None, withdraw: threading.Event,
                    quorum: QuorumAtPrompt) -> tuple[Unlocked, str]:
    attempt = 1
    while attempt <= options.tries:
        won = race.claim() if race is not None else None
        if won is not None:
            return won
        if quorum.collecting:
            question_id, message = quorum.question()
            notify(f"waiting for quorum shares ({message})")
            try:
                answer = _ask(options, race, withdraw, message, question_id, SHARE_TIMEOUT_S)
            except ask.Cancelled as e:
                log.warning("quorum: %s; the shares given so far are dropped", e)
                quorum.reset()
                continue
            if isinstance(answer, tuple):
                return answer
            if not quorum.wants(answer):
                wipe(answer)
                quorum.refused = "that is not a quorum share"
                continue
            opened = quorum.offer(answer)
            if opened is not None:
                return opened, "quorum"
            continue
        notify(f"waiting for the passphrase (attempt {attempt} of {options.tries})"
               + ("; still trying the unattended slots" if race is not None else ""))
        if options.passphrase_file is not None:
            passphrase = read_secret_file(options.passphrase_file)
        else:
            answer = _ask(options, race, withdraw, ask.prompt_message(attempt, options.tries))
            if isinstance(answer, tuple):
                return answer
            passphrase = answer
        if quorum.wants(passphrase):  # the first share, typed at the passphrase prompt
            opened = quorum.offer(passphrase)
            if opened is not None:
                return opened, "quorum"
            if options.passphrase_file is not None:
                break
            continue
        try:
            opened = storage.open_from(options.keystore, storage.read(options.keystore),
                                       Secrets(passphrase, options.tcti, options.network))
            return opened, "passphrase file" if options.passphrase_file is not None else "prompt"
        except WrongSecret:
            log.warning("wrong passphrase (attempt %d of %d)", attempt, options.tries)
        finally:
            wipe(passphrase)
        if options.passphrase_file is not None:
            break
        attempt += 1
    raise WrongSecret(f"no keyslot opened after {options.tries} attempt(s); restart unlocker.service to try again")


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
    loop = asyncio.get_running_loop()
    options.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    credentials = await listen(options.run_dir / "credentials.sock", broker.handle_credential, mode=0o600)
    control = await listen(options.run_dir / "control.sock",
                           lambda r, w: handle_control(broker, r, w), mode=0o600, backlog=CONTROL_BACKLOG)
    unlocking = asyncio.Lock()

    async def unlock() -> dict[str, object]:
        if unlocking.locked():
            return {"ok": False, "error": "an unlock is already waiting for the passphrase"}
        async with unlocking:
            opened, source = await loop.run_in_executor(None, unlock_interactively, options)
            try:
                keyring.load(opened)
            finally:
                opened.close()
            broker.state_since, broker.unlocked_by = time.time(), source
            audit.state_changed("unlocked", f"keystore generation {keyring.generation} via slot {opened.slot_index} "
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
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if restored is not None:
            try:
                keyring.load(restored)
            finally:
                restored.close()
            broker.state_since, broker.unlocked_by = time.time(), "fd store"
            audit.state_changed("unlocked", f"keystore generation {keyring.generation} restored from the fd store "
                                "after a restart of the broker, without a prompt", source="fd store")
            notify(f"unlocked (keystore generation {keyring.generation}, from the fd store); serving credentials")
        else:
            await unlock()
        daemon.notify("READY=1")
        await stop.wait()
    finally:
        keyring.close()  # SIGTERM is a stop or a restart: the fd store is systemd's to keep or release
        credentials.close()
        control.close()
        daemon.notify("STOPPING=1")


def serve(options: ServeOptions) -> None:
    harden_process()
    raise_descriptor_limit()
    asyncio.run(_serve(options))
