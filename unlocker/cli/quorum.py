"""The quorum ceremony and the quorum unlock at the command line: shares are shown once, one at a time,
and each must be typed back before the slot is written; at unlock each typed share is checked at once."""

from __future__ import annotations

import hmac
import os
import sys

from unlocker.errors import InvalidInput, WrongSecret
from unlocker.keystore.fileformat import Keystore, Slot
from unlocker.keystore.slots import Secrets
from unlocker.keystore.slots.quorum import Collector, WrongShare, new_shares, parse_share, share_number
from unlocker.keystore.unlock import Unlocked, open_keystore
from unlocker.memory import wipe
from unlocker.secret_input import ask_line

TRIES = 3


def ceremony(count: int, threshold: int) -> list[bytearray]:
    """New shares, each shown once to its holder and typed back. Raises InvalidInput (nothing is written)
    when a share is not typed back correctly in TRIES attempts or input ends."""
    texts = new_shares(count, threshold)
    try:
        for k, text in enumerate(texts, start=1):
            number = share_number(parse_share(text))
            sys.stdout.write(f"Share {k} of {count} (#{number}), for its holder only; shown once, write it down:"
                             "\n\n    ")
            sys.stdout.flush()
            os.write(sys.stdout.fileno(), bytes(text) + b"\n\n")
            _confirm(k, number, text)
            if os.isatty(1):
                sys.stdout.write("\033[2J\033[H")  # the next holder should not see this share
    except BaseException:
        wipe(*texts)
        raise
    print(f"all {count} shares confirmed; any {threshold} of them open the keystore")
    return texts


def _confirm(k: int, number: int, text: bytearray) -> None:
    expected = parse_share(text)
    try:
        for _ in range(TRIES):
            typed = ask_line(f"Type share #{number} back to confirm it was written down:")
            if typed is None:
                raise InvalidInput(f"input ended before share {k} was confirmed; nothing was enrolled")
            try:
                share = parse_share(typed)
            except InvalidInput as e:
                print(f"unlocker: {e}", file=sys.stderr)
                continue
            finally:
                wipe(typed)
            same = hmac.compare_digest(share, expected)
            wipe(share)
            if same:
                return
            print(f"unlocker: that is not share #{number}; try again", file=sys.stderr)
        raise InvalidInput(f"share #{number} was not confirmed; nothing was enrolled")
    finally:
        wipe(expected)


def quorum_slot(keystore: Keystore, index: int | None) -> Slot:
    slots = [s for s in keystore.slots if s.type == "quorum" and index in (None, s.index)]
    if not slots:
        raise InvalidInput("this keystore has no quorum slot" + (f" {index}" if index is not None else ""))
    return slots[0]


def unlock(keystore: Keystore, index: int | None) -> Unlocked:
    """Ask for shares one at a time until the threshold, naming each bad one as it comes (typo, foreign,
    wrong, duplicate), then open the slot. Raises WrongSecret when input ends first."""
    slot = quorum_slot(keystore, index)
    collector = Collector(keystore.id, slot)
    accepted: list[bytearray] = []
    try:
        while not collector.complete:
            typed = ask_line(f"Share {len(collector.shares) + 1} of {collector.threshold} (slot {slot.index}):")
            if typed is None:
                raise WrongSecret(f"{len(collector.shares)} of {collector.threshold} shares given; "
                                  "nothing unlocked")
            try:
                number = collector.add(typed)
            except (WrongShare, InvalidInput) as e:
                wipe(typed)
                print(f"unlocker: {e}", file=sys.stderr)
                continue
            accepted.append(typed)
            need = collector.threshold - len(collector.shares)
            have = ", ".join(f"#{x}" for x in collector.have)
            print(f"share #{number} accepted; have {have}" + (f", need {need} more" if need else ""),
                  file=sys.stderr)
        return open_keystore(keystore, Secrets(shares=accepted), only_slot=slot.index)
    finally:
        collector.wipe()
        wipe(*accepted)
