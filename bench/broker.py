"""Broker benchmarks, in a booted systemd 252 (systemd-nspawn), side by side in one run:

- start time of a oneshot unit whose credential comes from the broker (the grant's drop-in: a sealed
  credential, LoadCredentialEncrypted=), beside the same unit loading a plain file credential, a
  systemd-creds encrypted file (LoadCredentialEncrypted=, host key: systemd's decryption alone), none, and
  plain LoadCredential= from the broker's socket (the transport alone; not a supported configuration);
- 200 units started at once, with broker credentials, with file credentials and with systemd-creds files,
  in interleaved rounds, while a client holds a connection to the credentials socket and never reads;
  every unit checks that its credential is the right 32 bytes (`cmp`), and fails otherwise;
- the broker's own part of one delivery, stage by stage (peer check, grant lookup, render, seal, audit
  record), timed in a unit of the container against its journald;
- the broker's resident memory after unlock, and what each group of imports adds to a fresh interpreter
  (the broker's own, and a process that imports only what serving needs);
- the unlock itself (issue 13), this tree beside the `unlocker` package of an older commit (--unlock-against,
  default the last commit before the unlock child), alternating in one container: `systemctl start` of
  unlocker.service until READY=1 (`--passphrase-file`, so no agent's latency), and the broker's VmRSS and
  smaps_rollup Rss right after, on a passphrase-only keystore and on a tpm2+passphrase one (swtpm on the
  host's loopback). `--unlock-only` runs just that part.

    .venv/bin/python bench/broker.py [--json] [--runs N] [--rounds N] [--unlock-only] [--unlock-against COMMIT]
    (needs scripts/setup and scripts/rootfs)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tests"))
from conftest import FAST  # noqa: E402
from swtpm_fixture import running_swtpm  # noqa: E402

from tests.system.container import Container, Layer  # noqa: E402
from tests.system.helpers import PASSPHRASE, expected, rss_by_mapping, setup, start_broker  # noqa: E402
from unlocker.keystore import changes, storage  # noqa: E402
from unlocker.keystore.slots import Secrets  # noqa: E402

UNIT = "[Service]\nType=oneshot\nExecStart=/bin/true\n{extra}\n"
SOCKET = "/run/unlocker/sealed-credentials.sock"
BURST = 200

# Runs inside the container: time `systemctl start` of each unit, interleaved, `runs` times.
TIMER = r"""
import json, subprocess, sys, time
units, runs = sys.argv[1].split(","), int(sys.argv[2])
times = {u: [] for u in units}
for _ in range(runs):
    for u in units:
        t = time.perf_counter()
        subprocess.run(["systemctl", "start", u], check=True)
        times[u].append(time.perf_counter() - t)
print(json.dumps(times))
"""

# Runs inside the container: one burst of `n` instances of a template; prints seconds and failed units.
BURST_RUN = r"""
import json, subprocess, sys, time
template, n = sys.argv[1], int(sys.argv[2])
units = [f"{template}@{i}.service" for i in range(1, n + 1)]
t = time.perf_counter()
subprocess.run(["systemctl", "start", *units], check=False, capture_output=True)
elapsed = time.perf_counter() - t
results = subprocess.run(["systemctl", "show", "-p", "Result", "--value", *units], capture_output=True,
                         text=True).stdout.split()
print(json.dumps({"seconds": elapsed, "failed": [u for u, r in zip(units, results) if r != "success"]}))
"""

# Connects to the credentials socket and never reads (it is refused: no peer check passes).
SLOW_LORIS = r"""
import socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("/run/unlocker/sealed-credentials.sock")
time.sleep(120)
"""

# Runs in a unit of the container (so that its own cgroup is a unit's): each stage of the broker's part of
# a delivery, on a socketpair whose peer is this very process, `n` times; prints microseconds (median).
PROFILE = r"""
import json, os, socket, statistics, sys, time
from pathlib import Path
from unlocker.client.formats import Format, KeyVersion, render
from unlocker.memory import wipe
from unlocker.service import audit, grants
from unlocker.service.broker import Broker, Peer, Stats, peer_of, verify
from unlocker.service.peer import Request, parse_address
from unlocker.service.sealed import HostKey
unit, n = sys.argv[1], int(sys.argv[2])
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
address = f"\0{os.urandom(8).hex()}/unit/{unit}/dek".encode()
request = parse_address(address)
peer = Peer(os.getpid(), 0, 0, address)
broker = Broker(keyring=None, grants_file=grants.GRANTS_FILE)
broker.current_grants()
stats = Stats()

