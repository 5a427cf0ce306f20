"""The main job on a ready-made default: a throw-away systemd machine with a software TPM.

Boots Debian 12's systemd in systemd-nspawn, starts swtpm, installs unlocker, creates a tpm2+passphrase
keystore, grants demo-app.service, and unlocks at the real systemd-ask-password prompt: you type the
passphrase, as you would over ssh with systemd-tty-ask-password-agent. Then demo-app.service reads its
credential, and intruder.service, which asks for the key without a grant, fails.

    scripts/demo [--passphrase-file PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.swtpm_fixture import Swtpm  # noqa: E402
from tests.system.container import Container, Layer  # noqa: E402

APP = """[Unit]
Description=demo app that may read the data key

[Service]
Type=oneshot
DynamicUser=yes
ExecStart=/usr/bin/python3 /usr/local/bin/demo-app.py
"""
APP_SCRIPT = """import hashlib, json, os
path = os.path.join(os.environ["CREDENTIALS_DIRECTORY"], "dek")
st, fs = os.stat(path), os.statvfs(path)
keys = json.load(open(path))
print(f"credential: {path} (mode {st.st_mode & 0o777:o}, owner uid {st.st_uid}, this process uid {os.getuid()})")
print(f"key versions: {[k['id'] for k in keys['keys']]}, primary {keys['primary']}")
print(f"fingerprint: {hashlib.sha256(open(path, 'rb').read()).hexdigest()[:16]} (sha256 of the credential)")
"""
INTRUDER = """[Unit]
Description=a service that asks for the key without a grant

[Service]
Type=oneshot
LoadCredentialEncrypted=dek:/run/unlocker/sealed-credentials.sock
ExecStart=/bin/cat ${CREDENTIALS_DIRECTORY}/dek
"""


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(c: Container, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    print("# " + " ".join(argv), flush=True)
    p = c.run(argv, check=check)
    sys.stdout.write((p.stdout + p.stderr).decode(errors="replace"))
    return p


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passphrase-file", type=Path, help="answer the prompts from this file instead")
    args = parser.parse_args()
    interactive = args.passphrase_file is None
    # A closed terminal or a kill must still stop the machine and the TPM (the ExitStack below).
    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(1))
    if interactive and not sys.stdin.isatty():
        parser.error("no terminal to type the passphrase on: pass --passphrase-file PATH")
    with contextlib.ExitStack() as stack:
        say("starting a software TPM (swtpm) on 127.0.0.1")
        tpm = Swtpm(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="unlocker-demo-tpm-"))))
        tpm.start()
        stack.callback(tpm.kill)
        print(f"TCTI {tpm.tcti}")

        say("booting a throw-away Debian 12 systemd in systemd-nspawn, with unlocker installed")
        layer = Layer()
        stack.callback(layer.remove)
        layer.build()
        c = stack.enter_context(Container(layer))
        print(f"machine {c.name}: systemd {c.run(['systemctl', '--version']).stdout.split()[1].decode()} is up")

        say("installing unlocker.service and creating the keystore (tpm2+passphrase, with a recovery key)")
        c.write("/etc/unlocker/unlocker.conf", f"[tpm2]\ndevice = {tpm.tcti}\n")
        show(c, ["unlocker", "install"])
        if interactive:
            print("Choose a passphrase for the demo keystore (asked twice):", flush=True)
            subprocess.run(["nsenter", "-t", str(c.leader), "-a", "--", "unlocker", "init", "--kdf-time", "1000",
                            "--recovery-key"], check=True)
        else:
            c.run(["unlocker", "init", "--kdf-time", "1000", "--passphrase-file", "-"],
                  input=args.passphrase_file.read_bytes())
        show(c, ["unlocker", "slots"])

        say("granting demo-app.service (json format); intruder.service gets no grant")
        c.write("/etc/systemd/system/demo-app.service", APP)
        c.write("/usr/local/bin/demo-app.py", APP_SCRIPT)
        c.write("/etc/systemd/system/intruder.service", INTRUDER)
        show(c, ["unlocker", "grant", "demo-app.service", "--format", "json"])

        say("starting unlocker.service: it asks for the passphrase through systemd-ask-password")
        c.systemctl("start", "--no-block", "unlocker.service")
        if interactive:
            print("Type the passphrase at the prompt below (this is systemd-tty-ask-password-agent, as over ssh):",
                  flush=True)
            # --query answers the questions pending now, so wait until the service has asked.
            while not c.run(["sh", "-c", "ls /run/systemd/ask-password/ask.* 2>/dev/null"], check=False).stdout:
                time.sleep(0.1)
            subprocess.run(["nsenter", "-t", str(c.leader), "-a", "--", "systemd-tty-ask-password-agent",
                            "--query"], check=False)
        else:
            asked = c.answer_password(args.passphrase_file.read_bytes().rstrip(b"\n"))
            print(f"prompt: {asked['message']}  (answered from {args.passphrase_file})")
        from tests.system.helpers import wait_active
        wait_active(c, "unlocker.service", timeout=60)
        show(c, ["systemctl", "status", "--no-pager", "--lines=0", "unlocker.service"], check=False)

        say("demo-app.service reads the key from its own credential")
        c.systemctl("start", "demo-app.service")
        show(c, ["journalctl", "--no-pager", "-o", "cat", "-u", "demo-app.service", "--grep", "^(credential|key|finger)"])

        say("intruder.service asks for the key without a grant, and fails")
        c.systemctl("start", "intruder.service", check=False)
        show(c, ["journalctl", "--no-pager", "-o", "cat", "-u", "intruder.service"])
        # systemd only sees a reply that does not decrypt; the broker's audit record says why it refused.
        from unlocker.service import audit
        show(c, ["journalctl", "--no-pager", "-o", "cat", f"MESSAGE_ID={audit.DENIED}"])

        say("unlocker status")
        show(c, ["unlocker", "status"])
        say("done: stopping the machine and the TPM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
