"""The unlock child: the short-lived process that turns a passphrase (or a TPM, or Tang servers) into the
broker's keys, so that the long-running broker never holds a passphrase and never loads the TPM stack.

serve.py starts it (spawn.py) as `python -m unlocker.service.unlock_child FD OPTIONS`, with the same
interpreter and environment (so glibc scrubs freed memory here too), in a session of its own, connected
to the broker by a SOCK_SEQPACKET socket on descriptor FD. It does everything that needs a secret or the
heavy stacks: the unattended race (unattended.py: TPM, clevis), the initrd's cached passphrase
(cached_passphrase.py), the prompt and the quorum shares (ask.py, quorum_prompt.py), Argon2id and the TPM
unseal. Then it fills a region of secret memory (keyring.fill_region), sends the broker its descriptor
(SCM_RIGHTS) and exits; the passphrase, K1, K2 and the TPM share die with it, wiped first.

Messages to the broker, one JSON object per packet:

- `{"status": TEXT}`: a line for `systemctl status` (the unit has NotifyAccess=main, so the broker
  relays it to systemd);
- `{"opened": {...}}`: the keystore generation, the slot that opened, how, the DEK entries (id, state,
  offset), the region's size and memory kind. With a memfd_secret region its descriptor comes with the
  packet. Without memfd_secret (the mlock fallback cannot be handed over) the next packet holds the
  region's bytes, which the broker receives straight into a region of its own;
- `{"failed": TEXT, "error": CLASS, "exit_code": N}`: nothing opened, said as the broker would have said it.

A SIGTERM (the broker stopping) goes to the whole session: systemd-ask-password too, which withdraws its
question from every agent. The child also dies with the broker (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading

from unlocker import logs
from unlocker.errors import UnlockerError, WrongSecret
from unlocker.keystore import storage
from unlocker.keystore.slots import Secrets
from unlocker.keystore.unlock import Unlocked, unattended_slots
from unlocker.memory import die_with_parent, harden_process, scrub_freed_memory, wipe
from unlocker.run import log
from unlocker.secret_input import read_secret_file
from unlocker.service import ask, cached_passphrase
from unlocker.service.keyring import fill_region
from unlocker.service.options import ServeOptions
from unlocker.service.quorum_prompt import SHARE_TIMEOUT_S, QuorumAtPrompt
from unlocker.service.unattended import Unattended

_broker: socket.socket | None = None


def notify(status: str) -> None:
    """STATUS= for systemd, through the broker (only the main process may notify)."""
    if _broker is not None:
        _broker.send(json.dumps({"status": status}).encode())


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


def hand_over(broker: socket.socket, opened: Unlocked, source: str) -> None:
    """Fill a region with the keys and give it to the broker: its descriptor, or else its bytes."""
    region, entries = fill_region(opened, keep_fd=True)
    try:
        header = json.dumps({"opened": {
            "generation": opened.keystore.generation, "slot_index": opened.slot_index, "source": source,
            "entries": [[e.id, e.state, e.offset] for e in entries], "size": region.size, "memory": region.kind,
        }}).encode()
        if region.fd is not None:
            socket.send_fds(broker, [header], [region.fd])
        else:
            broker.send(header)
            broker.send(region.view)
    finally:
        # A memfd_secret region's pages are the broker's now: not wiped here (the kernel zeroes them when
        # the broker lets them go). The mlock fallback's copy is.
        region.close(wipe_contents=region.fd is None)


def main() -> None:
    global _broker
    scrub_freed_memory()  # GLIBC_TUNABLES came with the broker's environment
    harden_process()
    die_with_parent(signal.SIGTERM)
    broker = socket.socket(fileno=int(sys.argv[1]))
    options = ServeOptions.from_json(sys.argv[2])
    logs.configure(options.debug)  # to stderr, which systemd sends to the journal
    _broker = broker
    try:
        opened, source = unlock_interactively(options)
    except UnlockerError as e:
        broker.send(json.dumps({"failed": str(e), "error": type(e).__name__, "exit_code": e.exit_code}).encode())
        return
    try:
        hand_over(broker, opened, source)
    finally:
        opened.close()


def _main_without_traceback() -> None:
    # A bug here must not put a traceback (with whatever a library put in an exception's message) in the
    # journal: the class and the line are enough to find it, and the broker says the unlock failed.
    try:
        main()
    except Exception as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
        log.error("the unlock child failed: %s at %s", type(e).__name__, where)
        sys.exit(1)


if __name__ == "__main__":
    _main_without_traceback()
