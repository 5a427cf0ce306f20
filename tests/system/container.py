"""A real systemd 252, booted as PID 1 in systemd-nspawn, for the tests and the demo.

build/rootfs (scripts/rootfs) is the read-only base. A session layer on top of it holds unlocker,
installed offline from wheels built on this host (same Debian, same Python ABI). Every container boots
on a fresh overlay of those two, so nothing is copied and every test starts clean. Containers are driven
with `nsenter -t <its PID 1> -a ...`, and always stopped by pid, even when a test fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROOTFS = ROOT / "build" / "rootfs"
WHEELS = ROOT / "build" / "wheels"
HOST_PYTHON = "/usr/bin/python3"  # Debian's, the same interpreter as in the rootfs

# A password agent, run inside the container (https://systemd.io/PASSWORD_AGENTS/). The password comes
# on stdin, never argv. It answers the first pending question, waits for the asker to take it (the file
# disappears), and prints the question's Id and Message.
AGENT = r"""
import configparser, glob, json, os, socket, sys, time
password = sys.stdin.buffer.read()
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    for path in sorted(glob.glob("/run/systemd/ask-password/ask.*")):
        cp = configparser.ConfigParser(interpolation=None)
        try:
            cp.read(path)
            ask = cp["Ask"]
        except (configparser.Error, KeyError):
            continue
        not_after = int(ask.get("NotAfter", "0"))
        if not_after and not_after < time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000:
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"+" + password if sys.argv[2] == "answer" else b"-", ask["Socket"])
        while os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)
        print(json.dumps({"id": ask.get("Id", ""), "message": ask.get("Message", "")}))
        sys.exit(0)
    time.sleep(0.05)
