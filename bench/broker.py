"""Broker benchmarks, in a booted systemd 252 (systemd-nspawn), side by side in one run:

- start time of a oneshot unit whose credential comes from the broker (with the grant's drop-in),
  beside the same unit loading a plain file credential and a systemd-creds encrypted credential
  (LoadCredentialEncrypted=, host key);
- deliveries per second while 200 granted units start at once;
- the broker's resident memory.

    .venv/bin/python bench/broker.py            (needs scripts/setup and scripts/rootfs)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.system.container import Container, Layer  # noqa: E402
from tests.system.helpers import PASSPHRASE, setup, start_broker  # noqa: E402

RUNS = 40
UNIT = "[Service]\nType=oneshot\nExecStart=/bin/true\n{extra}\n"

# Runs inside the container: time `systemctl start` of each unit, interleaved, RUNS times.
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

BURST = r"""
import subprocess, sys, time
units = [f"burst@{i}.service" for i in range(1, 201)]
t = time.perf_counter()
subprocess.run(["systemctl", "start", *units], check=True)
print(time.perf_counter() - t)
"""


def main() -> None:
    layer = Layer()
    layer.build()
    try:
        with Container(layer) as c:
            setup(c, [], kdf_time=50)
            c.write("/etc/systemd/system/via-broker.service", UNIT.format(extra=""))
            c.run(["unlocker", "grant", "via-broker.service", "--no-reload"])
            c.sh("head -c 32 /dev/urandom > /etc/bench.key; chmod 600 /etc/bench.key")
            c.write("/etc/systemd/system/via-file.service", UNIT.format(extra="LoadCredential=dek:/etc/bench.key"))
            c.sh("systemd-creds encrypt --with-key=host --name=dek /etc/bench.key /etc/bench.cred")
            c.write("/etc/systemd/system/via-systemd-creds.service",
                    UNIT.format(extra="LoadCredentialEncrypted=dek:/etc/bench.cred"))
            c.write("/etc/systemd/system/no-credential.service", UNIT.format(extra=""))
            # The broker alone, without the drop-in's ExecStartPre= guard: splits the cost in two.
            c.run(["unlocker", "grant", "broker-no-guard.service", "--no-reload"])
            c.run(["rm", "-r", "/etc/systemd/system/broker-no-guard.service.d"])
            c.write("/etc/systemd/system/broker-no-guard.service",
                    UNIT.format(extra="LoadCredential=dek:/run/unlocker/credentials.sock"))
            c.write("/etc/systemd/system/burst@.service", UNIT.format(extra=""))
            c.run(["unlocker", "grant", *[f"burst@{i}.service" for i in range(1, 201)], "--no-reload"])
            c.systemctl("daemon-reload")
            start_broker(c, (PASSPHRASE,))

            units = ["no-credential.service", "via-file.service", "via-systemd-creds.service",
                     "broker-no-guard.service", "via-broker.service"]
            times = json.loads(c.run(["python3", "-c", TIMER, ",".join(units), str(RUNS)], timeout=600).stdout)
            medians = {u: statistics.median(v) * 1000 for u, v in times.items()}
            burst = float(c.run(["python3", "-c", BURST], timeout=600).stdout)
            pid = c.show("unlocker.service", "MainPID")["MainPID"]
            rss = next(line for line in c.read(f"/proc/{pid}/status").decode().splitlines() if line.startswith("VmRSS"))
            status = json.loads(c.run(["unlocker", "status", "--json"]).stdout)["broker"]
    finally:
        layer.remove()

    print(f"Unit start time, `systemctl start` of a oneshot /bin/true unit (median of {RUNS}, interleaved)")
    print(f"{'credential source':<44} {'ms':>8} {'vs file':>8}")
    for u in units:
        print(f"{u:<44} {medians[u]:>8.2f} {medians[u] / medians['via-file.service']:>8.2f}")
    deliveries = sum(v for k, v in status["deliveries"].items() if k.startswith("burst@"))
    print()
    print(f"200 granted units started at once: {burst:.2f} s, {deliveries} deliveries "
          f"({deliveries / burst:.0f} deliveries/s; systemd connects once per Exec command)")
    print(f"broker resident memory: {rss.split(':')[1].strip()}")


if __name__ == "__main__":
    main()
