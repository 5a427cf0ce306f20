"""The broker in a real systemd 252: granted units get the key, nobody else does."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from unlocker.service import audit

from .helpers import PASSPHRASE, consumer, expected, failed_at_credentials, journal, run_consumer, setup, start_broker

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def machine(module_container):
    c = module_container
    setup(c, [("granted.service", "dek", "hex"), ("dynamic.service", "dek", "json")])
    consumer(c, "dynamic.service", user="DynamicUser=yes")
    # Asks for the key itself (LoadCredentialEncrypted= in its own unit file), without a grant.
    consumer(c, "ungranted.service", extra="LoadCredentialEncrypted=dek:/run/unlocker/sealed-credentials.sock")
    consumer(c, "other-id.service", credential="other",
             extra="LoadCredentialEncrypted=other:/run/unlocker/sealed-credentials.sock")
    c.run(["unlocker", "grant", "other-id.service", "--credential", "dek", "--format", "raw"])
    c.systemctl("daemon-reload")
    start_broker(c)
    return c


def test_granted_unit_reads_the_key_from_a_private_ramfs(machine):
    ok, report = run_consumer(machine, "granted.service")
    assert ok, journal(machine, "granted.service")
    fstype, mode_owner, data = report.splitlines()
    assert fstype == "ramfs"
    assert mode_owner == "400 nobody"
    assert bytes.fromhex(data) == expected(machine, "hex")


def test_dynamic_user_unit_reads_the_json_keyring(machine):
    ok, report = run_consumer(machine, "dynamic.service")
    assert ok, journal(machine, "dynamic.service")
    fstype, mode_owner, data = report.splitlines()
    assert fstype == "ramfs" and mode_owner.startswith("400 ")
    assert bytes.fromhex(data) == expected(machine, "json")


def test_unit_without_a_grant_fails_at_credentials(machine):
    ok, report = run_consumer(machine, "ungranted.service")
    assert not ok and report == ""
    assert failed_at_credentials(machine, "ungranted.service")


def test_granted_unit_asking_for_another_credential_fails(machine):
    ok, report = run_consumer(machine, "other-id.service")
    assert not ok and report == ""
    assert failed_at_credentials(machine, "other-id.service")


def test_audit_records_in_the_journal_and_no_key_material(machine):
    run_consumer(machine, "granted.service")
    delivered = journal(machine, None, f"MESSAGE_ID={audit.DELIVERED}")
    denied = journal(machine, None, f"MESSAGE_ID={audit.DENIED}")
    assert "delivered credential dek (hex) to granted.service" in delivered
    assert "denied credential dek to ungranted.service: no grant" in denied
    everything = machine.run(["journalctl", "--no-pager", "-o", "export"]).stdout
    key_hex = expected(machine, "hex").strip()
    assert key_hex not in everything and key_hex.upper() not in everything
    assert PASSPHRASE not in everything


# A client that binds an abstract name of its choosing and reads what the broker sends.
FORGER = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\0" + "00ff00ff00ff00ff/unit/granted.service/dek")
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("permission denied"); sys.exit(0)
data = b""
while chunk := s.recv(1 << 20):
    data += chunk
print(len(data), data.strip(b"\0") == b"")
"""


def test_nobody_with_a_forged_name_cannot_even_connect(machine):
    for sock in ("/run/unlocker/sealed-credentials.sock", "/run/unlocker/control.sock"):
        p = machine.run(["systemd-run", "--wait", "--pipe", "-q", "-p", "User=nobody",
                         "python3", "-c", FORGER, sock])
        assert p.stdout.decode().strip() == "permission denied"


def test_root_in_another_units_cgroup_claiming_a_granted_unit_gets_no_key(machine):
    p = machine.run(["systemd-run", "--wait", "--pipe", "-q", "--unit=evil.service",
                     "python3", "-c", FORGER, "/run/unlocker/sealed-credentials.sock"])
    # Nothing at all: a unit would fail at CREDENTIALS (an empty reply does not decrypt); a forger learns nothing.
    assert p.stdout.decode().split() == ["0", "True"]
    assert "denied credential dek to granted.service: peer is not in the cgroup of granted.service" in \
        journal(machine, None, f"MESSAGE_ID={audit.DENIED}")