print("no password question appeared", file=sys.stderr)
sys.exit(3)
"""


def _run_host(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, **kw)


def _source_hash() -> str:
    h = hashlib.sha256()
    for path in sorted([ROOT / "pyproject.toml", *ROOT.glob("unlocker/**/*.py"), *ROOT.glob("units/*")]):
        h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def build_wheels() -> Path:
    """Wheels for unlocker and every dependency: dependencies once per pyproject.toml, unlocker itself
    whenever its source changes. Returns the directory to install from."""
    deps = WHEELS / ("deps-" + hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16])
    if not deps.exists():
        tmp = Path(tempfile.mkdtemp(dir=WHEELS.parent if WHEELS.parent.exists() else None))
        _run_host([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(tmp), str(ROOT)], timeout=900)
        for whl in tmp.glob("unlocker-*.whl"):
            whl.unlink()
        deps.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(deps)
    own = WHEELS / ("unlocker-" + _source_hash())
    if not own.exists():
        tmp = Path(tempfile.mkdtemp(dir=WHEELS))
        _run_host([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp), str(ROOT)], timeout=300)
        tmp.rename(own)
    return own


class Layer:
    """The rootfs plus unlocker installed in /opt/unlocker: an overlay upper dir, made once a session."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="unlocker-layer-"))
        self.upper = self.dir / "upper"

    def build(self) -> None:
        own = build_wheels()
        deps = next(WHEELS.glob("deps-" + hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]))
        merged, work = self.dir / "merged", self.dir / "work"
        for d in (self.upper, merged, work):
            d.mkdir()
        _run_host(["mount", "-t", "overlay", "overlay", "-o",
                   f"lowerdir={ROOTFS},upperdir={self.upper},workdir={work}", str(merged)])
        try:
            wheels = merged / "tmp" / "wheels"
            shutil.copytree(deps, wheels)
            for whl in own.glob("*.whl"):
                shutil.copy(whl, wheels)
            for api in ("proc", "dev"):
                _run_host(["mount", "--bind", f"/{api}", str(merged / api)])
            try:
                chroot = ["chroot", str(merged)]
                _run_host([*chroot, "python3", "-m", "venv", "/opt/unlocker"], timeout=300)
                _run_host([*chroot, "/opt/unlocker/bin/pip", "install", "-q", "--no-index", "--find-links",
                           "/tmp/wheels", "unlocker"], timeout=600)
            finally:
                for api in ("dev", "proc"):
                    subprocess.run(["umount", str(merged / api)], check=False)
            (merged / "usr/local/bin/unlocker").symlink_to("/opt/unlocker/bin/unlocker")
            shutil.rmtree(wheels)
        finally:
            subprocess.run(["umount", str(merged)], check=False)
        shutil.rmtree(work, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class Container:
    def __init__(self, layer: Layer | None = None) -> None:
        self.layer = layer
        self.name = "ut-" + uuid.uuid4().hex[:10]
        self.dir = Path(tempfile.mkdtemp(prefix=f"unlocker-{self.name}-"))
        self.root = self.dir / "merged"
        self.nspawn: subprocess.Popen | None = None
        self.leader: int | None = None

    # ---- lifecycle ----

    def start(self, timeout: float = 60) -> Container:
        lower = f"{self.layer.upper}:{ROOTFS}" if self.layer else str(ROOTFS)
        upper, work = self.dir / "upper", self.dir / "work"
        for d in (upper, work, self.root):
            d.mkdir()
        _run_host(["mount", "-t", "overlay", "overlay", "-o",
                   f"lowerdir={lower},upperdir={upper},workdir={work}", str(self.root)])
        self.console = open(self.dir / "console.log", "wb")
        # --register=no/--keep-unit: the host has no systemd (no machined, no scope to create).
        # The host network is shared: a swtpm on the host's loopback is reachable from inside.
        # nspawn's own seccomp filter knows nothing of memfd_secret and allows mlock only with
        # CAP_IPC_LOCK; a real server has neither restriction, so give the container both.
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "--boot", f"--directory={self.root}", f"--machine={self.name}",
             "--register=no", "--keep-unit", "--console=pipe", "--resolv-conf=off", "--timezone=off",
             "--link-journal=no", "--capability=CAP_IPC_LOCK", "--system-call-filter=memfd_secret @memlock"],
            stdin=subprocess.DEVNULL, stdout=self.console, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            self._wait_for_boot(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _find_leader(self) -> int | None:
        assert self.nspawn is not None
        todo, seen = [self.nspawn.pid], set()
        while todo:
            pid = todo.pop()
            seen.add(pid)
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return pid
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo += [int(c) for c in (task / "children").read_text().split() if int(c) not in seen]
        return None

    def _wait_for_boot(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.nspawn is not None
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited ({self.nspawn.returncode}): {self.console_text()}")
            self.leader = self.leader or self._find_leader()
            if self.leader:
                p = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
                if p.stdout.strip() in (b"running", b"degraded"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"container did not boot within {timeout} s: {self.console_text()}")

    def console_text(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "console.log").read_text(errors="replace")[-3000:]
        return ""

    def stop(self) -> None:
        if self.nspawn is not None and self.nspawn.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.nspawn.pid, signal.SIGTERM)  # nspawn asks the container to power off
            try:
                self.nspawn.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.nspawn.pid, signal.SIGKILL)
                self.nspawn.wait(timeout=15)
        self.nspawn = None
        with contextlib.suppress(AttributeError, OSError):
            self.console.close()
        for _ in range(50):
            if subprocess.run(["umount", str(self.root)], capture_output=True).returncode == 0 or \
                    not os.path.ismount(self.root):
                break
            time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- driving it ----

    def run(self, argv: list[str], input: bytes | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
        assert self.leader is not None
        p = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--", *argv], input=input,
                           capture_output=True, timeout=timeout,
                           stdin=None if input is not None else subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"{argv} exited {p.returncode}:\n{p.stdout.decode()}\n{p.stderr.decode()}")
        return p

    def sh(self, script: str, **kw) -> subprocess.CompletedProcess:
        return self.run(["sh", "-ec", script], **kw)

    def write(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        """A file on the container's disk (not /run or /tmp, which are its own tmpfs)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chmod(target, mode)

    def read(self, path: str) -> bytes:
        return self.run(["cat", path]).stdout

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(["systemctl", *args], check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", unit, "-p", ",".join(props)]).stdout.decode()
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def answer_password(self, password: bytes, timeout: float = 30, cancel: bool = False) -> dict[str, str]:
        """Answer the next systemd-ask-password question, as a real password agent does."""
        p = self.run(["python3", "-c", AGENT, str(timeout), "cancel" if cancel else "answer"],
                     input=password, check=False, timeout=timeout + 10)
        if p.returncode != 0:
            raise AssertionError(f"password agent: {p.stderr.decode().strip()}")
        reply: dict[str, str] = json.loads(p.stdout)
        return reply
