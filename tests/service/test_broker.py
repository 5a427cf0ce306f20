"""The broker's checks on a credential peer, short of a booted systemd (tests/system/test_broker.py)."""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import os
import resource
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import FAST, host_secret

from unlocker.client.formats import Format
from unlocker.keystore import changes
from unlocker.keystore.slots import Secrets
from unlocker.service import grants
from unlocker.service.broker import (
    CONTROL_IDLE_S,
    MAX_CONTROL_CLIENTS,
    Broker,
    Peer,
    _peer_pidfd,
    handle_control,
    verify,
)
from unlocker.service.keyring import Keyring
from unlocker.service.peer import PeerError, Request
from unlocker.service.sealed import HostKey, HostKeyCache

REQUEST = Request("granted.service", "dek")


def _pidfd_pid(pidfd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{pidfd}").read_text().splitlines():
        if line.startswith("Pid:"):
            return int(line.split()[1])
    raise AssertionError("not a pidfd")


def test_a_socket_without_a_peer_pidfd_is_refused_not_looked_up_by_pid():
    # A real SO_PEERPIDFD error other than "no such option": an AF_UNIX socket that never connected has
    # no peer, and the kernel answers ENODATA. The pid we pass is a live process (this one); falling back
    # to pidfd_open(pid) would vouch for it, as it would for a reused pid after the real peer exited.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        with pytest.raises(OSError) as raised:
            _peer_pidfd(sock, os.getpid())
        assert raised.value.errno == errno.ENODATA
        with pytest.raises(PeerError, match="no pidfd for the peer"):
            verify(sock, Peer(os.getpid(), 0, 0, b""), REQUEST)


class _SockoptFails:
    """A socket whose SO_PEERPIDFD fails with a given errno. A mock, because neither fault can be produced
    on the test kernel (6.18): it has the option (no ENOPROTOOPT), and since 6.16 it returns a pidfd for a
    peer that already exited instead of EINVAL (which 6.5-6.15 return)."""

    def __init__(self, error: int) -> None:
        self.error = error

    def getsockopt(self, *args: object) -> bytes:
        raise OSError(self.error, os.strerror(self.error))


def test_a_kernel_without_so_peerpidfd_falls_back_to_pidfd_open():
    pidfd = _peer_pidfd(_SockoptFails(errno.ENOPROTOOPT), os.getpid())  # type: ignore[arg-type]
    try:
        assert _pidfd_pid(pidfd) == os.getpid()
    finally:
        os.close(pidfd)


def test_a_peer_that_exited_on_6_5_to_6_15_is_refused():
    with pytest.raises(OSError):
        _peer_pidfd(_SockoptFails(errno.EINVAL), os.getpid())  # type: ignore[arg-type]
    with pytest.raises(PeerError, match="peer exited before it could be checked"):
        verify(_SockoptFails(errno.EINVAL), Peer(os.getpid(), 0, 0, b""), REQUEST)  # type: ignore[arg-type]


@pytest.fixture
def broker(tmp_path):
    """An unlocked broker whose grant list is tmp_path/grants."""
    keyring = Keyring()
    opened = changes.create("passphrase", Secrets(bytearray(b"broker test")), FAST)
    try:
        keyring.load(opened)
    finally:
        opened.close()
    yield Broker(keyring, tmp_path / "grants", HostKeyCache(*host_secret(tmp_path)))
    keyring.lock()


def test_a_grant_list_that_does_not_parse_leaves_no_grant_in_force(broker, caplog):
    granted, revoked = Request("granted.service", "dek"), Request("revoked.service", "dek")
    broker.grants_file.write_text("granted.service dek hex\nrevoked.service dek raw\n")
    assert broker.decide(granted)[0] is not None
    assert broker.decide(revoked)[0] is not None
    # One edit revokes a unit and leaves a bad line: the revocation must not be lost behind the old list.
    broker.grants_file.write_text("granted.service dek hex\nnew.service a%b raw\n")
    for request in (granted, revoked):
        grant, reason = broker.decide(request)
        assert grant is None
        assert reason.startswith("the grant list does not parse (") and "line 2" in reason
    assert "NO grant is in force and every credential request is refused" in caplog.text
    assert broker.status()["grants"] == [] and "line 2" in str(broker.status()["grants_error"])
    broker.grants_file.write_text("granted.service dek hex\n")
    grant, _ = broker.decide(granted)
    assert grant is not None and grant.format == Format.hex
    assert broker.decide(revoked)[0] is None
    assert broker.status()["grants_error"] is None


@pytest.mark.parametrize("line", [b"[]\n", b"42\n", b'"status"\n', b"null\n"])
def test_the_control_socket_answers_a_request_that_is_not_an_object(broker, tmp_path, line):
    async def exchange() -> bytes:
        path = tmp_path / "control.sock"
        server = await asyncio.start_unix_server(functools.partial(handle_control, broker), path=str(path))
        async with server:
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(line)
            await writer.drain()
            reply = await asyncio.wait_for(reader.readline(), 10)
            writer.close()
            return reply

    reply = json.loads(asyncio.run(exchange()))
    assert reply == {"ok": False, "error": "bad request: a request is a JSON object"}


# A broker in its own process with the descriptor limit a unit gets without LimitNOFILE= (1024), its peer
# check stubbed (tests/system covers it): this test is about descriptors, not about who may connect.
STARVED_BROKER = textwrap.dedent("""
    import asyncio, resource, sys
    from pathlib import Path
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    from conftest import FAST
    from unlocker.keystore import changes
    from unlocker.keystore.slots import Secrets
    from unlocker.service import broker as b
    from unlocker.service.keyring import Keyring
    b.verify = lambda sock, peer, request: None
    run = Path(sys.argv[1])
    keyring = Keyring()
    keyring.load(changes.create("passphrase", Secrets(bytearray(b"x")), FAST))
    from unlocker.service.sealed import HostKeyCache
    broker = b.Broker(keyring, run / "grants", HostKeyCache(run / "credential.secret", run / "machine-id"))
    async def main():
        await b.listen(run / "credentials.sock", broker.handle_credential)
        await b.listen(run / "control.sock", lambda r, w: b.handle_control(broker, r, w),
                       backlog=b.CONTROL_BACKLOG)
        print("ready", flush=True)
        await asyncio.sleep(600)
    asyncio.run(main())
""")


def _request_credential(path: Path, unit: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(f"\0{os.urandom(8).hex()}/unit/{unit}/dek".encode())
        s.settimeout(10)
        s.connect(str(path))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def test_idle_control_clients_never_starve_deliveries(tmp_path):
    (tmp_path / "grants").write_text("granted.service dek raw\n")
    key = HostKey.read(*host_secret(tmp_path))
    broker = subprocess.Popen([sys.executable, "-c", STARVED_BROKER, str(tmp_path)], stdout=subprocess.PIPE,
                              cwd=Path(__file__).resolve().parent.parent, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    idle: list[socket.socket] = []
    try:
        assert broker.stdout is not None and broker.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 30
        for _ in range(1100):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            idle.append(s)
            s.setblocking(False)
            while s.connect_ex(str(tmp_path / "control.sock")) == errno.EAGAIN:  # the backlog is full
                assert time.monotonic() < deadline, "the broker stopped accepting control clients"
                time.sleep(0.005)
            s.settimeout(10)
        start = time.monotonic()
        assert len(key.unseal("dek", _request_credential(tmp_path / "credentials.sock", "granted.service"))) == 32
        assert time.monotonic() - start < 5
        assert len(os.listdir(f"/proc/{broker.pid}/fd")) < 200
        # The clients over the cap were told so; the others are dropped once idle for CONTROL_IDLE_S.
        replies = Counter(json.loads(s.recv(4096) or b"{}").get("error", "closed") for s in idle)
        assert replies == {"too many control clients at once; try again": 1100 - MAX_CONTROL_CLIENTS,
                           f"bad request: nothing received for {CONTROL_IDLE_S:g} s": MAX_CONTROL_CLIENTS}
    finally:
        for s in idle:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        broker.kill()
        broker.wait()


def test_the_grant_list_is_parsed_once_and_again_when_another_file_takes_its_place(broker, monkeypatch):
    parses: Counter[str] = Counter()
    real_load = grants.load

    def counting_load(path):
        parses["n"] += 1
        return real_load(path)

    monkeypatch.setattr("unlocker.service.grants.load", counting_load)
    broker.grants_file.write_text("granted.service dek hex\n")
    for _ in range(5):
        assert broker.decide(REQUEST)[0] is not None
    assert parses["n"] == 1
    # Same size, same mtime, another inode (what `unlocker grant` does: a new file renamed into place).
    stat = broker.grants_file.stat()
    other = broker.grants_file.with_name("grants.new")
    other.write_text("granted.service dek raw\n")
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    other.rename(broker.grants_file)
    assert broker.decide(REQUEST)[0].format == Format.raw
    assert parses["n"] == 2


def _connect_pair(request: Request) -> tuple[socket.socket, socket.socket]:
    """A connected pair whose client is bound to systemd's address for request, like its helper."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(f"\0{os.urandom(8).hex()}/listener")
        listener.listen(1)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.bind(f"\0{os.urandom(8).hex()}/unit/{request.unit}/{request.credential}")
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    server.setblocking(False)
    return client, server


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(1 << 20):
        data += chunk
    return data


def test_a_delivery_is_sent_and_ended_at_once_without_the_event_loop(broker, monkeypatch):
    monkeypatch.setattr("unlocker.service.broker.verify", lambda sock, peer, request: None)
    broker.grants_file.write_text("granted.service dek raw\n")
    client, server = _connect_pair(REQUEST)
    with client, server:
        assert broker.answer(server) is None  # no task: the key went out in one send, then EOF
        assert len(broker.host_key.get().unseal("dek", _read_all(client))) == 32


def test_an_unexpected_error_in_a_request_is_refused_with_an_empty_reply(broker, monkeypatch, tmp_path):
    """A bug in a check ends as a refusal does, with EOF and no data, which systemd cannot decrypt: the
    unit fails at CREDENTIALS (tests/system/test_platform_facts.py)."""
    from unlocker.service.broker import listen

    def broken(sock, peer, request):
        raise RuntimeError("a bug")

    monkeypatch.setattr("unlocker.service.broker.verify", broken)
    broker.grants_file.write_text("granted.service dek raw\n")

    async def ask() -> bytes:
        server = await listen(tmp_path / "credentials.sock", broker.handle_credential)
        try:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.bind(f"\0{os.urandom(8).hex()}/unit/granted.service/dek")
            client.connect(str(tmp_path / "credentials.sock"))
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, functools.partial(_read_all, client))
        finally:
            server.close()

    assert asyncio.run(ask()) == b""


def test_a_refusal_is_an_empty_reply_ended_at_once(broker, monkeypatch):
    monkeypatch.setattr("unlocker.service.broker.verify", lambda sock, peer, request: None)
    broker.grants_file.write_text("granted.service dek raw\n")
    client, server = _connect_pair(Request("other.service", "dek"))  # no grant: refused
    with client, server:
        assert broker.answer(server) is None
        assert _read_all(client) == b""
    assert broker.stats.denials == {"other.service": 1}


def test_without_a_host_secret_every_request_is_refused_and_the_reason_recorded(broker, monkeypatch):
    monkeypatch.setattr("unlocker.service.broker.verify", lambda sock, peer, request: None)
    broker.grants_file.write_text("granted.service dek raw\n")
    broker.host_key.path.unlink()
    client, server = _connect_pair(REQUEST)
    with client, server:
        assert broker.answer(server) is None
        assert _read_all(client) == b""
    assert "does not exist: run `systemd-creds setup`" in broker.stats.last[-1]["reason"]
