"""Setting up unlocker inside a booted test container, and reading results back."""

from __future__ import annotations

import json
import time

from unlocker.client.formats import Format, KeyVersion, render
from unlocker.keystore.fileformat import parse
from unlocker.keystore.slots import Secrets
from unlocker.keystore.unlock import open_keystore

from .container import Container

PASSPHRASE = b"system test passphrase"

# A consumer that reports what it sees of its credential: filesystem type, mode and owner, and the bytes
# in hex (never the key in a test log when the test passes: the output goes to a file).
CONSUMER = """[Unit]
Description=test consumer {name}

[Service]
Type=oneshot
{user}
ExecStart=/bin/sh -c 'f="$CREDENTIALS_DIRECTORY/{credential}"; stat -f -c %%T "$CREDENTIALS_DIRECTORY"; \\
  stat -c "%%a %%U" "$f"; od -An -v -tx1 "$f" | tr -d " \\\\n"; echo'
StandardOutput=truncate:/var/log/{name}.out
{extra}
"""


def consumer(c: Container, name: str, user: str = "User=nobody", credential: str = "dek", extra: str = "") -> None:
    c.write(f"/etc/systemd/system/{name}",
            CONSUMER.format(name=name, user=user, credential=credential, extra=extra))


def setup(c: Container, grants: list[tuple[str, str, str]], kdf_time: int = 50) -> None:
    """Install the unit, create a keystore, grant, write consumer units. Does not start the broker."""
    c.run(["unlocker", "install", "--no-enable"])
    c.run(["unlocker", "init", "--no-tpm2", "--kdf-time", str(kdf_time), "--passphrase-file", "-"],
          input=PASSPHRASE + b"\n")
    for unit, credential, fmt in grants:
        consumer(c, unit, credential=credential)
        c.run(["unlocker", "grant", unit, "--credential", credential, "--format", fmt, "--no-reload"])
    c.systemctl("daemon-reload")


def start_broker(c: Container, passphrases: tuple[bytes, ...] = (PASSPHRASE,)) -> None:
    c.systemctl("start", "--no-block", "unlocker.service")
    for p in passphrases:
        c.answer_password(p)
    wait_active(c, "unlocker.service")


def wait_active(c: Container, unit: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = c.show(unit, "ActiveState")["ActiveState"]
        if state == "active":
            return
        if state == "failed":
            raise AssertionError(f"{unit} failed:\n" + journal(c, unit))
        time.sleep(0.05)
    raise AssertionError(f"{unit} not active after {timeout} s:\n" + journal(c, unit))


def journal(c: Container, unit: str | None = None, *args: str) -> str:
    argv = ["journalctl", "--no-pager", "-o", "cat", *args] + (["-u", unit] if unit else [])
    return c.run(argv, check=False).stdout.decode(errors="replace")


def expected(c: Container, fmt: str) -> bytes:
    """What a grant of this format must deliver: computed here from the keystore and the passphrase."""
    keystore = parse((c.root / "var/lib/unlocker/keystore").read_bytes())
    opened = open_keystore(keystore, Secrets(bytearray(PASSPHRASE)))
    versions = [KeyVersion(d.id, d.state, opened.dek(d.id)) for d in keystore.deks if d.state != "retired"]
    return bytes(render(Format(fmt), versions))


def run_consumer(c: Container, unit: str) -> tuple[bool, str]:
    """Start a oneshot consumer; (started ok, its report)."""
    ok = c.systemctl("start", unit, check=False).returncode == 0
    report = c.run(["cat", f"/var/log/{unit}.out"], check=False).stdout.decode()
    return ok, report


def failed_at_credentials(c: Container, unit: str) -> bool:
    return "243/CREDENTIALS" in journal(c, unit)


# Runs in the container: a process's Rss by mapping, grouped (anonymous memory, the interpreter, each
# site-packages distribution's shared objects, other libraries), the largest first, as JSON.
SMAPS = r"""
import collections, json, re, sys
groups = collections.Counter()
name = "?"
for line in open(f"/proc/{sys.argv[1]}/smaps"):
    fields = line.split()
    if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
        path = fields[5] if len(fields) > 5 else "[anonymous]"
        m = re.search(r"site-packages/([^/]+)", path)
        name = m.group(1).split(".")[0] if m else path.rsplit("/", 1)[-1].split(".so")[0]
    elif fields[0] == "Rss:":
        groups[name] += int(fields[1])
print(json.dumps([[k, v] for k, v in groups.most_common() if v >= 64]))
"""


def rss_by_mapping(c: Container, pid: str) -> list[list]:
    """[[group, KiB], ...] of the process pid in the container, largest first (SMAPS)."""
    return json.loads(c.run(["python3", "-c", SMAPS, pid]).stdout)
