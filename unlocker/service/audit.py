"""One structured journal record per decision. Never key material: unit, credential id, decision and
reason only. Query: journalctl MESSAGE_ID=<id> or journalctl -t unlocker.

The ids are random 128-bit values (`systemd-id128 new`). catalog/unlocker.catalog explains each record and
what to do about it (`journalctl -x`); tests/service/test_audit.py keeps the two in step.
"""

from __future__ import annotations

import logging

from systemd import journal

log = logging.getLogger("unlocker")

DELIVERED = "3f2aa9d36f324aa38af87b24efd52c74"
DENIED = "a0d07849c301443b8740fa8f76d8b680"
UNLOCKED = "d028fd6e572648e8aa7952c4b5124aa5"
LOCKED = "aff90714b5514b709aafa316fcbda956"
ROTATED = "7c2aa329986d4fa2a9bc0ee7054cfce3"


def _send(message: str, message_id: str, priority: int, **fields: object) -> None:
    try:
        journal.send(message, MESSAGE_ID=message_id, PRIORITY=str(priority), SYSLOG_IDENTIFIER="unlocker",
                     **{f"UNLOCKER_{k.upper()}": str(v) for k, v in fields.items()})
    except OSError as e:  # no journal (tests outside systemd): the decision still stands, say so once
        log.warning("could not write to the journal: %s", e)


def delivered(unit: str, credential: str, fmt: str, versions: list[int]) -> None:
    _send(f"delivered credential {credential} ({fmt}) to {unit}", DELIVERED, journal.LOG_INFO,
          unit=unit, credential=credential, decision="deliver", format=fmt,
          versions=",".join(map(str, versions)))


def denied(unit: str | None, credential: str | None, reason: str, pid: int | None, uid: int | None) -> None:
    _send(f"denied credential {credential or '?'} to {unit or 'unknown peer'}: {reason}", DENIED,
          journal.LOG_WARNING, unit=unit or "", credential=credential or "", decision="deny", reason=reason,
          peer_pid=pid if pid is not None else "", peer_uid=uid if uid is not None else "")


def state_changed(state: str, detail: str, **fields: object) -> None:
    _send(f"broker {state}: {detail}", UNLOCKED if state == "unlocked" else LOCKED, journal.LOG_NOTICE,
          state=state, detail=detail, **fields)


def rotated(what: str, old_generation: int, new_generation: int, by: str) -> None:
    _send(f"rotated {what}: keystore generation {old_generation} -> {new_generation}", ROTATED,
          journal.LOG_NOTICE, what=what, old_generation=old_generation, new_generation=new_generation, by=by)
