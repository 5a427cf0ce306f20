"""Real Tang servers for the tests: Debian's tangd under socat on free loopback ports (Debian 12's tang 11
has no standalone mode; clevis's own tests run it this way), keys from tangd-keygen. Each server runs in
its own process group, so teardown stops socat and every tangd it forked by that group's id.

`silent_server` is the one fault real tangd cannot produce: a listener that accepts and never answers
(what clevis hangs on forever). It is a real TCP listener in a thread, not a mock of the client.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TANGD = "/usr/libexec/tangd"
KEYGEN = "/usr/libexec/tangd-keygen"
ROTATE = "/usr/libexec/tangd-rotate-keys"


def require_tang() -> None:
    missing = [t for t in (TANGD, "socat", "clevis", "jose") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install tang clevis jose socat (scripts/setup does it)",
                    pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Tang:
    db: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Tang:
        log = (self.db.parent / f"{self.db.name}.log").open("ab")
        self.proc = subprocess.Popen(
            ["socat", f"TCP4-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork", f"EXEC:{TANGD} {self.db}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s, contextlib.suppress(OSError):
                s.connect(("127.0.0.1", self.port))
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"tang on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this server was started in: socat and its tangds
        self.proc.wait(timeout=10)
        self.proc = None

    def signing_thp(self) -> str:
        """The S256 thumbprint of the signing key, as an admin reads it on the server (tang-show-keys)."""
        for key in sorted(self.db.glob("*.jwk")):
            if "verify" in json.loads(key.read_text()).get("key_ops", []):
                return key.stem
        raise AssertionError("no signing key")

    def rotate(self) -> None:
        subprocess.run([ROTATE, "-d", str(self.db)], check=True, capture_output=True)

    def delete_hidden_keys(self) -> None:
        for key in self.db.glob(".*.jwk"):
            key.unlink()

    def config(self) -> dict[str, str]:
        return {"url": self.url, "thp": self.signing_thp()}


@pytest.fixture
def tang_servers(tmp_path: Path) -> Iterator[list[Tang]]:
    """Three running Tang servers, each with its own keys; all stopped by process group at the end."""
    require_tang()
    servers: list[Tang] = []
    try:
        for i in range(3):
            db = tmp_path / f"tang{i}"
            db.mkdir()
            subprocess.run([KEYGEN, str(db)], check=True, capture_output=True)
            servers.append(Tang(db).start())
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """The URL of a server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for s in accepted:
            s.close()
        listener.close()
