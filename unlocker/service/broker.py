"""The credential broker: answers systemd's LoadCredentialEncrypted= connections and the root-only control socket.

Fail closed. On systemd 252 a plain LoadCredential= connection that closes without data gives the unit an
EMPTY credential and the unit starts. Granted units ask with LoadCredentialEncrypted= instead, and every
delivery is sealed with this host's credential secret (sealed.py): systemd decrypts it before the unit runs,
and an empty, cut or altered reply fails the unit at its CREDENTIALS step (exit status 243). So a refusal
(unknown peer, no grant, locked) is simply a close without data, and a broker killed at any moment fails
the units it was serving rather than starting them without their key.
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
from unlocker.service.sealed import HostKeyCache, SealError

SEND_TIMEOUT_S = 10.0
# The control socket may never take the descriptors deliveries need: at most this many control clients at
# once (the rest are answered "busy" and closed at once), each dropped when idle this long, and no more
# than this many accepted per turn of the event loop (the listen backlog).
MAX_CONTROL_CLIENTS = 32
CONTROL_IDLE_S = 5.0
CONTROL_BACKLOG = 16
SO_PEERPIDFD = 77  # Linux 6.5+; a pidfd for the peer that cannot be confused with a reused pid


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
            cgroup = _read_proc(f"/proc/{peer.pid}/cgroup")
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


def _read_proc(path: str) -> str:
    """A small /proc file, with plain os calls: a third of what Path.read_text() costs (its io stack), on a
    path every delivery takes."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "surrogateescape")


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


def _send_now(sock: socket.socket, data: bytes | bytearray) -> int:
    """As much of data as the socket takes now (a key always fits its buffer). Raises OSError."""
    try:
        return sock.send(data)
    except BlockingIOError:
        return 0


