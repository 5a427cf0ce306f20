"""Real UEFI boots of a Debian 12 guest under QEMU (TCG), with swtpm as the guest's TPM device.

scripts/vm-image builds the guest once (kernel, two initrds, root.img, unlocker in /opt/unlocker). A Machine
is one computer across several boots: its TPM (a swtpm state directory), its disk (a qcow2 overlay on the
cached root.img, which is never written) and, optionally, a LUKS2 data volume. Each Boot starts from fresh
UEFI variables (PCR 7 is then the same every boot), gets a small payload disk the test filled, and is driven
through the serial console: `wait_for(regex)`, `type(text)`, `count(regex)`.

The payload disk (ext4, virtio serial "payload") carries `root/`, copied onto the guest's / by a generator
before systemd loads any unit, and `check.sh`, run by vm-check.service after multi-user.target. check.sh
prints `VMRESULT key=value` lines; they go to the console and to out/results.txt on the payload disk, then
the guest powers off and the host reads out/ with debugfs (no loop mount). README-harness.md has the story.

QEMU and swtpm are killed by pid when a boot ends, fails or outlives its hard timeout, and die with the
test process (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
OVMF = Path("/usr/share/OVMF")
SNAKEOIL_CODE, SNAKEOIL_VARS = OVMF / "OVMF_CODE_4M.secboot.fd", OVMF / "OVMF_VARS_4M.snakeoil.fd"
PLAIN_CODE, PLAIN_VARS = OVMF / "OVMF_CODE_4M.fd", OVMF / "OVMF_VARS_4M.fd"

# Host tools and the Debian package each comes from, for the "install X" message.
HOST_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils", "swtpm": "swtpm",
    "debootstrap": "debootstrap", "mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs",
    "cryptsetup": "cryptsetup-bin", "sbsign": "sbsigntool", "openssl": "openssl",
}

# systemd's console password agent: "Please enter passphrase for disk data: (press TAB for no echo)". The
# wall agent's broadcast names the same question but not the TAB hint, so it is not counted.
DRACUT_PROMPT = r"Please enter passphrase for disk [^\n]*\(press TAB for no echo\)"
# initramfs-tools' askpass: "Please unlock disk data: ".
INITRAMFS_TOOLS_PROMPT = r"Please unlock disk [^\n]*:"
# The booted system's systemd banner (the initrd's names dracut and "(Initramfs)").
REAL_ROOT_BANNER = r"Welcome to Debian GNU/Linux 12 \(bookworm\)!"
# Seen on the console when a boot cannot go on; waiting for them to time out would only cost minutes.
FATAL = (r"Kernel panic - not syncing|You are in emergency mode|Entering emergency mode"
         r"|dracut-initqueue\[\d+\]: Warning: Could not boot")

# One VM at a time on this host, across test sessions: two TCG guests on two shared cores each take twice as
# long and run into their timeouts.
BOOT_LOCK = ROOT / "build" / "vm.boot.lock"
BOOT_LOCK_WAIT = 3600

_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\r")
_PR_SET_PDEATHSIG = 1


class VmError(AssertionError):
    """A boot failed, timed out or produced no result. An AssertionError, so pytest shows it as a failure."""


def require_host_tools() -> None:
    """Raises VmError naming the Debian packages to install when a tool or the OVMF firmware is missing."""
    missing = {pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None}
    if not all(p.exists() for p in (PLAIN_CODE, PLAIN_VARS, SNAKEOIL_CODE, SNAKEOIL_VARS)):
        missing.add("ovmf")
    if missing:
        raise VmError(f"VM tests need host packages: install {' '.join(sorted(missing))} (apt-get install ...)")


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _host(argv: list[str], input: bytes | None = None, timeout: float = 120) -> bytes:
    p = subprocess.run(argv, input=input, capture_output=True, timeout=timeout,
                       stdin=None if input is not None else subprocess.DEVNULL)
    if p.returncode != 0:
        raise VmError(f"+ {' '.join(argv)}\nexited {p.returncode}\n{p.stdout.decode(errors='replace')}"
                      f"{p.stderr.decode(errors='replace')}")
    return p.stdout


# ---- the image ----

@dataclass(frozen=True)
class Image:
    """One build of scripts/vm-image (a directory under build/vm/)."""

    dir: Path

    @classmethod
    def build(cls, wheels: Path) -> tuple[Image, float]:
        """Builds the image for these wheels, or finds it cached. Returns it and the seconds it took."""
        started = time.monotonic()
        p = subprocess.run([str(ROOT / "scripts" / "vm-image"), str(wheels)], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=1800)
        if p.returncode != 0:
            raise VmError(f"scripts/vm-image failed ({p.returncode}):\n{p.stderr}")
        return cls(Path(p.stdout.strip().splitlines()[-1])), time.monotonic() - started

    @property
    def luks_uuid(self) -> str:
        return (self.dir / "luks-uuid").read_text().strip()

    def initrd(self, name: str) -> Path:
        path = self.dir / f"initrd-{name}.img"
        if not path.exists():
            raise VmError(f"no initrd {name!r} in {self.dir}: dracut or initramfs-tools")
        return path


# ---- the payload disk ----

class Payload:
    """What one boot brings along: files for the guest's / (`root/`) and the check script (`check.sh`)."""

    def __init__(self, dir: Path, check: str | None = None) -> None:
        self.dir = dir
        (dir / "root").mkdir(parents=True, exist_ok=True)
        (dir / "out").mkdir(exist_ok=True)
        if check is not None:
            self.write("/check.sh", check, mode=0o755, into_root=False)

    def write(self, path: str, data: str | bytes, mode: int = 0o644, into_root: bool = True) -> None:
        """Puts a file at `path` in the guest (copied onto / before systemd starts), or on the payload itself."""
        target = (self.dir / "root" if into_root else self.dir) / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chmod(target, mode)

    def enable(self, unit: str, target: str = "multi-user.target") -> None:
        """Enables a unit of the image (or of the payload) for this boot, as `systemctl enable` would."""
        wants = self.dir / "root" / "etc/systemd/system" / f"{target}.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")

    def make_image(self, path: Path, mib: int = 32) -> None:
        _host(["mkfs.ext4", "-q", "-F", "-L", "payload", "-E", "root_owner=0:0", "-d", str(self.dir),
               str(path), f"{mib}M"])


