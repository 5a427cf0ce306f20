"""The credential broker: answers systemd's LoadCredential= connections and the root-only control socket.

Fail closed. On systemd 252 a credential connection that closes without data gives the unit an EMPTY
credential and the unit starts; a reply over systemd's 1 MiB credential limit makes the unit fail at its
CREDENTIALS step (exit status 243). So every refusal (unknown peer, no grant, locked) is answered with
DENIAL_BYTES of zeros, never with a bare close; the drop-in's `test -s` check backs that up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import resource
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from unlocker.client.formats import FormatUnavailable, render
from unlocker.errors import UnlockerError
from unlocker.memory import wipe
from unlocker.run import log
from unlocker.service import audit, grants
from unlocker.service.keyring import Keyring
from unlocker.service.peer import PeerError, Request, in_unit_cgroup, parse_address

DENIAL_BYTES = 1024 * 1024 + 1
SEND_TIMEOUT_S = 10.0
# The control socket may never take the descriptors deliveries need: at most this many control clients at
# once (the rest are answered "busy" and closed at once), each dropped when idle this long, and no more
# than this many accepted per turn of the event loop (the listen backlog).
MAX_CONTROL_CLIENTS = 32
CONTROL_IDLE_S = 5.0
CONTROL_BACKLOG = 16
SO_PEERPIDFD = 77  # Linux 6.5+; a pidfd for the peer that cannot be confused with a reused pid
_DENIAL = bytes(DENIAL_BYTES)


@dataclass
class Peer:
    pid: int
    uid: int
    gid: int
    address: bytes


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    address = sock.getpeername()
    if isinstance(address, str):
        address = address.encode("utf-8", "surrogateescape")
    return Peer(pid, uid, gid, address)


def _peer_pidfd(sock: socket.socket, pid: int) -> int:
    """A pidfd for the process that connected. Raises OSError when there is none to be had.

    Only a kernel that lacks SO_PEERPIDFD (before 6.5: ENOPROTOOPT) falls back to pidfd_open(pid), with
    the pid-reuse window docs/THREAT-MODEL.md describes. Any other error (EINVAL for a peer that already
    exited, on 6.5-6.15) means the pid may now name another process, perhaps one of the granted unit,
    while whoever connected still holds the socket: refuse rather than look the pid up.
    """
    try:
        return struct.unpack("i", sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4))[0]
    except OSError as e:
        if e.errno != errno.ENOPROTOOPT:
            raise
    return os.pidfd_open(pid)


def verify(sock: socket.socket, peer: Peer, request: Request) -> None:
    """Raise PeerError unless the peer is systemd's helper for the unit its address names."""
    if peer.uid != 0:
        raise PeerError(f"peer uid {peer.uid} is not 0 (only systemd itself requests credentials)")
    try:
        pidfd = _peer_pidfd(sock, peer.pid)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ESRCH):
            raise PeerError("peer exited before it could be checked") from None
        raise PeerError(f"no pidfd for the peer ({e.strerror}), so its pid proves nothing") from None
    try:
        try:
            cgroup = Path(f"/proc/{peer.pid}/cgroup").read_text()
        except OSError:
            raise PeerError("peer exited before it could be checked") from None
        # The pidfd becomes readable when the process exits: if it is still running now, the cgroup we
        # read was its own, not that of a process that reused the pid. poll, not select: a descriptor
        # above FD_SETSIZE (1024) would make select() raise, and the connection close without data.
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if poller.poll(0):
            raise PeerError("peer exited before it could be checked")
    finally:
        os.close(pidfd)
    if not in_unit_cgroup(cgroup, request.unit):
        raise PeerError(f"peer is not in the cgroup of {request.unit}")