def _end(sock: socket.socket) -> None:
    """EOF for systemd now, whatever descriptors of the connection are still open: the unit waits for it,
    and neither the audit record nor a close in a later turn of the event loop should delay it. After a
    refusal (no data) systemd fails the unit at once: an empty reply does not decrypt."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class Broker:
    def __init__(self, keyring: Keyring, grants_file: Path = grants.GRANTS_FILE,
                 host_key: HostKeyCache | None = None) -> None:
        self.keyring = keyring
        self.grants_file = grants_file
        self.host_key = host_key or HostKeyCache()
        self.stats = Stats()
        self.state_since = time.time()
        self.unlocked_by: str | None = None  # an unattended slot type, cached passphrase, prompt, passphrase file
        self._grants: dict[tuple[str, str], grants.Grant] = {}
        self._grants_stamp: tuple[int, int, int, int] | None = None
        self._grants_error: str | None = None
        self.control_handlers: dict[str, object] = {}
        self.control_clients = 0

    def current_grants(self) -> dict[tuple[str, str], grants.Grant]:
        """The grant list, parsed again only when the file changed (grant/revoke need no restart): every
        request costs one stat(), a parse costs about a millisecond per 400 grants. `unlocker grant`
        renames a new file into place (a new inode); a hand edit in place changes mtime or size."""
        try:
            st = os.stat(self.grants_file)
            stamp = (st.st_mtime_ns, st.st_ino, st.st_dev, st.st_size)
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
        """The streams handler of earlier versions; listen() now gives the credential socket its own accept
        loop (CredentialServer) and calls answer() directly."""
        sock: socket.socket = writer.get_extra_info("socket")
        raw = sock.dup()  # plain socket I/O, as in CredentialServer
        raw.setblocking(False)
        try:
            if (rest := self.answer(raw)) is not None:
                await rest
        finally:
            raw.close()
            writer.close()

    def answer(self, sock: socket.socket) -> Awaitable[None] | None:
        """Answer one credential connection (non-blocking). Returns None when the reply is already sent, else
        what sends the rest of it (a reply longer than the socket buffer holds); the caller closes sock after.

        Everything up to the send runs at once, without a task or a timer, and the audit record comes after
        the reply and its EOF: the unit waits for both."""
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
            self._deny(sock, peer, request, reason)
            return None
        versions = self.keyring.versions()
        try:
            payload = render(grant.format, versions)
        except FormatUnavailable as e:
            self._deny(sock, peer, request, str(e))
            return None
        finally:
            for v in versions:
                wipe(v.key)
        try:
            reply = self.host_key.get().seal(request.credential, payload)
        except SealError as e:
            self._deny(sock, peer, request, str(e))
            return None
        finally:
            wipe(payload)
        ids = [v.id for v in versions]
        try:
            sent = _send_now(sock, reply)
        except OSError as e:
            log.warning("delivery of %s to %s failed: %s", request.credential, request.unit, e)
            return None
        if sent < len(reply):
            return self._deliver_rest(sock, request, grant, ids, reply, sent)
        self._delivered(sock, request, grant, ids)
        return None

    async def _deliver_rest(self, sock: socket.socket, request: Request, grant: grants.Grant, ids: list[int],
                            reply: bytes, sent: int) -> None:
        """The rest of a long reply (a keyring with many versions). Cut short, it does not decrypt: the unit
        fails, it never starts on part of a key."""
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(sock, memoryview(reply)[sent:]),
                                   SEND_TIMEOUT_S)
        except (OSError, TimeoutError) as e:
            log.warning("delivery of %s to %s failed: %s", request.credential, request.unit, e)
            return
        self._delivered(sock, request, grant, ids)

    def _delivered(self, sock: socket.socket, request: Request, grant: grants.Grant, ids: list[int]) -> None:
        _end(sock)
        self.stats.record(request.unit, request.credential, "deliver")
        audit.delivered(request.unit, request.credential, grant.format, ids)

    def _deny(self, sock: socket.socket, peer: Peer | None, request: Request | None,
              reason: str) -> None:
        _end(sock)  # the refusal itself, before the record, as for a delivery
        unit, credential = (request.unit, request.credential) if request else (None, None)
        self.stats.record(unit, credential, "deny", reason)
        audit.denied(unit, credential, reason, peer.pid if peer else None, peer.uid if peer else None)

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


class CredentialServer:
    """The credential socket's accept loop, on the event loop but without asyncio streams: a transport, a
    reader, a writer and a task per connection cost more than the broker's whole check (about 150 us a
    connection on this project's test machine; bench/broker.py). Most connections are answered within the
    accept callback; only a reply that does not fit the socket buffer (a keyring with many versions) becomes
    a task."""

    ACCEPTS_PER_TURN = 64  # then let the control socket and pending sends have a turn

    def __init__(self, sock: socket.socket, broker: Broker) -> None:
        self.sock = sock
        self.broker = broker
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(self.ACCEPTS_PER_TURN):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # Out of descriptors or memory: pause, as asyncio's own servers do, rather than spin. The
                # connections wait in the listen queue meanwhile (a dead broker resets them: fail closed).
                log.warning("cannot accept credential connections for now: %s", e)
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(1.0, self.loop.add_reader, self.sock.fileno(), self._accept)
                return
            conn.setblocking(False)
            try:
                rest = self.broker.answer(conn)
            except Exception:
                # A bug ends in a close without data, as a refusal does: the unit fails at CREDENTIALS.
                log.exception("a credential request failed unexpectedly; refusing it")
                _end(conn)
                rest = None
            if rest is None:
                conn.close()
            else:
                task = self.loop.create_task(self._finish(conn, rest))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _finish(conn: socket.socket, rest: Awaitable[None]) -> None:
        try:
            await rest
        finally:
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for task in self.tasks:
            task.cancel()


def _bind(path: Path, mode: int, backlog: int) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(backlog)
    return sock


async def listen(path: Path, handler: Callable[..., Awaitable[None]], mode: int = 0o600,
                 backlog: int = 1024) -> asyncio.Server | CredentialServer:
    """A listening socket at path whose connections go to handler. A broker's handle_credential gets the
    lean accept loop of CredentialServer (callers pass the bound method, as serve.py does)."""
    broker = getattr(handler, "__self__", None)
    if isinstance(broker, Broker) and getattr(handler, "__func__", None) is Broker.handle_credential:
        return CredentialServer(_bind(path, mode, backlog), broker)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(handler, path=str(path), backlog=backlog)
    finally:
        os.umask(old)
    os.chmod(path, mode)
    return server