# ---- a machine and its boots ----

class Machine:
    """One computer: a TPM, a disk and optionally a LUKS2 data volume, kept across its boots."""

    def __init__(self, image: Image, dir: Path) -> None:
        self.image = image
        self.dir = dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tpm_state = dir / "tpm"
        self.tpm_state.mkdir(exist_ok=True)
        # Writes go to an overlay, so the cached image serves every machine and later boots see earlier ones'.
        self.disk = dir / "root.qcow2"
        _host(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.dir / "root.img"),
               str(self.disk)])
        self.luks: Path | None = None
        self.boots: list[Boot] = []

    def add_luks_volume(self, passphrase: bytes, mib: int = 32) -> Path:
        """A LUKS2 volume with the image's fixed UUID (its crypttab and rd.luks.name name it). No file system
        inside: this host has no device-mapper to make one. Argon2id at a small cost: the guest is slow."""
        self.luks = self.dir / "luks.img"
        with open(self.luks, "wb") as f:
            f.truncate(mib << 20)
        # The passphrase goes on stdin (--key-file=-), never on the command line.
        _host(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--uuid", self.image.luks_uuid,
               "--pbkdf", "argon2id", "--pbkdf-memory", "65536", "--pbkdf-force-iterations", "4",
               "--key-file=-", str(self.luks)], input=passphrase)
        return self.luks

    def boot(self, payload: Payload | None = None, initrd: str = "dracut", secure_boot: bool = False,
             cmdline: str = "", timeout: float = 600) -> Boot:
        """Starts a boot; use it as a context manager, which always kills QEMU and swtpm."""
        boot = Boot(self, len(self.boots) + 1, payload, initrd, secure_boot, cmdline, timeout)
        self.boots.append(boot)
        return boot.start()

    def close(self) -> None:
        for boot in self.boots:
            boot.kill()