def test_root_outside_any_unit_gets_no_key(machine):
    p = machine.run(["python3", "-c", FORGER, "/run/unlocker/sealed-credentials.sock"])
    assert p.stdout.decode().split() == ["0", "True"]


def test_status_over_the_control_socket(machine):
    info = json.loads(machine.run(["unlocker", "status", "--json"]).stdout)
    assert info["broker"]["state"] == "unlocked"
    assert "granted.service dek hex" in info["broker"]["grants"]
    assert info["broker"]["memory"] in ("memfd_secret", "mlock")


def test_broker_memory_holds_no_passphrase(machine):
    pid = machine.show("unlocker.service", "MainPID")["MainPID"]
    scan = (Path(__file__).parents[1] / "memscan.py").read_text() + (
        "\nimport sys\nprint(find_in_process(int(sys.argv[1]), sys.stdin.buffer.read()))\n")
    p = machine.run(["python3", "-c", scan, pid], input=PASSPHRASE)
    assert p.stdout.decode().strip() == "[]"
    # The scanner can read the broker: it finds the broker's own journal identifier.
    p = machine.run(["python3", "-c", scan, pid], input=b"MESSAGE_ID=")
    assert p.stdout.decode().strip() != "[]"
    status = machine.run(["cat", f"/proc/{pid}/status"]).stdout.decode()
    assert machine.run(["cat", f"/proc/{pid}/coredump_filter"], check=False) is not None
    assert "Uid:\t0" in status


STUCK = r"""
import socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("/run/unlocker/sealed-credentials.sock")
print("connected", flush=True)
time.sleep(60)  # never reads
"""


def test_200_units_at_once_while_a_client_never_reads(machine):
    c = machine
    c.write("/etc/systemd/system/burst@.service", """[Service]
Type=oneshot
User=nobody
ExecStart=/bin/sh -c 'od -An -v -tx1 "$CREDENTIALS_DIRECTORY/dek" | tr -d " \\\\n"'
StandardOutput=truncate:/var/log/%n.out
""")
    units = [f"burst@{i}.service" for i in range(1, 201)]
    c.run(["unlocker", "grant", *units, "--format", "hex"])
    c.run(["systemd-run", "--unit=stuck.service", "python3", "-c", STUCK])
    try:
        started = c.run(["systemctl", "start", *units], check=False, timeout=300)
        want = expected(c, "hex").hex()
        wrong = [u for u in units if c.run(["cat", f"/var/log/{u}.out"], check=False).stdout.decode() != want]
        assert started.returncode == 0 and wrong == [], (started.stderr.decode()[-2000:], wrong[:5])
    finally:
        c.systemctl("stop", "stuck.service", check=False)


def test_revoke_removes_the_grant_and_the_dropin_without_a_broker_restart(machine):
    c = machine
    consumer(c, "revoked.service", extra="LoadCredentialEncrypted=dek:/run/unlocker/sealed-credentials.sock")
    c.run(["unlocker", "grant", "revoked.service", "--format", "hex"])
    assert run_consumer(c, "revoked.service")[0]
    r = c.run(["unlocker", "revoke", "revoked.service"])
    assert b"revoked revoked.service dek" in r.stdout
    assert not (c.root / "etc/systemd/system/revoked.service.d").exists()
    status = json.loads(c.run(["unlocker", "status", "--json"]).stdout)
    assert "revoked.service dek hex" not in status["broker"]["grants"]
    c.run(["rm", "-f", "/var/log/revoked.service.out"])
    ok, report = run_consumer(c, "revoked.service")  # still asks for the key itself: now refused
    assert not ok and report == "" and failed_at_credentials(c, "revoked.service")
    assert c.run(["unlocker", "revoke", "revoked.service"], check=False).returncode == 1


