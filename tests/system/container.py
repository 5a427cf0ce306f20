"""A real systemd 252, booted as PID 1 in systemd-nspawn, for the system tests and the demo.

build/rootfs (scripts/rootfs) is the read-only base. Every container boots on a fresh overlay of it (and,
optionally, of a session Layer with unlocker installed), so nothing is copied and every test starts clean.
The host has no systemd of its own, so nspawn registers nothing and makes no scope; each container gets a
cgroup of its own that the test creates and removes. Containers are driven with `nsenter -t <its PID 1> -a`
and always stopped by pid, even when a test fails or the boot times out. docs/TESTING.md tells the story.
"""

from __future__ import annotations

import contextlib
import functools
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
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ROOTFS = ROOT / "build" / "rootfs"
WHEELS = ROOT / "build" / "wheels"

# What commands inside the container see: a fixed environment, never the host's (whose PIP_*, PYTHON* and
# PATH into /root/.pyenv mean nothing in there and would make the tests depend on who runs them).
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}

# The host is hybrid (cgroup v1 controllers, cgroup2 at /sys/fs/cgroup/unified). Left alone, nspawn gives the
# container the same hybrid layout; forced unified, the container's systemd runs on cgroup2 only, as on a
# Debian 12 server booted normally. The `0::/system.slice/<unit>` line of /proc/<pid>/cgroup reads the same
# in both modes (docs/TESTING.md).
NSPAWN_ENV = {**ENV, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}

NSPAWN_OPTIONS = [
    # No systemd on the host: nothing to register with (no machined), and no scope to create for us
    # (without --keep-unit nspawn asks the host's systemd for one over D-Bus, and fails).
    "--register=no",
    "--keep-unit",
    # Boot output (a pty inside, as on a real console) goes to nspawn's stdout: a file the error shows when a
    # boot fails. Input never comes: "pipe" would leave the container without any /dev/console at all.
    "--console=read-only",
    # Leave the image's /etc/resolv.conf, /etc/localtime and journal alone.
    "--resolv-conf=off",
    "--timezone=off",
    "--link-journal=no",
    # The broker locks its memory and uses memfd_secret(2): nspawn's default capability set and seccomp
    # filter allow neither, a real server allows both.
    "--capability=CAP_IPC_LOCK",
    # The same for the kernel keyring, where the initrd caches the LUKS passphrase. Keyrings are not
    # namespaced: the container's root shares root's user keyring with the host, so tests that add keys
    # use names of their own and remove them.
    "--system-call-filter=memfd_secret @memlock @keyring",
    # The host's network namespace is shared on purpose: a swtpm on the host's loopback is reachable from
    # inside. So are abstract AF_UNIX names, which live in the network namespace.
]


class ContainerError(AssertionError):
    """A container did not boot, or a command in it failed. An AssertionError, so that pytest shows it as
    a test failure with its output."""