@dataclass
class Stats:
    since: float = field(default_factory=time.time)
    deliveries: Counter[str] = field(default_factory=Counter)
    denials: Counter[str] = field(default_factory=Counter)
    last: list[dict[str, object]] = field(default_factory=list)

    def record(self, unit: str | None, credential: str | None, decision: str, reason: str = "") -> None:
        (self.deliveries if decision == "deliver" else self.denials)[unit or "?"] += 1
        self.last = [*self.last[-19:], {"time": time.time(), "unit": unit, "credential": credential,
                                        "decision": decision, "reason": reason}]


class Broker:
    def __init__(self, keyring: Keyring, grants_file: Path = grants.GRANTS_FILE) -> None:
        self.keyring = keyring
        self.grants_file = grants_file
        self.stats = Stats()
        self.state_since = time.time()
        self.unlocked_by: str | None = None  # an unattended slot type, cached passphrase, prompt, passphrase file
        self._grants: dict[tuple[str, str], grants.Grant] = {}
        self._grants_stamp: tuple[int, int] | None = None
        self._grants_error: str | None = None
        self.control_handlers: dict[str, object] = {}
        self.control_clients = 0

    def current_grants(self) -> dict[tuple[str, str], grants.Grant]:
        """The grant list, re-read when the file changed (grant/revoke need no restart)."""
        try:
            st = self.grants_file.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._grants_stamp:
            self._grants_stamp = stamp
            self._load_grants()
        return self._grants

    def _load_grants(self) -> None:
        # Fail closed: keeping the previous grants would keep a revocation made in the same edit from
        # taking effect. Until the list parses again, no grant is in force.
        try:
            self._grants, self._grants_error = grants.load(self.grants_file), None
        except (UnlockerError, OSError) as e:
            self._grants, self._grants_error = {}, str(e)
            log.error("the grant list does not parse, so NO grant is in force and every credential request "
                      "is refused until it is fixed: %s", e)

    def decide(self, request: Request) -> tuple[grants.Grant | None, str]:
        current = self.current_grants()
        if self._grants_error is not None:
            return None, f"the grant list does not parse ({self._grants_error})"
        grant = current.get((request.unit, request.credential))
        if grant is None:
            return None, "no grant for this unit and credential"
        if not self.keyring.unlocked:
            return None, "the broker is locked"
        return grant, ""

    async def handle_credential(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock: socket.socket = writer.get_extra_info("socket")
        raw = sock.dup()  # plain socket I/O: we send from our own buffer, which we then wipe
        raw.setblocking(False)
        try:
            await self._answer(raw)
        finally:
            raw.close()
            writer.close()

    async def _answer(self, sock: socket.socket) -> None:
        peer: Peer | None = None
        request: Request | None = None
        try:
            peer = peer_of(sock)
            request = parse_address(peer.address)  # what the peer claims; verified next
            verify(sock, peer, request)
            grant, reason = self.decide(request)
        except (PeerError, OSError) as e:
            grant, reason = None, str(e)
        if grant is None or request is None:
            return await self._deny(sock, peer, request, reason)
        versions = self.keyring.versions()
        try:
            payload = render(grant.format, versions)
        except FormatUnavailable as e:
            return await self._deny(sock, peer, request, str(e))
        finally:
            for v in versions:
                wipe(v.key)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(sock, payload), SEND_TIMEOUT_S)
        except (OSError, TimeoutError) as e:
            log.warning("delivery of %s to %s failed: %s", request.credential, request.unit, e)
            return None
        finally:
            wipe(payload)
        self.stats.record(request.unit, request.credential, "deliver")
        audit.delivered(request.unit, request.credential, grant.format, [v.id for v in versions])
        return None

    async def _deny(self, sock: socket.socket, peer: Peer | None, request: Request | None, reason: str) -> None:
        unit, credential = (request.unit, request.credential) if request else (None, None)
        self.stats.record(unit, credential, "deny", reason)
        audit.denied(unit, credential, reason, peer.pid if peer else None, peer.uid if peer else None)
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(sock, _DENIAL), SEND_TIMEOUT_S)

    def status(self) -> dict[str, object]:
        return {
            "state": "unlocked" if self.keyring.unlocked else "locked",
            "since": self.state_since,
            "generation": self.keyring.generation,
            "memory": self.keyring.memory_kind,
            "fd_store": self.keyring.fd_store.state if self.keyring.fd_store is not None else None,
            "unlocked_by": self.unlocked_by if self.keyring.unlocked else None,
            "grants": [g.line() for g in self.current_grants().values()],
            "grants_error": self._grants_error,
            "deliveries": dict(self.stats.deliveries),
            "denials": dict(self.stats.denials),
            "last": self.stats.last,
        }

    def lock(self) -> None:
        self.keyring.lock()
        self.state_since = time.time()
        audit.state_changed("locked", "keys wiped from memory and from the fd store")


