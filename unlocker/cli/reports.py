"""The read-only reports: status, slots and doctor, as plain functions that print and return an exit code.

Scripts call these in a loop (monitoring, `status --json | jq`), so they import neither typer nor the
crypto, TPM or clevis stacks unless the keystore in hand needs them. cli/plain.py runs them straight from
argv when the call has a plain shape; every other call goes through the typer app, whose commands
(cli/service.py, cli/keystore.py, cli/doctor.py) call the same functions.
"""

from __future__ import annotations

import json
import time

from unlocker.cli.options import Globals, tpm_device
from unlocker.errors import TpmError, UnlockerError
from unlocker.keystore import storage
from unlocker.keystore.fileformat import Keystore
from unlocker.service import control

# typing.TYPE_CHECKING without importing typing (a few ms of every `status` call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def slot_info(keystore: Keystore) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for s in keystore.slots:
        row: dict[str, object] = {"slot": s.index, "type": s.type}
        params = dict(s.params)
        if "argon2id" in params:
            m, t, p = (int(x) for x in params["argon2id"].split(","))
            row["kdf"] = {"algorithm": "argon2id", "memory_kib": m, "iterations": t, "lanes": p}
        if "pcrs" in params:
            row["tpm2"] = {"pcrs": params["pcrs"], "bank": params["bank"]}
        if "verifiers" in params:
            row["quorum"] = {"threshold": int(params["threshold"]),
                             "shares": [int(v.split(":")[0]) for v in params["verifiers"].split(",")]}
        if "jwe" in params:
            from unlocker.clevis import pins  # the JOSE and EC stack, only for a keystore with clevis slots

            # Not secret without the network: `clevis decrypt` can be pointed at it.
            row["clevis"] = {**pins.describe(params["jwe"]), "jwe": params["jwe"]}
        if s.type == "systemd-creds+passphrase":
            row["note"] = "systemd-creds takes no PIN: the TPM does not count wrong passphrases"
        rows.append(row)
    return rows


def status(g: Globals, as_json: bool, tpm2_device: str | None) -> int:
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
        from unlocker.tpm import esapi  # tpm2-pytss, only when there is a TPM to ask

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
        return 0
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
    return 0


# Which protection the broker's keys have, and what to do when it is not the best one.
MEMORY_NOTES = {
    "memfd_secret": "memfd_secret: keys outside the kernel's direct map, never swapped or dumped",
    "mlock": "mlock: keys locked in RAM and left out of core dumps; memfd_secret is off "
             "(before Linux 6.5 add secretmem.enable=1 to the kernel command line)",
    "unlocked": "not locked in RAM (RLIMIT_MEMLOCK too low: raise LimitMEMLOCK=); left out of core dumps",
}


def _when(stamp: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(stamp)))  # type: ignore[arg-type]


def slots(g: Globals, as_json: bool) -> int:
    rows = slot_info(storage.read(g.keystore))
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        detail = ""
        if "kdf" in row:
            k = row["kdf"]
            assert isinstance(k, dict)
            detail += f"  argon2id m={k['memory_kib']}KiB t={k['iterations']} p={k['lanes']}"
        if "tpm2" in row:
            t = row["tpm2"]
            assert isinstance(t, dict)
            detail += f"  pcrs={t['pcrs']} ({t['bank']})"
        if "clevis" in row:
            c = row["clevis"]
            assert isinstance(c, dict)
            threshold = f" {c['t']} of" if "t" in c else ""
            detail += f"  {c['pin']}{threshold} " + ", ".join(s["url"] for s in c["servers"])
        if "quorum" in row:
            q = row["quorum"]
            assert isinstance(q, dict)
            detail += f"  {q['threshold']} of shares " + ", ".join(f"#{x}" for x in q["shares"])
        if "note" in row:
            detail += f"  ({row['note']})"
        print(f"{row['slot']:>3}  {row['type']:<16}{detail}")
    return 0


_MARK = {"ok": "ok", "warning": "WARNING", "error": "ERROR"}


def doctor(g: Globals, as_json: bool, tpm2_device: str | None) -> int:
    """Exit 0 when all is well, 1 with warnings, 2 with errors."""
    from unlocker.service import doctor as doctor_checks
    from unlocker.service import health

    checks = doctor_checks.examine(g.keystore, tpm_device(g, tpm2_device), g.config)
    if as_json:
        print(json.dumps({"verdict": str(health.worst(checks)), "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        for c in checks:
            print(f"{_MARK[c.verdict]:<8} {c.message}")
            if c.fix:
                print(f"{'':<8} fix: {c.fix}")
    return health.exit_code(checks)