def _host(argv: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess[bytes]:
    p = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    if p.returncode != 0:
        raise ContainerError(f"+ {' '.join(argv)}\nexited {p.returncode}\n{p.stdout.decode(errors='replace')}"
                             f"{p.stderr.decode(errors='replace')}")
    return p


# ---- wheels: built on the host (same Debian, same Python 3.11 ABI), installed offline inside ----

# What a wheel of the project is built from: the tree minus what never goes into it.
_NOT_IN_WHEEL = shutil.ignore_patterns(".git", ".venv", "build", "tests", "docs", "scripts", "bench", ".ci", "debian",
                                       "*.egg-info", "__pycache__", ".*_cache", ".hypothesis")


def _publish(tmp: Path, final: Path) -> None:
    """Renames a finished directory into place; another session may have got there first."""
    try:
        tmp.rename(final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp)


def _tree_hash(tree: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        h.update(path.relative_to(tree).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.cache
def build_wheels() -> Path:
    """A directory with the unlocker wheel and a wheel for every dependency, for `pip install --no-index
    --find-links`. Dependencies are fetched once per pyproject.toml (the only step that needs PyPI); unlocker
    is built from a clean copy of the tree (setuptools' build/lib would carry deleted modules into the
    wheel) whenever its content changes, and at most once a session."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    deps = WHEELS / ("deps-" + hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + b"[examples]").hexdigest()[:16])
    if not deps.exists():
        tmp = Path(tempfile.mkdtemp(dir=WHEELS, prefix=".tmp-"))
        # [examples]: the example apps' database driver, for the consumer tests.
        _host([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(tmp), f"{ROOT}[examples]"], timeout=900)
        for whl in tmp.glob("unlocker-*.whl"):
            whl.unlink()
        _publish(tmp, deps)
    with tempfile.TemporaryDirectory(dir=WHEELS, prefix=".src-") as src:
        tree = Path(src) / "unlocker"
        shutil.copytree(ROOT, tree, ignore=_NOT_IN_WHEEL, symlinks=True)
        own = WHEELS / f"all-{deps.name[5:]}-{_tree_hash(tree)}"
        if not own.exists():
            tmp = Path(tempfile.mkdtemp(dir=WHEELS, prefix=".tmp-"))
            _host([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp), str(tree)], timeout=300)
            for whl in deps.glob("*.whl"):
                os.link(whl, tmp / whl.name)
            _publish(tmp, own)
    return own


def _install_commands(wheels: str) -> list[list[str]]:
    """Installs the wheels in `wheels` (a path inside the container) into the venv /opt/unlocker. The second
    pip run puts this very unlocker wheel in place even when a wheel of the same version is installed."""
    pip = ["/opt/unlocker/bin/pip", "install", "-q", "--disable-pip-version-check", "--no-index",
           "--find-links", wheels]
    return [
        ["python3", "-m", "venv", "/opt/unlocker"],
        [*pip, "unlocker[examples]"],
        [*pip, "--force-reinstall", "--no-deps", "unlocker"],
        ["ln", "-sfn", "/opt/unlocker/bin/unlocker", "/usr/local/bin/unlocker"],
    ]


def _copy_wheels(wheels: Path, root: Path) -> str:
    """Copies the wheels into the container's disk; returns their path inside it."""
    inside = "/var/tmp/unlocker-wheels"
    shutil.rmtree(root / inside.lstrip("/"), ignore_errors=True)
    shutil.copytree(wheels, root / inside.lstrip("/"))
    return inside


def _mount_overlay(lower: str, dir: Path) -> Path:
    upper, work, merged = dir / "upper", dir / "work", dir / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    _host(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}",
           str(merged)])
    return merged


def _mounts_under(dir: Path) -> list[Path]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(line.split()[4].encode().decode("unicode_escape"))  # mountinfo escapes blanks as \040
        if point == dir or dir in point.parents:
            points.append(point)
    return sorted(points, key=lambda p: -len(p.parts))


def _remove_tree(dir: Path) -> None:
    """rm -rf that first unmounts whatever is mounted below `dir`, and refuses if it cannot: a layer killed
    while installing has the host's /proc and /dev bound inside, which rmtree must never reach."""
    for point in _mounts_under(dir):
        _unmount(point)
    if left := _mounts_under(dir):
        raise ContainerError(f"not removing {dir}: still mounted: {', '.join(map(str, left))}")
    shutil.rmtree(dir, ignore_errors=True)


def _unmount(path: Path) -> None:
    for _ in range(50):
        if not os.path.ismount(path):
            return
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    # Still busy: detach it, so that removing the directory cannot reach into the overlay.
    _host(["umount", "--lazy", str(path)])


# ---- what a killed test process leaves behind ----

# Every container and layer directory names its owner (pid and start time) and its cgroups, so that a later
# run can clean up after a test process that was SIGKILLed, and only after one that is gone.
OWNER = "owner.json"
PROPAGATE = Path("/run/systemd/nspawn/propagate")  # nspawn's bookkeeping; only a clean exit removes it


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, starttime


def _claim(dir: Path, name: str, cgroups: list[Path]) -> None:
    me = {"pid": os.getpid(), "start": _start_time(os.getpid()), "name": name, "cgroups": [str(c) for c in cgroups]}
    (dir / OWNER).write_text(json.dumps(me))


def reap_orphans() -> list[str]:
    """Stops the containers and removes the layers of test processes that died without cleaning up
    (SIGKILL, OOM killer). Directories whose owner still runs, and anything not made here, are left alone.
    Returns the names of what it removed."""
    reaped = []
    tmp = Path(tempfile.gettempdir())
    for dir in [*sorted(tmp.glob("unlocker-ut-*")), *sorted(tmp.glob("unlocker-layer-*"))]:
        try:
            owner = json.loads((dir / OWNER).read_text())
        except (OSError, ValueError):
            continue
        if _start_time(owner["pid"]) == owner["start"]:
            continue
        cgroups = [Path(c) for c in owner["cgroups"]]
        _kill_cgroups(cgroups, timeout=10)
        for d in cgroups:
            _remove_cgroup(d)
        shutil.rmtree(PROPAGATE / owner["name"], ignore_errors=True)
        _remove_tree(dir)
        reaped.append(dir.name)
    return reaped


class Layer:
    """unlocker installed in /opt/unlocker on top of build/rootfs: an overlay upper dir made once a
    session (in a chroot, without booting), used as a second lower dir by the containers."""

    def __init__(self, wheels: Path | None = None) -> None:
        self.wheels = wheels
        self.dir = Path(tempfile.mkdtemp(prefix="unlocker-layer-"))
        self.upper = self.dir / "upper"
        _claim(self.dir, self.dir.name, [])

    def build(self) -> Layer:
        wheels = self.wheels or build_wheels()
        merged = _mount_overlay(str(ROOTFS), self.dir)
        try:
            inside = _copy_wheels(wheels, merged)
            mounted = []
            try:
                for api in ("proc", "dev"):
                    _host(["mount", "--bind", f"/{api}", str(merged / api)])
                    mounted.append(merged / api)
                for argv in _install_commands(inside):
                    _host(["chroot", str(merged), *argv], timeout=600, env=ENV)
            finally:
                for path in reversed(mounted):
                    _unmount(path)
            shutil.rmtree(merged / inside.lstrip("/"))
        finally:
            _unmount(merged)
        shutil.rmtree(self.dir / "work", ignore_errors=True)
        return self

    def remove(self) -> None:
        _remove_tree(self.dir)


# ---- the password agent (https://systemd.io/PASSWORD_AGENTS/), run inside the container ----

# argv: list | answer | cancel, then a timeout in seconds and an optional Id= to match. The password comes on
# stdin, never on argv or in the environment. `answer`/`cancel` reply to the first pending question, wait for
# the asker to take the reply (it removes the question file), and print the question as JSON.
AGENT = r"""
import configparser, glob, json, os, socket, sys, time

def pending(want_id):
    for path in sorted(glob.glob("/run/systemd/ask-password/ask.*")):
        cp = configparser.ConfigParser(interpolation=None)
        try:
            with open(path) as f:
                cp.read_file(f)
            ask = cp["Ask"]
            q = {"path": path, "id": ask.get("Id", ""), "message": ask.get("Message", ""),
                 "socket": ask["Socket"], "pid": int(ask.get("PID", "0")),
                 "not_after": int(ask.get("NotAfter", "0")), "echo": ask.get("Echo", "0") == "1"}
        except (OSError, configparser.Error, KeyError, ValueError):
            continue  # gone, or not a question
        if q["not_after"] and q["not_after"] < time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000:
            continue  # expired
        if q["pid"] and not os.path.exists(f"/proc/{q['pid']}"):
            continue  # its asker is dead
        if want_id is None or q["id"] == want_id:
            yield q

mode, timeout = sys.argv[1], float(sys.argv[2])
want_id = sys.argv[3] if len(sys.argv) > 3 else None
if mode == "list":
    print(json.dumps(list(pending(want_id))))
    sys.exit(0)
reply = b"+" + sys.stdin.buffer.read() if mode == "answer" else b"-"
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    q = next(pending(want_id), None)
    if q is None:
        time.sleep(0.02)
        continue
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(reply, q["socket"])
    while os.path.exists(q["path"]):
        if time.monotonic() > deadline:
            sys.exit(f"replied to {q['path']}, but its asker did not take the reply")
        time.sleep(0.02)
    print(json.dumps(q))
    sys.exit(0)
sys.exit(f"no password question{' with Id=' + want_id if want_id else ''} appeared within {timeout} s")
"""

# Writes stdin to argv[1] with mode argv[2], for paths on the container's own mounts (/run, /tmp, ...).
WRITER = r"""
import os, sys
path, mode = sys.argv[1], int(sys.argv[2], 8)
os.makedirs(os.path.dirname(path), exist_ok=True)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
os.fchmod(fd, mode)
with os.fdopen(fd, "wb") as f:
    f.write(sys.stdin.buffer.read())
"""


# ---- cgroups: each container in a cgroup of its own ----

def _cgroup_dirs(name: str) -> list[Path]:
    """Where this container's cgroups go: beside ours in the cgroup2 hierarchy and, on a hybrid host, in the
    name=systemd one. Without this, nspawn (which, with --keep-unit, uses the cgroup it is started in) puts
    every container in the same `/payload` of the root cgroup, where their systemds trip over each other."""
    mounts: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype, options = fields[fields.index("-") + 1], fields[-1]
        if fstype == "cgroup2":
            mounts.setdefault("", Path(fields[4]))
        elif fstype == "cgroup" and "name=systemd" in options.split(","):
            mounts.setdefault("name=systemd", Path(fields[4]))
    dirs = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers in mounts:
            dirs.append(mounts[controllers] / path.lstrip("/") / f"unlocker-{name}")
    return dirs


def _kill_cgroups(cgroups: list[Path], timeout: float) -> None:
    """Kills every process in the cgroup2 tree (cgroup.kill, Linux 5.14), and waits until they are gone."""
    for d in cgroups:
        if (d / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (d / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_has_processes(d) for d in cgroups):
        time.sleep(0.02)


def _has_processes(cgroup: Path) -> bool:
    for dirpath, _, _ in os.walk(cgroup):
        with contextlib.suppress(FileNotFoundError):
            if Path(dirpath, "cgroup.procs").read_text().strip():
                return True
    return False


def _remove_cgroup(top: Path) -> None:
    """rmdir bottom-up: a cgroup is removed with rmdir once it has no process and no child."""
    for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(dirpath)


class Container:
    """A booted systemd in systemd-nspawn; a context manager that always cleans up.

    `leader` is the container's PID 1 as the host sees it, `nspawn_pid` nspawn's own; `root` is the merged
    overlay on the host (the container's `/`, but not its /run, /tmp, /proc, ...).
    """

    def __init__(self, layer: Layer | None = None, name: str | None = None) -> None:
        self.layer = layer
        self.name = name or "ut-" + uuid.uuid4().hex[:10]
        self.dir = Path(tempfile.mkdtemp(prefix=f"unlocker-{self.name}-"))
        self.root = self.dir / "merged"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self._leader_fd: int | None = None  # a pidfd: signals never reach a process that reused the pid
        self.boot_seconds: float | None = None
        self._cgroups: list[Path] = []
        self._console = self.dir / "console.log"
        _claim(self.dir, self.name, [])

    @property
    def nspawn_pid(self) -> int | None:
        return self.nspawn.pid if self.nspawn else None

    # ---- lifecycle ----

    def start(self, timeout: float = 60) -> Container:
        try:
            self._boot(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _boot(self, timeout: float) -> None:
        if not (ROOTFS / ".unlocker-stamp").exists():
            raise ContainerError(f"{ROOTFS} is missing or incomplete: run scripts/rootfs")
        started = time.monotonic()
        lower = f"{self.layer.upper}:{ROOTFS}" if self.layer else str(ROOTFS)
        _mount_overlay(lower, self.dir)
        self._cgroups = _cgroup_dirs(self.name)
        _claim(self.dir, self.name, self._cgroups)
        for d in self._cgroups:
            d.mkdir()
        procs = [d / "cgroup.procs" for d in self._cgroups]

        def enter_cgroups() -> None:  # in the child, before exec: nspawn starts in the container's cgroups
            for p in procs:
                p.write_text("0")

        with open(self._console, "wb") as console:
            self.nspawn = subprocess.Popen(
                ["systemd-nspawn", "--boot", f"--directory={self.root}", f"--machine={self.name}", *NSPAWN_OPTIONS],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, env=NSPAWN_ENV,
                start_new_session=True, preexec_fn=enter_cgroups)
        self._wait_for_boot(started + timeout)
        self.boot_seconds = time.monotonic() - started

    def _find_leader(self) -> int | None:
        """nspawn's descendant that is PID 1 in a pid namespace of its own and runs systemd: the container's
        init, once nspawn's inner child has exec'd it."""
        assert self.nspawn is not None
        todo = [self.nspawn.pid]
        while todo:
            pid = todo.pop()
            with contextlib.suppress(OSError, ValueError):
                status = Path(f"/proc/{pid}/status").read_text()
                nspids = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:"))
                if len(nspids) > 1 and nspids[-1] == "1":
                    return pid if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd" else None
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo += [int(c) for c in (task / "children").read_text().split()]
        return None

    def _wait_for_boot(self, deadline: float) -> None:
        assert self.nspawn is not None
        state = "not started"
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited with {self.nspawn.returncode} while booting\n"
                                     f"--- console ---\n{self.console_text()}")
            if self.leader is None and (leader := self._find_leader()) is not None:
                self._leader_fd = os.pidfd_open(leader)
                self.leader = leader
            if self.leader:
                p = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
                state = p.stdout.decode().strip() or p.stderr.decode().strip()
                if state == "running":
                    return
                if state == "degraded":
                    failed = self.run(["systemctl", "--failed", "--no-legend"], check=False).stdout.decode()
                    raise ContainerError(f"the container booted degraded; failed units:\n{failed}"
                                         f"--- console ---\n{self.console_text()}")
            time.sleep(0.02)
        journal = ""
        if self.leader:
            with contextlib.suppress(ContainerError):
                journal = self.run(["journalctl", "-b", "--no-pager", "-n", "40"], check=False,
                                   timeout=5).stdout.decode()
        raise ContainerError(f"the container did not boot in time (last state: {state})\n"
                             f"--- console ---\n{self.console_text()}\n--- journal ---\n{journal}")

    def console_text(self, limit: int = 5000) -> str:
        with contextlib.suppress(OSError):
            return self._console.read_text(errors="replace")[-limit:]
        return ""

    def stop(self, timeout: float = 15) -> None:
        """Powers the container off (SIGTERM to nspawn), kills it after `timeout`, unmounts its overlay and
        removes everything it left. Safe to call twice, and after a failed start."""
        try:
            self._kill(timeout)
        finally:
            self.nspawn = None
            self.leader = None
            if self._leader_fd is not None:
                os.close(self._leader_fd)
                self._leader_fd = None
            for d in self._cgroups:
                _remove_cgroup(d)
            shutil.rmtree(PROPAGATE / self.name, ignore_errors=True)
            _remove_tree(self.dir)

    def _kill(self, timeout: float) -> None:
        if self.nspawn is not None and self.nspawn.poll() is None:
            # nspawn turns SIGTERM into a clean poweroff of the container.
            self.nspawn.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.nspawn.wait(timeout=timeout)
        # Whatever is left, nspawn included: cgroup.kill (cgroup2) takes the whole tree at once. Killing nspawn
        # alone would not do: its container's systemd would live on, orphaned.
        if self._leader_fd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._leader_fd, signal.SIGKILL)
        if self.nspawn is not None:
            with contextlib.suppress(ProcessLookupError):
                self.nspawn.kill()
            self.nspawn.wait(timeout=timeout)
        _kill_cgroups(self._cgroups, timeout)

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- driving it ----

    def run(self, args: list[str], input: bytes | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        """Runs `args` inside the container, in all its namespaces, as root, with a fixed environment.
        Not in any of its units: the container's systemd does not know the process (use systemd-run for that).
        """
        if self.leader is None:
            raise ContainerError("the container is not running")
        argv = ["nsenter", f"--target={self.leader}", "--all", "--", *args]
        # A session of its own: on a timeout the whole group goes, including the child that nsenter forks
        # to enter the pid namespace.
        with subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                              start_new_session=True) as p:
            try:
                out, err = p.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                out, err = p.communicate()
                raise ContainerError(f"in {self.name}: {args} timed out after {timeout} s\n"
                                     f"{out.decode(errors='replace')}{err.decode(errors='replace')}") from None
        result = subprocess.CompletedProcess(args, p.returncode, out, err)
        if check and result.returncode != 0:
            raise ContainerError(f"in {self.name}: {args} exited {result.returncode}\n"
                                 f"{out.decode(errors='replace')}{err.decode(errors='replace')}")
        return result

    def sh(self, script: str, **kw) -> subprocess.CompletedProcess[bytes]:
        return self.run(["sh", "-ec", script], **kw)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return self.run(["systemctl", *args], check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", unit, "-p", ",".join(props)]).stdout.decode()
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def _on_container_disk(self, path: str) -> bool:
        """Whether `path` is on the overlay (reachable from the host through `root`) rather than on one of the
        container's own mounts (/run, /tmp, /dev/shm, /proc, ...), which only nsenter reaches. A symlink on the
        way counts as "no": the host would resolve it against its own root."""
        if self.leader is None:
            raise ContainerError("the container is not running")
        parts = Path(path.lstrip("/")).parts
        if not path.startswith("/") or ".." in parts or \
                any((self.root.joinpath(*parts[:i])).is_symlink() for i in range(1, len(parts) + 1)):
            return False
        best = "/"
        for line in Path(f"/proc/{self.leader}/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                best = point
        return best == "/"

    def write_file(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        """Writes a file inside the container (root-owned), creating its parent directories."""
        data = data.encode() if isinstance(data, str) else data
        if self._on_container_disk(path):
            target = self.root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            os.chmod(target, mode)
        else:
            self.run(["python3", "-c", WRITER, path, oct(mode)[2:]], input=data)

    def read_file(self, path: str) -> bytes:
        if self._on_container_disk(path):
            return (self.root / path.lstrip("/")).read_bytes()
        return self.run(["cat", "--", path]).stdout

    # The names the first tests were written with.
    write = write_file
    read = read_file

    def install_wheels(self, wheel_dir: Path) -> None:
        """Installs the wheels in `wheel_dir` (see build_wheels) into /opt/unlocker, offline, and links
        /usr/local/bin/unlocker."""
        inside = _copy_wheels(wheel_dir, self.root)
        try:
            for argv in _install_commands(inside):
                self.run(argv, timeout=600)
        finally:
            shutil.rmtree(self.root / inside.lstrip("/"), ignore_errors=True)

    # ---- answering systemd-ask-password ----

    def answer_password(self, password: bytes, timeout: float = 30, cancel: bool = False,
                        question_id: str | None = None) -> dict[str, Any]:
        """Answers the next systemd-ask-password question (the one with Id=`question_id`, if given) as a real
        password agent does, or cancels it. Returns the question: its `id`, `message`, `socket`, `pid`,
        `not_after` (µs, CLOCK_MONOTONIC) and `path`."""
        argv = ["python3", "-c", AGENT, "cancel" if cancel else "answer", str(timeout)]
        p = self.run(argv + ([question_id] if question_id else []), input=password, check=False,
                     timeout=timeout + 10)
        if p.returncode != 0:
            raise ContainerError(f"password agent in {self.name}: {p.stderr.decode(errors='replace').strip()}")
        question: dict[str, Any] = json.loads(p.stdout)
        return question

    def pending_questions(self) -> list[dict[str, Any]]:
        """The password questions waiting for an answer now (expired ones and those of dead askers left out)."""
        questions: list[dict[str, Any]] = json.loads(self.run(["python3", "-c", AGENT, "list", "0"]).stdout)
        return questions