async def handle_control(broker: Broker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One JSON request line, one JSON reply line. Root only: the socket is 0600 and the uid is checked."""
    if broker.control_clients >= MAX_CONTROL_CLIENTS:
        with contextlib.suppress(OSError):
            writer.write(b'{"ok": false, "error": "too many control clients at once; try again"}\n')
        writer.close()  # no drain: a client that does not read must not hold this descriptor
        return
    broker.control_clients += 1
    try:
        await _control_exchange(broker, reader, writer)
    finally:
        broker.control_clients -= 1
        writer.close()


async def _control_exchange(broker: Broker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock: socket.socket = writer.get_extra_info("socket")
    try:
        if peer_of(sock).uid != 0:
            reply: dict[str, object] = {"ok": False, "error": "the control socket is for root only"}
        else:
            request = parse_control_request(await asyncio.wait_for(reader.readline(), CONTROL_IDLE_S))
            secret = None
            size = request.get("secret_bytes")
            if isinstance(size, int) and not isinstance(size, bool) and 0 < size <= 64:
                secret = bytearray(await asyncio.wait_for(reader.readexactly(size), CONTROL_IDLE_S))
            try:
                reply = await dispatch(broker, request, secret)
            finally:
                wipe(secret)
    except TimeoutError:
        reply = {"ok": False, "error": f"bad request: nothing received for {CONTROL_IDLE_S:g} s"}
    except (ValueError, OSError, asyncio.IncompleteReadError) as e:
        reply = {"ok": False, "error": f"bad request: {e}"}
    with contextlib.suppress(OSError, TimeoutError):
        writer.write(json.dumps(reply).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), CONTROL_IDLE_S)


def parse_control_request(line: bytes) -> dict[str, object]:
    """One request line of the control protocol: a JSON object. Raises ValueError and nothing else."""
    try:
        request = json.loads(line or b"{}")
    except RecursionError:  # "[[[[..." nested deeper than Python's stack
        raise ValueError("a request nests too deeply") from None
    if not isinstance(request, dict):
        raise ValueError("a request is a JSON object")
    return request


async def dispatch(broker: Broker, request: dict[str, object], secret: bytearray | None = None) -> dict[str, object]:
    command = request.get("command")
    if command == "status":
        return {"ok": True, **broker.status()}
    if command == "lock":
        broker.lock()
        return {"ok": True, "state": "locked"}
    handler = broker.control_handlers.get(str(command))
    if handler is None:
        return {"ok": False, "error": f"unknown command {command!r}"}
    result: dict[str, object] = await handler(request, secret)  # type: ignore[operator]
    return result


def raise_descriptor_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one (the unit's LimitNOFILE=): the broker polls, never select()s,
    so descriptors above 1024 are safe, and a burst of connections must not run it out of them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def listen(path: Path, handler: Callable[..., Awaitable[None]], mode: int = 0o600,
                 backlog: int = 1024) -> asyncio.Server:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(handler, path=str(path), backlog=backlog)
    finally:
        os.umask(old)
    os.chmod(path, mode)
    return server
