"""`scripts/demo --vm`: the real boot, in a virtual machine.

A Debian 12 guest under QEMU (UEFI firmware, a swtpm TPM device, Debian's own kernel) with a LUKS data
volume and unlocker installed. The LUKS prompt appears on the serial console; one passphrase opens the
volume in the initrd and then unlocker's keystore from the passphrase the initrd cached; the granted service
prints its key's fingerprint; the guest powers off. The guest image is built once (about 4-5 minutes);
a boot takes 2-4 minutes under software emulation.

    scripts/demo --vm [--passphrase-file PATH]
"""

from __future__ import annotations

import argparse
import getpass
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests.vm's conftest-free modules import `system.container`

from tests.system.container import build_wheels  # noqa: E402
from tests.vm.guest import keystore_payload  # noqa: E402
from tests.vm.machine import DRACUT_PROMPT, Image, Machine, require_host_tools  # noqa: E402

DEMO_UNIT = """[Unit]
Description=demo app that may read the data key
[Service]
Type=oneshot
RemainAfterExit=yes
DynamicUser=yes
StandardOutput=journal+console
ExecStart=/bin/sh -c 'echo "demo-app: credential $CREDENTIALS_DIRECTORY/dek, $(stat -c %%s $CREDENTIALS_DIRECTORY/dek) \
bytes, sha256 $(sha256sum < $CREDENTIALS_DIRECTORY/dek | cut -c1-16)"'
[Install]
WantedBy=multi-user.target
"""

CHECK = r"""
echo "== unlocker status"; unlocker status
echo "== root's user keyring (the initrd's key only; unlocker writes none)"; grep ' user ' /proc/keys || true
"""


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passphrase-file", type=Path, help="answer the prompt from this file instead")
    args = parser.parse_args()
    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(1))
    if args.passphrase_file is not None:
        passphrase = args.passphrase_file.read_text().rstrip("\n")
    elif sys.stdin.isatty():
        passphrase = getpass.getpass("Choose a passphrase for the demo's LUKS volume and keystore: ")
        if getpass.getpass("Again: ") != passphrase:
            parser.error("the two passphrases differ")
    else:
        parser.error("no terminal to type the passphrase on: pass --passphrase-file PATH")
    require_host_tools()
    say("building (or finding) the Debian 12 guest image: scripts/vm-image")
    image, seconds = Image.build(build_wheels())
    print(f"{image.dir} ({seconds:.0f} s)")
    with tempfile.TemporaryDirectory(prefix="unlocker-demo-vm-") as tmp:
        machine = Machine(image, Path(tmp) / "machine")
        try:
            say("a LUKS2 data volume and a keystore with the same passphrase; demo-app.service granted")
            machine.add_luks_volume(passphrase.encode())
            payload = keystore_payload(Path(tmp) / "guest", CHECK, conf="[prompt]\naccept-cached = yes\n",
                                       granted_unit=DEMO_UNIT, passphrase=passphrase)
            say("power on (UEFI, TPM device, dracut initrd); the serial console follows")
            with machine.boot(payload, initrd="dracut") as boot:
                shown = 0

                def follow() -> None:
                    nonlocal shown
                    text = boot.text()
                    sys.stdout.write(text[shown:])
                    sys.stdout.flush()
                    shown = len(text)

                boot.wait_for(DRACUT_PROMPT)
                follow()
                print("\n[demo: typing the passphrase at the LUKS prompt above]", flush=True)
                time.sleep(1)
                boot.type(passphrase + "\n")
                while boot.qemu is not None and boot.qemu.poll() is None:
                    follow()
                    time.sleep(0.5)
                follow()
                seconds = boot.wait_poweroff()
            say(f"powered off after {seconds:.0f} s: one prompt, for LUKS; unlocker used the initrd's cache")
        finally:
            machine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
