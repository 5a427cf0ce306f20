"""A real software TPM for the tests: swtpm on free loopback ports, always stopped by its pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port_pair() -> int:
    """A port P with P+1 also free (swtpm's control channel)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000:
            with socket.socket() as s2, contextlib.suppress(OSError):
                s2.bind(("127.0.0.1", port + 1))
                return port
    raise RuntimeError("no free port pair")


class Swtpm:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = _free_port_pair()
        self.pid: int | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> None:
        subprocess.run([str(ROOT / "swtpm" / "start"), str(self.state_dir), str(self.port)],
                       check=True, capture_output=True, timeout=60)
        self.pid = int((self.state_dir / "swtpm.pid").read_text())

    def kill(self) -> None:
        """SIGKILL, as a power cut would: no chance to save volatile state."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            for _ in range(100):
                if not Path(f"/proc/{self.pid}").exists():
                    break
                time.sleep(0.02)
            self.pid = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def esapi(self):
        from tpm2_pytss import ESAPI
        return ESAPI(self.tcti)

    def extend_pcr(self, index: int, data: bytes = b"firmware update") -> None:
        from tpm2_pytss.constants import ESYS_TR
        with self.esapi() as ctx:
            ctx.pcr_event(ESYS_TR.parse(f"PCR{index}"), data)

    def clear(self) -> None:
        """TPM2_Clear through the platform hierarchy: new storage seed, every old blob is dead."""
        from tpm2_pytss.constants import ESYS_TR
        with self.esapi() as ctx:
            ctx.clear(ESYS_TR.RH_PLATFORM)

    def set_da(self, max_tries: int, recovery_time: int = 1000, lockout_recovery: int = 1000) -> None:
        from tpm2_pytss.constants import ESYS_TR
        with self.esapi() as ctx:
            ctx.dictionary_attack_parameters(max_tries, recovery_time, lockout_recovery, ESYS_TR.LOCKOUT)

    def reset_da(self) -> None:
        from tpm2_pytss.constants import ESYS_TR
        with self.esapi() as ctx:
            ctx.dictionary_attack_lock_reset(ESYS_TR.LOCKOUT)


def _require_swtpm() -> None:
    missing = [tool for tool in ("swtpm", "swtpm_setup") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install swtpm and swtpm-tools (scripts/setup does it)")


@pytest.fixture(scope="session")
def swtpm(tmp_path_factory):
    """One swtpm for the session. Tests that change its DA settings reset them."""
    _require_swtpm()
    tpm = Swtpm(tmp_path_factory.mktemp("swtpm"))
    tpm.start()
    try:
        yield tpm
    finally:
        tpm.kill()


@pytest.fixture
def fresh_swtpm(tmp_path):
    """A swtpm of its own, for tests that lock it out, clear it or kill it."""
    _require_swtpm()
    tpm = Swtpm(tmp_path / "swtpm")
    tpm.start()
    try:
        yield tpm
    finally:
        tpm.kill()