class Boot:
    """One run of the machine, from power-on to power-off."""

    def __init__(self, machine: Machine, number: int, payload: Payload | None, initrd: str, secure_boot: bool,
                 cmdline: str, timeout: float) -> None:
        self.machine = machine
        self.dir = machine.dir / f"boot-{number}"
        self.dir.mkdir()
        self.payload = payload
        self.initrd = machine.image.initrd(initrd)
        self.initrd_name = initrd
        self.secure_boot = secure_boot
        self.cmdline = cmdline
        self.timeout = timeout
        self.serial_log = self.dir / "serial.log"
        self.payload_image: Path | None = None
        self.qemu: subprocess.Popen[bytes] | None = None
        self.swtpm: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.wall_seconds: float | None = None  # power-on to QEMU's exit
        self.marks: list[tuple[str, float]] = []  # (pattern, seconds since power-on) of each wait_for
        self._sockdir = Path(tempfile.mkdtemp(prefix="unlocker-vm-"))  # short: unix socket paths max 108 bytes
        self._buf = bytearray()
        self._text = ""
        self._text_len = 0
        self._cursor = 0
        self._eof = False
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._watchdog: threading.Timer | None = None
        self._timed_out = False
        self._lock: IO[bytes] | None = None

    # ---- power on ----

    def _kernel_cmdline(self) -> str:
        args = ["root=/dev/vda", "rw", "console=ttyS0",
                # The image's crypttab names the data volume for initramfs-tools. In the booted system it is
                # ignored, so that only the initrd can have opened the volume (and a boot without one does not
                # wait for it).
                "luks.crypttab=no",
                # A panic ends QEMU at once (-no-reboot) instead of waiting for the timeout.
                "panic=-1"]
        if self.machine.luks is not None and self.initrd_name == "dracut":
            args.append(f"rd.luks.name={self.machine.image.luks_uuid}=data")
        return " ".join([*args, self.cmdline]).strip()

    def _qemu_argv(self, vars: Path, tpm_socket: Path) -> list[str]:
        image = self.machine.image
        code = SNAKEOIL_CODE if self.secure_boot else PLAIN_CODE
        kernel = image.dir / ("vmlinuz.signed" if self.secure_boot else "vmlinuz")
        argv = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                # KVM here is PVM, which boots no stock kernel or firmware: TCG, one vCPU (the host has two).
                "-machine", f"q35,accel=tcg,smm={'on' if self.secure_boot else 'off'}",
                "-cpu", "max", "-smp", "1", "-m", "1024",
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                "-drive", f"if=pflash,format=raw,unit=1,file={vars}",
                "-chardev", f"socket,id=chrtpm,path={tpm_socket}",
                "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0",
                "-kernel", str(kernel), "-initrd", str(self.initrd), "-append", self._kernel_cmdline(),
                "-chardev", "stdio,id=ser0,signal=off", "-serial", "chardev:ser0",
                "-monitor", "none", "-nic", "none"]
        if self.secure_boot:
            # The secboot firmware keeps its variables in SMM-protected flash.
            argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        # Virtio disks in this order are vda, vdb, vdc; the serials name them for the guest (payload-dev).
        disks = [("root", self.machine.disk, "qcow2")]
        if self.machine.luks is not None:
            disks.append(("luks", self.machine.luks, "raw"))
        if self.payload_image is not None:
            disks.append(("payload", self.payload_image, "raw"))
        for name, path, fmt in disks:
            argv += ["-drive", f"file={path},if=none,id={name},format={fmt},cache=unsafe",
                     "-device", f"virtio-blk-pci,drive={name},serial={name}"]
        return argv

    def start(self) -> Boot:
        try:
            self._start()
        except BaseException:
            self.kill()
            raise
        return self

    def _take_boot_lock(self) -> None:
        """Waits for any other boot on this host to end (a lock only this process holds: it goes with it)."""
        BOOT_LOCK.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(BOOT_LOCK, "wb")
        deadline = time.monotonic() + BOOT_LOCK_WAIT
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise VmError(f"another VM boot held {BOOT_LOCK} for {BOOT_LOCK_WAIT} s") from None
                time.sleep(1)

    def _start(self) -> None:
        self._take_boot_lock()
        vars = self.dir / "OVMF_VARS.fd"  # fresh every boot: PCR 7 measures the variables
        shutil.copyfile(SNAKEOIL_VARS if self.secure_boot else PLAIN_VARS, vars)
        if self.payload is not None:
            self.payload_image = self.dir / "payload.img"
            self.payload.make_image(self.payload_image)
        tpm_socket = self._sockdir / "swtpm.sock"
        # No --flags startup-*: the firmware sends TPM2_Startup, as on a real machine. --terminate: swtpm
        # exits when QEMU closes the connection. The state directory is the machine's, kept across boots.
        with open(self.dir / "swtpm.stderr", "wb") as stderr:
            self.swtpm = subprocess.Popen(
                ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.machine.tpm_state}",
                 "--ctrl", f"type=unixio,path={tpm_socket}", "--terminate",
                 "--log", f"file={self.dir / 'swtpm.log'},level=1"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 10
        while not tpm_socket.exists():
            if self.swtpm.poll() is not None or time.monotonic() > deadline:
                raise VmError(f"swtpm did not start:\n{(self.dir / 'swtpm.stderr').read_text(errors='replace')}")
            time.sleep(0.05)
        argv = self._qemu_argv(vars, tpm_socket)
        (self.dir / "qemu.argv").write_text(" ".join(argv) + "\n")
        self.started = time.monotonic()
        with open(self.dir / "qemu.stderr", "wb") as stderr:
            self.qemu = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        self._reader = threading.Thread(target=self._read_serial, name=f"serial-{self.dir.name}", daemon=True)
        self._reader.start()
        # The hard limit holds even when the test itself is stuck somewhere else.
        self._watchdog = threading.Timer(self.timeout, self._time_out)
        self._watchdog.daemon = True
        self._watchdog.start()

    # ---- the serial console ----

    def _read_serial(self) -> None:
        assert self.qemu is not None and self.qemu.stdout is not None
        fd = self.qemu.stdout.fileno()
        with open(self.serial_log, "wb") as log:
            while chunk := os.read(fd, 65536):
                log.write(chunk)
                log.flush()
                with self._cond:
                    self._buf += chunk
                    self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def text(self) -> str:
        """Everything the console printed so far, without colours and carriage returns."""
        with self._cond:
            if self._text_len != len(self._buf):
                self._text_len = len(self._buf)
                self._text = _ANSI.sub(b"", bytes(self._buf)).decode(errors="replace")
            return self._text

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match[str]:
        """Waits until the console prints `pattern` (a regex) after the previous match; returns the match.
        Fails at once on a kernel panic or an emergency shell, and when QEMU exits first."""
        regex, fatal = re.compile(pattern), re.compile(FATAL)
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                over = self._eof or self._timed_out  # read before the text: the last output still counts
            text = self.text()
            if m := regex.search(text, self._cursor):
                self._cursor = m.end()
                self.marks.append((pattern, round(self.elapsed(), 1)))
                return m
            if f := fatal.search(text, self._cursor):
                raise self.error(f"the guest failed ({f.group(0)!r}) while waiting for {pattern!r}")
            if over or time.monotonic() > deadline:
                break
            with self._cond:
                if not self._eof:
                    self._cond.wait(timeout=1)
        why = "QEMU exited" if self._eof and not self._timed_out else "timed out"
        raise self.error(f"{why} after {self.elapsed():.0f} s while waiting for {pattern!r}")

    def type(self, text: str | bytes) -> None:
        """Types on the serial console (add the newline yourself)."""
        assert self.qemu is not None and self.qemu.stdin is not None
        self.qemu.stdin.write(text.encode() if isinstance(text, str) else text)
        self.qemu.stdin.flush()

    def answer(self, prompt: str, text: str, timeout: float = 300) -> re.Match[str]:
        """Waits for `prompt`, then types `text` and Enter."""
        m = self.wait_for(prompt, timeout)
        # The agent switches the terminal to non-canonical mode after printing the prompt; what arrives
        # before that could be flushed.
        time.sleep(1)
        self.type(text + "\n")
        return m

    def count(self, pattern: str) -> int:
        """How many times the console printed `pattern` so far."""
        return len(re.findall(pattern, self.text()))

    # ---- power off ----

    def wait_poweroff(self, timeout: float | None = None) -> float:
        """Waits for the guest to power off (QEMU exits 0); returns the boot's wall time in seconds."""
        assert self.qemu is not None
        remaining = self.timeout - self.elapsed() if timeout is None else timeout
        try:
            status = self.qemu.wait(timeout=max(remaining, 0))
        except subprocess.TimeoutExpired:
            self.kill()
            raise self.error(f"no power-off after {self.elapsed():.0f} s") from None
        if self._reader is not None:
            self._reader.join(timeout=10)
        self.wall_seconds = round(self.elapsed(), 1)
        self.kill()
        if self._timed_out:
            raise self.error(f"killed after the hard timeout of {self.timeout:.0f} s")
        if status != 0:
            raise self.error(f"QEMU exited {status}: {(self.dir / 'qemu.stderr').read_text(errors='replace')}")
        (self.dir / "times.json").write_text(json.dumps({"wall_seconds": self.wall_seconds, "marks": self.marks}))
        return self.wall_seconds

    def _time_out(self) -> None:
        self._timed_out = True
        self.kill()

    def kill(self) -> None:
        """Kills QEMU and swtpm (by pid) and reaps them. Safe to call twice, from any thread."""
        if self._watchdog is not None and threading.current_thread() is not self._watchdog:
            self._watchdog.cancel()
        for proc in (self.qemu, self.swtpm):
            if proc is None:
                continue
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if self.qemu is not None and self.qemu.stdin is not None:
            with contextlib.suppress(OSError):
                self.qemu.stdin.close()
        with self._cond:
            self._cond.notify_all()
        shutil.rmtree(self._sockdir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()  # releases the boot lock
            self._lock = None

    def __enter__(self) -> Boot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    # ---- what the guest left ----

    def read_out(self, name: str) -> str:
        """A file the guest wrote to out/ on the payload disk (after power-off), read with debugfs."""
        if self.payload_image is None:
            raise VmError("this boot had no payload disk")
        p = subprocess.run(["debugfs", "-R", f"cat /out/{name}", str(self.payload_image)], capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=60)
        # debugfs exits 0 even when the file is missing; it says so on stderr.
        if p.returncode != 0 or b"File not found" in p.stderr:
            raise self.error(f"no out/{name} on the payload disk: {p.stderr.decode(errors='replace').strip()}")
        return p.stdout.decode(errors="replace")

    def results(self) -> dict[str, str]:
        """The `VMRESULT key=value` lines check.sh printed (out/results.txt)."""
        found = dict(re.findall(r"^VMRESULT ([\w.-]+)=(.*)$", self.read_out("results.txt"), re.M))
        if not found:
            raise self.error("check.sh reported nothing")
        return found

    def error(self, message: str, lines: int = 150) -> VmError:
        """An error with the end of the serial console and where the whole log is."""
        tail = "\n".join(self.text().splitlines()[-lines:])
        return VmError(f"boot {self.dir.name} ({self.initrd_name}, secure_boot={self.secure_boot}): {message}\n"
                       f"--- last {lines} lines of the serial console (full log: {self.serial_log}) ---\n{tail}")