def test_a_peer_that_exits_before_the_check_is_refused(machine):
    """Freeze the broker, let a client connect and exit, thaw the broker: it must not vouch for a dead pid
    (which could be reused by another process) and refuses."""
    c = machine
    pid = c.show("unlocker.service", "MainPID")["MainPID"]
    connect_and_exit = ('import socket; s = socket.socket(socket.AF_UNIX); '
                        's.bind("\\0" + "0123456789abcdef/unit/granted.service/dek"); '
                        's.connect("/run/unlocker/sealed-credentials.sock")')
    c.run(["kill", "-STOP", pid])
    try:
        c.run(["python3", "-c", connect_and_exit])
    finally:
        c.run(["kill", "-CONT", pid])
    deadline = time.monotonic() + 10
    reason = "denied credential dek to granted.service: peer exited before it could be checked"
    while reason not in journal(c, None, f"MESSAGE_ID={audit.DENIED}"):
        assert time.monotonic() < deadline, journal(c, "unlocker.service")
        time.sleep(0.1)


@pytest.mark.parametrize("credential", ["a b", "a\nExecStartPre=/bin/true", "a%b", "a:b", "a\\b"])
def test_grant_refuses_a_credential_id_that_could_never_be_delivered(machine, credential):
    c = machine
    before = c.read("/etc/unlocker/grants")
    r = c.run(["unlocker", "grant", "idcheck.service", "--credential", credential, "--no-reload"], check=False)
    assert r.returncode == 1 and b"is not a valid credential id" in r.stderr and b"Traceback" not in r.stderr
    assert c.read("/etc/unlocker/grants") == before
    assert not (c.root / "etc/systemd/system/idcheck.service.d").exists()


def test_grant_refuses_a_template_without_an_instance(machine):
    r = machine.run(["unlocker", "grant", "burst@.service", "--no-reload"], check=False)
    assert r.returncode == 1 and b"is a template: grant each instance" in r.stderr
    assert b"burst@.service" not in machine.read("/etc/unlocker/grants")


def test_a_grant_list_that_does_not_parse_refuses_every_request(machine):
    """A hand edit that revokes one unit and breaks a line: the broker must not keep the old grants (the
    revocation would silently do nothing); it refuses everyone, loudly, until the list parses again."""
    c = machine
    good = c.read("/etc/unlocker/grants")
    assert run_consumer(c, "granted.service")[0]
    c.write("/etc/unlocker/grants", good + b"oops.service a%b raw\n")
    try:
        c.run(["rm", "-f", "/var/log/granted.service.out"])
        ok, report = run_consumer(c, "granted.service")
        assert not ok and report == "" and failed_at_credentials(c, "granted.service")
        assert "NO grant is in force and every credential request is refused" in journal(c, "unlocker.service")
        assert "denied credential dek to granted.service: the grant list does not parse" in \
            journal(c, None, f"MESSAGE_ID={audit.DENIED}")
        broker = json.loads(c.run(["unlocker", "status", "--json"]).stdout)["broker"]
        assert broker["grants"] == [] and "line" in broker["grants_error"]
    finally:
        c.write("/etc/unlocker/grants", good)
    assert run_consumer(c, "granted.service")[0]


def test_a_unit_whose_cgroup_name_systemd_escapes_gets_its_key(machine):
    c = machine  # cpu.service runs in the cgroup "_cpu.service" (tests/system/test_platform_facts.py)
    consumer(c, "cpu.service")
    c.run(["unlocker", "grant", "cpu.service", "--format", "hex"])
    ok, report = run_consumer(c, "cpu.service")
    assert ok, journal(c, "cpu.service")
    assert bytes.fromhex(report.splitlines()[2]) == expected(c, "hex")