def render_raw():
    versions = [KeyVersion(1, "primary", bytearray(32))]
    wipe(render(Format.raw, versions))

host_key = HostKey.read()

stages = {
    "peer_of (SO_PEERCRED, getpeername)": lambda: peer_of(a),
    "parse_address": lambda: parse_address(address),
    "verify (pidfd, /proc/PID/cgroup, poll)": lambda: verify(a, peer, request),
    "grant lookup (stat, cached list)": lambda: broker.current_grants().get((request.unit, request.credential)),
    "grant list parse (a cache miss)": lambda: grants.load(broker.grants_file),
    "render raw (copy, render, wipe)": render_raw,
    "seal (AES-256-GCM, systemd's format, base64)": lambda: host_key.seal("dek", bytes(32)),
    "host key check (stat of the secret)": lambda: broker.host_key.get(),
    "stats record": lambda: stats.record(request.unit, request.credential, "deliver"),
    "audit record (journal.send)": lambda: audit.delivered(request.unit, request.credential, "raw", [1]),
}

def ask_the_broker():
    # A whole delivery from the real broker, as systemd's helper asks for it: connect, shut the write side,
    # read to EOF. This process is in the granted unit's cgroup, so it gets the key.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(f"\0{os.urandom(8).hex()}/unit/{unit}/dek")
    s.connect("/run/unlocker/sealed-credentials.sock")
    s.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := s.recv(4096):
        got += chunk
    s.close()
    assert len(got) > 32, len(got)  # sealed: header, name, key and tag, base64

