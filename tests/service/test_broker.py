"""The broker's checks on a credential peer, short of a booted systemd (tests/system/test_broker.py)."""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import os
import socket
from pathlib import Path

import pytest
from conftest import FAST

from unlocker.client.formats import Format
from unlocker.keystore import changes
from unlocker.keystore.slots import Secrets
from unlocker.service.broker import Broker, Peer, _peer_pidfd, handle_control, verify
from unlocker.service.keyring import Keyring
from unlocker.service.peer import PeerError, Request

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
    yield Broker(keyring, tmp_path / "grants")
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