# M1 (issue 10): root in another unit moves itself into the granted unit's cgroup (creating it when the
# unit is not running: cgroupfs belongs to uid 0), then asks with the granted unit's address. Prints
# "cgroup <errno>" when cgroupfs refuses, else what the broker sent.
JOINER = r"""
import os, socket, sys
unit = sys.argv[1]
target = f"/sys/fs/cgroup/system.slice/{unit}"
try:
    os.makedirs(target, exist_ok=True)
    with open(f"{target}/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
except OSError as e:
    print("cgroup", e.errno); sys.exit(0)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(f"\0{os.urandom(8).hex()}/unit/{unit}/dek")
s.connect("/run/unlocker/sealed-credentials.sock")
data = b""
while chunk := s.recv(1 << 20):
    data += chunk
print(len(data), data.strip(b"\0") == b"", data.hex())
"""


def _join_and_ask(machine, *properties: str) -> str:
    machine.write("/usr/local/lib/joiner.py", JOINER)
    argv = ["systemd-run", "--wait", "--pipe", "-q", "--unit=neighbour.service"]
    argv += [f"--property={p}" for p in properties]
    try:
        return machine.run([*argv, "python3", "/usr/local/lib/joiner.py", "granted.service"]).stdout.decode()
    finally:
        machine.run(["rmdir", "/sys/fs/cgroup/system.slice/granted.service"], check=False)


def test_root_in_another_unit_that_can_write_cgroupfs_gets_the_key(machine):
    """The limit docs/THREAT-MODEL.md states: the cgroup check cannot tell a process that root moved into
    the granted unit's cgroup from systemd's own helper. A root service with cgroupfs writable gets the key
    (sealed, but root can read the host secret: systemd-creds opens it). Also proves that what the broker
    seals is systemd's own format, named for the credential id."""
    out = _join_and_ask(machine).split()
    sealed = bytes.fromhex(out[2])
    opened = machine.run(["systemd-creds", "decrypt", "--name=dek", "-", "-"], input=sealed).stdout
    assert opened == expected(machine, "hex"), out[:2]
    other = machine.run(["systemd-creds", "decrypt", "--name=other", "-", "-"], input=sealed, check=False)
    assert other.returncode != 0


def test_protect_control_groups_keeps_a_root_neighbour_out(machine):
    """The recommendation: ProtectControlGroups=yes makes cgroupfs read-only for a service, so even as
    root it cannot join the granted unit's cgroup (EROFS), and never reaches the broker as that unit."""
    assert _join_and_ask(machine, "ProtectControlGroups=yes").split() == ["cgroup", "30"]


def test_the_admin_guides_listing_names_root_services_that_could_join(machine):
    guide = (Path(__file__).resolve().parents[2] / "docs" / "ADMIN-GUIDE.md").read_text()
    command = guide[guide.index("systemctl show '*.service'"):].split("\n```")[0]
    machine.run(["systemd-run", "--unit=loose.service", "sleep", "300"])
    machine.run(["systemd-run", "--unit=tight.service", "-p", "ProtectControlGroups=yes", "sleep", "300"])
    machine.run(["systemd-run", "--unit=nobodys.service", "-p", "User=nobody", "sleep", "300"])
    try:
        listed = machine.run(["sh", "-c", command]).stdout.decode().split()
    finally:
        machine.systemctl("stop", "loose.service", "tight.service", "nobodys.service")
    assert "Id=loose.service" in listed
    assert not {"Id=tight.service", "Id=nobodys.service", "Id=unlocker.service"} & set(listed)