stages["a whole delivery, connect to EOF (the real broker)"] = ask_the_broker
out = {}
if os.path.exists("/run/bench-ab.ready"):
    # This tree's broker and the old one, alternating, same process, same keyring.
    ab = {"new": [], "old": []}
    for i in range(n // 2):
        for name in ("new", "old") if i % 2 else ("old", "new"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(f"\0{os.urandom(8).hex()}/unit/{unit}/dek")
            t = time.perf_counter_ns()
            s.connect(f"/run/bench-{name}.sock")
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(4096):
                got += chunk
            ab[name].append(time.perf_counter_ns() - t)
            s.close()
            assert len(got) >= 32, (name, len(got))  # an old broker's is plain
    for name, times in ab.items():
        out[f"whole delivery, {name} broker (A/B, alternating)"] = statistics.median(times) / 1000
for name, stage in stages.items():
    times = []
    for _ in range(n if "whole" not in name else n // 4):
        t = time.perf_counter_ns()
        stage()
        times.append(time.perf_counter_ns() - t)
    out[name] = statistics.median(times) / 1000
print(json.dumps(out))
"""

# Runs in a unit of the container: the broker of this tree and the one of commit argv[1] (its broker.py,
# copied in as old_broker.py), each on its own socket, same keyring and grant list; for a side-by-side
# comparison of a whole delivery in one run.
AB_SERVER = r"""
import asyncio, sys
sys.path.insert(0, "/usr/local/lib/bench")
import old_broker
from unlocker.keystore import changes
from unlocker.keystore.kdf import Argon2Params
from unlocker.keystore.slots import EnrollOptions, Secrets
from unlocker.service import broker as new_broker
from unlocker.service.keyring import Keyring
keyring = Keyring()
keyring.load(changes.create("passphrase", Secrets(bytearray(b"bench")), EnrollOptions(argon2=Argon2Params(8192, 1))))
async def main():
    for name, module in (("new", new_broker), ("old", old_broker)):
        b = module.Broker(keyring)
        await module.listen(__import__("pathlib").Path(f"/run/bench-{name}.sock"), b.handle_credential)
    open("/run/bench-ab.ready", "w").close()
    await asyncio.sleep(3600)
asyncio.run(main())
"""

# Runs in the container's venv: VmRSS of a fresh interpreter after each group of imports, cumulative.
IMPORTS = r"""
import importlib, json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
steps = json.loads(sys.argv[1])
out = [["python3 (site, nothing imported)", rss()]]
for label, modules in steps:
    for m in modules:
        importlib.import_module(m)
    out.append([label, rss()])
print(json.dumps(out))
"""

# What `unlocker serve` imports, in groups: serving needs the first ones only.
SERVING = [
    ["stdlib a server needs (asyncio, json, socket, select)", ["asyncio", "json", "socket", "select", "struct"]],
    ["systemd (journal, daemon)", ["systemd.journal", "systemd.daemon"]],
    ["unlocker.memory, client.formats, service.peer, service.audit",
     ["unlocker.memory", "unlocker.client.formats", "unlocker.service.peer", "unlocker.service.audit"]],
    ["unlocker.service.grants (keystore.storage)", ["unlocker.service.grants"]],
]
# The least a credential server could import: no asyncio (selectors), no cryptography (unlocker.client's
# package imports field encryption, which needs it), no keystore.
LEAN = [
    ["stdlib without asyncio (selectors, json, socket, select)", ["selectors", "json", "socket", "select", "struct"]],
    ["systemd.journal", ["systemd.journal"]],
    ["unlocker.memory, unlocker.service.peer", ["unlocker.memory", "unlocker.service.peer"]],
]
UNLOCKING = [
    ["unlocker.service.broker (keyring -> keystore.unlock, fileformat)", ["unlocker.service.broker"]],
    ["cryptography (AESGCM, HKDF, Argon2id)", ["cryptography.hazmat.primitives.ciphers.aead",
                                               "cryptography.hazmat.primitives.kdf.hkdf",
                                               "cryptography.hazmat.primitives.kdf.argon2"]],
    ["keystore slots (clevis: pycryptodome)", ["unlocker.keystore.slots.clevis"]],
    ["tpm2_pytss (cffi) via unlocker.tpm.esapi", ["unlocker.tpm.esapi"]],
    ["unlocker.service.serve (the rest)", ["unlocker.service.serve"]],
    ["typer (rich, pydantic)", ["typer"]],
    ["unlocker.cli.main", ["unlocker.cli.main"]],
]


def prepare(c: Container) -> dict[str, list[str]]:
    """The units: for start times, and three templates of BURST instances for the bursts."""
    setup(c, [], kdf_time=50)
    c.sh("head -c 32 /dev/urandom > /etc/bench.key; chmod 600 /etc/bench.key")
    file_credential = "LoadCredential=dek:/etc/bench.key"
    systemd_creds = "LoadCredentialEncrypted=dek:/etc/bench.cred"
    c.write("/etc/systemd/system/via-broker.service", UNIT.format(extra=""))
    c.run(["unlocker", "grant", "via-broker.service", "--no-reload"])  # also makes the host secret
    c.write("/etc/systemd/system/via-file.service", UNIT.format(extra=file_credential))
    c.sh("systemd-creds encrypt --with-key=host --name=dek /etc/bench.key /etc/bench.cred")
    c.write("/etc/systemd/system/via-systemd-creds.service", UNIT.format(extra=systemd_creds))
    c.write("/etc/systemd/system/no-credential.service", UNIT.format(extra=""))
    # Not a configuration anyone should run: plain LoadCredential= from the broker's socket (the unit gets
    # the sealed text, undecrypted). It splits the broker's figure into the socket transport and systemd's
    # decryption.
    c.run(["unlocker", "grant", "transport-only.service", "--no-reload"])
    c.write("/etc/systemd/system/transport-only.service.d/50-unlocker-dek.conf",
            f"[Unit]\nWants=unlocker.service\nAfter=unlocker.service\n[Service]\nLoadCredential=dek:{SOCKET}\n")
    c.write("/etc/systemd/system/transport-only.service", UNIT.format(extra=""))

    check = "[Service]\nType=oneshot\nExecStart=/usr/bin/cmp -s %d/dek {expected}\n{extra}\n"
    c.write("/etc/systemd/system/burst-broker@.service", check.format(expected="/etc/bench-dek.expected", extra=""))
    c.write("/etc/systemd/system/burst-file@.service", check.format(expected="/etc/bench.key", extra=file_credential))
    c.write("/etc/systemd/system/burst-systemd-creds@.service",
            check.format(expected="/etc/bench.key", extra=systemd_creds))
    units = [f"burst-broker@{i}.service" for i in range(1, BURST + 1)]
    c.run(["unlocker", "grant", *units, "--format", "raw", "--no-reload"])
    c.systemctl("daemon-reload")
    return {"start": ["no-credential.service", "via-file.service", "via-systemd-creds.service",
                      "transport-only.service", "via-broker.service"],
            "burst": ["burst-file", "burst-systemd-creds", "burst-broker"]}


def bursts(c: Container, templates: list[str], rounds: int) -> dict[str, dict[str, object]]:
    seconds: dict[str, list[float]] = {t: [] for t in templates}
    failed: dict[str, list[str]] = {t: [] for t in templates}
    for r in range(rounds):
        for template in templates[r % len(templates):] + templates[:r % len(templates)]:  # rotate the order
            loris = f"slow-loris-{r}-{template}.service"
            c.run(["systemd-run", f"--unit={loris}", "python3", "-c", SLOW_LORIS])
            result = json.loads(c.run(["python3", "-c", BURST_RUN, template, str(BURST)], timeout=600).stdout)
            holding = c.show(loris, "ActiveState")["ActiveState"] == "active"
            c.systemctl("stop", loris)
            seconds[template].append(result["seconds"])
            failed[template] += result["failed"] + ([] if holding else [f"{loris} (not holding)"])
    return {t: {"seconds": seconds[t], "median_s": statistics.median(seconds[t]),
                "units_per_s": BURST / statistics.median(seconds[t]), "failed": failed[t]} for t in templates}


def footprint(c: Container) -> dict[str, object]:
    pid = c.show("unlocker.service", "MainPID")["MainPID"]
    status = dict(line.split(":", 1) for line in c.read(f"/proc/{pid}/status").decode().splitlines())
    rollup = dict(line.split(":", 1) for line in c.read(f"/proc/{pid}/smaps_rollup").decode().splitlines()[1:])
    kib = {k: int(v.split()[0]) for k, v in {**status, **rollup}.items()
           if k in ("VmRSS", "RssAnon", "RssFile", "Pss", "Private_Dirty", "Shared_Clean")}
    python = "/opt/unlocker/bin/python"
    serving = json.loads(c.run([python, "-c", IMPORTS, json.dumps(SERVING)]).stdout)
    everything = json.loads(c.run([python, "-c", IMPORTS, json.dumps(SERVING + UNLOCKING)]).stdout)
    by_mapping = rss_by_mapping(c, pid)
    lean = json.loads(c.run([python, "-c", IMPORTS, json.dumps(LEAN)]).stdout)
    return {"broker_kib": kib, "broker_mib": kib["VmRSS"] / 1024, "broker_by_mapping_kib": by_mapping,
            "serving_only_mib": serving[-1][1], "lean_serving_mib": lean[-1][1], "lean_imports_mib": lean,
            "imports_mib": everything}


def profile(c: Container, old: str | None, n: int = 2000) -> dict[str, float]:
    unit = "broker-profile.service"
    c.run(["unlocker", "grant", unit, "--no-reload"])
    if old is not None:
        c.write("/usr/local/lib/bench/old_broker.py", subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{old}:unlocker/service/broker.py"], capture_output=True,
            check=True).stdout)
        c.run(["systemd-run", "--unit=bench-ab.service", "/opt/unlocker/bin/python", "-c", AB_SERVER])
        deadline = time.monotonic() + 30
        while c.run(["test", "-e", "/run/bench-ab.ready"], check=False).returncode != 0:
            assert time.monotonic() < deadline, c.run(["journalctl", "-u", "bench-ab.service"]).stdout.decode()
            time.sleep(0.1)
    p = c.run(["systemd-run", f"--unit={unit}", "--wait", "--pipe", "--quiet", "/opt/unlocker/bin/python", "-c",
               PROFILE, unit, str(n)], timeout=300)
    stages: dict[str, float] = json.loads(p.stdout)
    return stages


# Runs in the container: start unlocker.service with each variant's drop-in in turn, `runs` times; the
# seconds until `systemctl start` returns (Type=notify: READY=1), then the broker's memory.
UNLOCK_TIMER = r"""
import json, subprocess, sys, time
variants, runs = json.loads(sys.argv[1]), int(sys.argv[2])
out = {name: {"s": [], "VmRSS": [], "Rss": [], "procs": []} for name in variants}
def show(prop):
    return subprocess.run(["systemctl", "show", "-p", prop, "--value", "unlocker.service"], capture_output=True,
                          text=True, check=True).stdout.strip()
for _ in range(runs):
    for name, dropin in variants.items():
        with open("/etc/systemd/system/unlocker.service.d/50-bench.conf", "w") as f:
            f.write(dropin)
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        t = time.perf_counter()
        subprocess.run(["systemctl", "start", "unlocker.service"], check=True)
        out[name]["s"].append(time.perf_counter() - t)
        pid = show("MainPID")
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                out[name]["VmRSS"].append(int(line.split()[1]))
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Rss:"):
                out[name]["Rss"].append(int(line.split()[1]))
        out[name]["procs"].append(len(open(f"/sys/fs/cgroup{show('ControlGroup')}/cgroup.procs").read().split()))
        subprocess.run(["systemctl", "stop", "unlocker.service"], check=True)
print(json.dumps(out))
"""
OLD_TREE = "/usr/local/lib/bench/old"
UNLOCK_AGAINST = "166c8db"  # the merge before the unlock child


def unlock_times(c: Container, old: str, runs: int, tmp: Path) -> dict[str, object]:
    """Old and new `unlocker serve`, alternating: time to READY=1 and RSS after, per keystore kind."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", old, "unlocker"],
                             capture_output=True, check=True).stdout
    c.run(["mkdir", "-p", OLD_TREE, "/etc/systemd/system/unlocker.service.d"])
    c.run(["tar", "-x", "-C", OLD_TREE], input=archive)
    c.write_file("/etc/bench.pass", PASSPHRASE, mode=0o600)
    results: dict[str, object] = {}
    with running_swtpm(tmp / "swtpm") as tpm:
        opened = changes.create("tpm2+passphrase", Secrets(bytearray(PASSPHRASE), tpm.tcti), FAST)
        storage.write(tmp / "keystore-tpm2", opened.keystore, expected_generation=None)
        opened.close()
        c.write_file("/var/lib/unlocker/keystore-tpm2", (tmp / "keystore-tpm2").read_bytes(), mode=0o600)
        c.write_file("/etc/unlocker/unlocker.conf", f"[tpm2]\ndevice = {tpm.tcti}\n")
        for kind, keystore in (("passphrase", "/var/lib/unlocker/keystore"),
                               ("tpm2+passphrase", "/var/lib/unlocker/keystore-tpm2")):
            exec_start = (f"[Service]\nExecStart=\nExecStart=/usr/local/bin/unlocker --keystore {keystore} serve "
                          "--passphrase-file /etc/bench.pass\n")
            variants = {"old": exec_start + f"Environment=PYTHONPATH={OLD_TREE}\n", "new": exec_start}
            raw = json.loads(c.run(["python3", "-c", UNLOCK_TIMER, json.dumps(variants), str(runs)],
                                   timeout=1200).stdout)
            results[kind] = {name: {"ready_ms": statistics.median(r["s"]) * 1000,
                                    "vmrss_mib": statistics.median(r["VmRSS"]) / 1024,
                                    "rss_mib": statistics.median(r["Rss"]) / 1024,
                                    "processes_after": max(r["procs"]), "raw": r} for name, r in raw.items()}
    c.run(["rm", "-r", "/etc/systemd/system/unlocker.service.d"])
    c.systemctl("daemon-reload")
    return results


def print_unlock(unlock: dict[str, object], old: str, runs: int) -> None:
    print(f"\nUnlock (issue 13): `systemctl start unlocker.service` until READY=1, and the broker's memory right "
          f"after; median of {runs}, old ({old}) and new alternating")
    print(f"{'keystore':<18} {'variant':<6} {'READY ms':>9} {'VmRSS MiB':>10} {'Rss MiB':>8} {'procs':>6}")
    for kind, variants in unlock.items():
        for name, r in variants.items():  # type: ignore[attr-defined]
            print(f"{kind:<18} {name:<6} {r['ready_ms']:>9.0f} {r['vmrss_mib']:>10.1f} {r['rss_mib']:>8.1f} "
                  f"{r['processes_after']:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the figures and ratios as JSON")
    parser.add_argument("--runs", type=int, default=40, help="starts of each unit (interleaved)")
    parser.add_argument("--rounds", type=int, default=3, help="bursts of each kind (interleaved)")
    parser.add_argument("--against", metavar="COMMIT", help="also time whole deliveries from the broker.py of "
                        "COMMIT, alternating with this tree's, in one process")
    parser.add_argument("--unlock-only", action="store_true", help="only the unlock's time and memory, old vs new")
    parser.add_argument("--unlock-against", metavar="COMMIT", default=UNLOCK_AGAINST,
                        help=f"the older `unlocker` package for the unlock comparison (default {UNLOCK_AGAINST})")
    parser.add_argument("--unlock-runs", type=int, default=10, help="unlocks of each variant and keystore")
    args = parser.parse_args()

    if args.unlock_only:
        layer = Layer()
        layer.build()
        try:
            with Container(layer) as c, tempfile.TemporaryDirectory() as tmp:
                setup(c, [], kdf_time=50)
                unlock = unlock_times(c, args.unlock_against, args.unlock_runs, Path(tmp))
        finally:
            layer.remove()
        if args.json:
            print(json.dumps({"unlock": unlock, "unlock_against": args.unlock_against, "unlock_runs": args.unlock_runs},
                             indent=1))
        else:
            print_unlock(unlock, args.unlock_against, args.unlock_runs)
        return

    layer = Layer()
    layer.build()
    try:
        with Container(layer) as c:
            units = prepare(c)
            start_broker(c, (PASSPHRASE,))
            c.write("/etc/bench-dek.expected", expected(c, "raw"), mode=0o600)
            times = json.loads(c.run(["python3", "-c", TIMER, ",".join(units["start"]), str(args.runs)],
                                     timeout=1200).stdout)
            burst = bursts(c, units["burst"], args.rounds)
            stages = profile(c, args.against)
            memory = footprint(c)
            c.systemctl("stop", "unlocker.service")
            with tempfile.TemporaryDirectory() as tmp:
                unlock = unlock_times(c, args.unlock_against, args.unlock_runs, Path(tmp))
    finally:
        layer.remove()

    medians = {u: statistics.median(v) * 1000 for u, v in times.items()}
    file_ms = medians["via-file.service"]
    file_s = float(burst["burst-file"]["median_s"])  # type: ignore[arg-type]
    result = {
        "start_ms": medians,
        "start_ratio_vs_file": {u: m / file_ms for u, m in medians.items()},
        "start_ratio_broker_vs_file": medians["via-broker.service"] / file_ms,
        "start_ratio_broker_vs_systemd_creds": medians["via-broker.service"] / medians["via-systemd-creds.service"],
        "burst": burst,
        "burst_ratio_vs_file": {t: float(b["median_s"]) / file_s for t, b in burst.items()},  # type: ignore[arg-type]
        "delivery_stages_us": stages,
        "rss": memory,
        "unlock": unlock, "unlock_against": args.unlock_against, "unlock_runs": args.unlock_runs,
        "runs": args.runs, "rounds": args.rounds, "burst_units": BURST,
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"Unit start time, `systemctl start` of a oneshot unit (median of {args.runs}, interleaved)")
    print(f"{'credential source':<44} {'ms':>8} {'vs file':>8}")
    for u, m in medians.items():
        print(f"{u:<44} {m:>8.2f} {m / file_ms:>8.2f}")
    print(f"\n{BURST} units started at once, median of {args.rounds} interleaved rounds, a client holding a "
          "connection to the credentials socket unread; each unit cmp's its 32 bytes")
    for t, b in burst.items():
        print(f"{t:<44} {b['median_s']:>8.2f} s {result['burst_ratio_vs_file'][t]:>6.2f} x file"
              f"   failed: {len(b['failed']) or 'none'}")  # type: ignore[arg-type]
    print("\nThe broker's part of one delivery, by stage (median, µs)")
    for name, us in stages.items():
        print(f"{name:<44} {us:>8.1f}")
    print(f"\nbroker resident memory after unlock: {memory['broker_mib']:.1f} MiB  {memory['broker_kib']}")
    print("its Rss by mapping (KiB, >= 64):", ", ".join(f"{k} {v}" for k, v in memory["broker_by_mapping_kib"]))  # type: ignore[attr-defined]
    print("a fresh interpreter, cumulative VmRSS after each group of imports (MiB):")
    previous = 0.0
    for label, mib in memory["imports_mib"]:  # type: ignore[attr-defined]
        print(f"  {label:<66} {mib:>6.1f} {mib - previous:>+6.1f}")
        previous = mib
    print(f"serving only (the first {len(SERVING)} groups): {memory['serving_only_mib']:.1f} MiB; the least a "
          f"server could import ({', '.join(str(label) for label, _ in LEAN)}): {memory['lean_serving_mib']:.1f} MiB")
    print_unlock(unlock, args.unlock_against, args.unlock_runs)


if __name__ == "__main__":
    main()
