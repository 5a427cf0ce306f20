"""A real software TPM for the tests: swtpm on free loopback ports, always stopped by its pid.

swtpm runs as a direct child of pytest (swtpm/start --foreground execs it), so teardown can SIGKILL and
reap it by pid, and PR_SET_PDEATHSIG kills it should pytest itself die. Each start measures a fixed
"firmware" event into PCRs 0-7 as firmware does at boot, so the PCRs a slot is sealed to hold real
(non-zero) values that come back after restart(), as they would after a reboot.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_CAP, TPM2_HR, TPM2_HT, TPM2_PT, TPM2_SU, TPMA_PERMANENT

__all__ = ["Swtpm", "boot_digest", "fresh_swtpm", "require_swtpm", "running_swtpm", "swtpm"]

ROOT = Path(__file__).resolve().parent.parent
START = ROOT / "swtpm" / "start"
BOOT_PCRS = range(8)
_PR_SET_PDEATHSIG = 1


def require_swtpm() -> None:
    missing = [tool for tool in ("swtpm", "swtpm_setup") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: install swtpm swtpm-tools (scripts/setup does it)",
                    pytrace=False)


def _free_port_pair() -> int:
    """A port P with P+1 also free (swtpm's control channel). Racy, so start() retries."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000:
            with socket.socket() as s2, contextlib.suppress(OSError):
                s2.bind(("127.0.0.1", port + 1))
                return port
    raise RuntimeError("no free pair of loopback ports")


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Swtpm:
    """One swtpm process and its state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    # -- life cycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start on the ports used before (same TCTI after a restart), or on free ones the first time."""
        for attempt in range(3):
            if not self.port or attempt:
                self.port = _free_port_pair()
            if self._spawn():
                self._measure_boot()
                return
        pytest.fail(f"swtpm did not start; see {self.state_dir}/start.log and swtpm.log", pytrace=False)

    def _spawn(self) -> bool:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / "start.log").open("ab") as log:
            self.process = subprocess.Popen(
                [START, "--foreground", str(self.state_dir), str(self.port)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 30  # the first start manufactures the state (~1 s)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False  # setup failed or the port was taken meanwhile
            if self._answers():
                return True
            time.sleep(0.02)
        self.kill()
        return False

    def _answers(self) -> bool:
        """Our swtpm listens on both ports: not merely something, since another process may have taken
        a port between _free_port_pair() and the bind."""
        assert self.process is not None
        fds = Path(f"/proc/{self.process.pid}/fd")
        sockets = set()
        with contextlib.suppress(OSError):
            for fd in fds.iterdir():
                with contextlib.suppress(OSError):
                    sockets.add(os.readlink(fd))
        listening = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()  # sl local_address rem_address st ... inode
            if fields[3] == "0A" and f"socket:[{fields[9]}]" in sockets:  # 0A: LISTEN
                listening.add(int(fields[1].rsplit(":", 1)[1], 16))
        return {self.port, self.port + 1} <= listening

    def kill(self) -> None:
        """SIGKILL, as a power cut would: no TPM2_Shutdown, nothing saved in order."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def restart(self, orderly: bool = False) -> None:
        """Stop and start again on the same state. Unclean by default (SIGKILL); `orderly` sends
        TPM2_Shutdown(CLEAR) first, as the kernel does on a clean reboot."""
        if orderly:
            with self.esapi() as ctx:
                ctx.shutdown(TPM2_SU.CLEAR)
        self.kill()
        self.start()

    # -- what tests do to the TPM --------------------------------------------------------------------------

    @contextlib.contextmanager
    def esapi(self) -> Iterator[ESAPI]:
        ctx = ESAPI(self.tcti)
        try:
            yield ctx
        finally:
            ctx.close()

    def _measure_boot(self) -> None:
        for index in BOOT_PCRS:
            self.extend_pcr(index, f"test firmware, PCR {index}".encode())

    def extend_pcr(self, index: int, data: bytes = b"firmware update") -> None:
        with self.esapi() as ctx:
            ctx.pcr_event(ESYS_TR.parse(f"PCR{index}"), data)

    def pcr(self, index: int) -> bytes:
        with self.esapi() as ctx:
            _, _, digests = ctx.pcr_read(f"sha256:{index}")
        return bytes(digests[0])

    def clear(self) -> None:
        """TPM2_Clear through the platform hierarchy, as "Clear TPM" in firmware setup does: a new
        storage seed, so every object sealed before is dead."""
        with self.esapi() as ctx:
            ctx.clear(ESYS_TR.RH_PLATFORM)

    def set_da(self, max_tries: int, recovery_time: int = 1000, lockout_recovery: int = 1000) -> None:
        """TPM2_DictionaryAttackParameters with the (empty) lockout authorization."""
        with self.esapi() as ctx:
            ctx.dictionary_attack_parameters(max_tries, recovery_time, lockout_recovery, ESYS_TR.LOCKOUT)

    def reset_da(self) -> None:
        """TPM2_DictionaryAttackLockReset: the failure counter back to 0, out of lockout."""
        with self.esapi() as ctx:
            ctx.dictionary_attack_lock_reset(ESYS_TR.LOCKOUT)

    def da_state(self) -> tuple[int, bool]:
        """(failed tries counted, in lockout), read without going through unlocker."""
        with self.esapi() as ctx:
            _, data = ctx.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.PERMANENT, 15)
        props = {int(p.property): int(p.value) for p in data.data.tpmProperties.tpmProperty}
        return props[TPM2_PT.LOCKOUT_COUNTER], bool(props[TPM2_PT.PERMANENT] & TPMA_PERMANENT.INLOCKOUT)

    def loaded_handles(self) -> list[int]:
        """Transient objects and sessions the TPM holds: with no resource manager, whatever a client
        forgets to flush stays here."""
        handles = []
        with self.esapi() as ctx:
            for first in (TPM2_HR.TRANSIENT, TPM2_HT.LOADED_SESSION << 24, TPM2_HT.SAVED_SESSION << 24):
                _, data = ctx.get_capability(TPM2_CAP.HANDLES, first, 64)
                handles += [int(h) for h in data.data.handles if int(h) >> 24 == first >> 24]
        return handles


def boot_digest(index: int) -> bytes:
    """The value PCR `index` has right after start(), given the events _measure_boot extends."""
    event = hashlib.sha256(f"test firmware, PCR {index}".encode()).digest()
    return hashlib.sha256(bytes(32) + event).digest()


@contextlib.contextmanager
def running_swtpm(state_dir: Path) -> Iterator[Swtpm]:
    require_swtpm()
    tpm = Swtpm(state_dir)
    try:
        tpm.start()
        yield tpm
    finally:
        tpm.kill()


@pytest.fixture(scope="session")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swtpm]:
    """One swtpm for the session, with swtpm's DA defaults (3 tries, 1000 s). Tests that change its
    DA settings or damage its state use fresh_swtpm instead."""
    with running_swtpm(tmp_path_factory.mktemp("swtpm")) as tpm:
        yield tpm


@pytest.fixture
def fresh_swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swtpm]:
    """A swtpm of its own, with freshly manufactured seeds: for tests that lock it out, clear it, kill
    it, or need a TPM other than `swtpm`."""
    with running_swtpm(tmp_path_factory.mktemp("fresh-swtpm")) as tpm:
        yield tpm