def test_a_broker_killed_while_requests_wait_fails_them_at_credentials(container):
    """SIGKILL (the OOM killer, a crash) with a granted unit's request waiting: the broker accepts and answers
    in one callback of its loop, so a frozen broker has its requests still queued, never accepted; killed,
    the kernel resets them and the unit fails at CREDENTIALS instead of starting on an empty credential
    (tests/system/test_platform_facts.py has the same fact for any server)."""
    c = container
    setup(c, [("waiting.service", "dek", "hex")])
    start_broker(c)
    pid = c.show("unlocker.service", "MainPID")["MainPID"]
    c.run(["kill", "-STOP", pid])
    try:
        c.systemctl("start", "--no-block", "waiting.service")
        deadline = time.monotonic() + 10
        while c.show("waiting.service", "ActiveState")["ActiveState"] != "activating":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.5)  # systemd's helper connects
    finally:
        c.run(["kill", "-KILL", pid])
    deadline = time.monotonic() + 30
    while c.show("waiting.service", "ActiveState")["ActiveState"] == "activating":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert c.run(["cat", "/var/log/waiting.service.out"], check=False).stdout == b""
    assert failed_at_credentials(c, "waiting.service"), journal(c, "waiting.service")


def test_a_granted_unit_outlives_the_broker_but_cannot_start_without_it(container):
    """The drop-in's Wants= (not Requires=): a running consumer keeps running when the broker stops, and
    a consumer started while no broker serves fails at CREDENTIALS and never runs: systemd 252 fails a
    LoadCredentialEncrypted= whose socket is gone."""
    c = container
    setup(c, [("late.service", "dek", "hex")])
    c.write("/etc/systemd/system/kept.service", "[Service]\nType=exec\nExecStart=/bin/sleep infinity\n")
    c.run(["unlocker", "grant", "kept.service", "--format", "raw"])
    start_broker(c)
    c.systemctl("start", "kept.service")
    kept = c.show("kept.service", "MainPID")["MainPID"]
    c.systemctl("stop", "unlocker.service")
    assert c.show("kept.service", "ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": kept}
    # Without a keystore the broker's ConditionPathExists= fails: the consumer's Wants= pulls it in, it is
    # skipped, and nothing listens on the credential socket (its runtime directory is gone).
    c.run(["mv", "/var/lib/unlocker/keystore", "/var/lib/unlocker/keystore.away"])
    assert c.systemctl("start", "late.service", check=False).returncode != 0
    assert failed_at_credentials(c, "late.service"), journal(c, "late.service")
    assert c.run(["cat", "/var/log/late.service.out"], check=False).stdout == b""
    assert c.show("unlocker.service", "ActiveState")["ActiveState"] == "inactive"
    c.run(["mv", "/var/lib/unlocker/keystore.away", "/var/lib/unlocker/keystore"])
    start_broker(c)
    ok, report = run_consumer(c, "late.service")
    assert ok, journal(c, "late.service")
    assert bytes.fromhex(report.splitlines()[-1]) == expected(c, "hex")
    assert c.show("kept.service", "MainPID")["MainPID"] == kept


def test_without_a_host_secret_units_fail_and_the_next_start_of_the_broker_makes_one(container):
    """Nothing is stored under systemd's credential secret, so losing it loses no data: while it is missing
    the broker refuses (the unit fails at CREDENTIALS) and says what fixes it; the broker's unit makes a new
    one before it starts (ExecStartPre=, systemd-creds setup), and deliveries work again."""
    c = container
    setup(c, [("granted.service", "dek", "hex")])
    start_broker(c)
    c.run(["rm", "/var/lib/systemd/credential.secret"])
    ok, report = run_consumer(c, "granted.service")
    assert not ok and report == "" and failed_at_credentials(c, "granted.service")
    assert "does not exist: run `systemd-creds setup`" in journal(c, None, f"MESSAGE_ID={audit.DENIED}")
    c.systemctl("stop", "unlocker.service")
    start_broker(c)
    assert c.run(["test", "-s", "/var/lib/systemd/credential.secret"], check=False).returncode == 0
    ok, report = run_consumer(c, "granted.service")
    assert ok, journal(c, "granted.service")
    assert bytes.fromhex(report.splitlines()[2]) == expected(c, "hex")
    assert "encrypted media" not in journal(c, "unlocker.service")  # setup is quiet when it works
