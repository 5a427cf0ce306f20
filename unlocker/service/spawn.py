"""The broker's side of the unlock child (unlock_child.py): start it, relay its status lines to systemd,
take the keys it hands over, stop it. Nothing here sees a passphrase: what comes back is a region of
secret memory, mapped read-only when it is a memfd_secret region.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

from unlocker.errors import UnlockerError
from unlocker.memory import SecretMemory
from unlocker.run import log
from unlocker.service.keyring import Entry
from unlocker.service.options import ServeOptions

MAX_MESSAGE = 64 * 1024  # a status line or the header of the keys; never the keys themselves


@dataclass
class Handed:
    """What the child handed over: the keys in a region, where each DEK is, and how the keystore opened."""

    region: SecretMemory
    entries: list[Entry]
    generation: int
    slot_index: int
    source: str


class UnlockChild:
    """One unlock child. Start it from the event loop's thread (the child dies with the thread that
    started it, PR_SET_PDEATHSIG); result() blocks, so run it in an executor."""

    def __init__(self, options: ServeOptions, notify: Callable[[str], None]) -> None:
        self.notify = notify
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # The environment is inherited: GLIBC_TUNABLES (glibc scrubs freed memory) and NOTIFY_SOCKET,
            # which the child does not use (NotifyAccess=main would drop what it sent).
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "unlocker.service.unlock_child", str(theirs.fileno()), options.to_json()],
                stdin=subprocess.DEVNULL, pass_fds=[theirs.fileno()], start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.stopped = False

    def result(self) -> Handed:
        """The keys, once the keystore opened. Raises UnlockerError with the child's own message and exit
        code when nothing opened (three wrong passphrases), or a clear error when the child died."""
        try:
            while True:
                data, fds, flags, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 1)
                if not data:
                    raise self._died()
                if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                    _close(fds)
                    raise self._bad("a message too long")
                message = json.loads(data)
                if "status" in message:
                    _close(fds)
                    self.notify(str(message["status"]))
                elif "failed" in message:
                    _close(fds)
                    error = UnlockerError(str(message["failed"]))
                    error.exit_code = int(message["exit_code"])
                    raise error
                elif "opened" in message:
                    return self._take(message["opened"], fds)
                else:
                    _close(fds)
                    raise self._bad("an unknown message")
        finally:
            self.sock.close()
            self._reap()

    def stop(self) -> None:
        """SIGTERM to the child's whole session: systemd-ask-password withdraws its question."""
        self.stopped = True
        self._end_session()

    def _end_session(self) -> None:
        # The session's id is the child's pid; a systemd-ask-password it left behind (a child killed
        # mid-question) still has it, and removes its question on SIGTERM.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)

    def _take(self, info: dict[str, object], fds: list[int]) -> Handed:
        size = int(str(info["size"]))
        if fds:
            _close(fds[1:])
            region = SecretMemory.adopt(fds[0], writable=False)
            if region.size != size:
                region.close()
                raise self._bad(f"a region of {region.size} bytes, not {size}")
        else:
            # No memfd_secret on this kernel: the bytes come next, straight into a region of our own.
            region = SecretMemory(size)
            n, _, flags, _ = self.sock.recvmsg_into([region.view])
            if n != size or flags & socket.MSG_TRUNC:
                region.close()
                raise self._bad(f"{n} bytes of keys, not {size}")
        entries = [Entry(int(i), str(state), int(offset)) for i, state, offset in info["entries"]]  # type: ignore[attr-defined]
        return Handed(region, entries, int(str(info["generation"])), int(str(info["slot_index"])),
                      str(info["source"]))

    def _reap(self) -> None:
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.stop()
            self.proc.wait()

    def _died(self) -> UnlockerError:
        self._reap()
        self._end_session()
        code = self.proc.returncode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        if self.stopped:
            return UnlockerError(f"the unlock was stopped ({how})")
        log.error("the unlock child (pid %d) ended without an answer (%s); nothing was unlocked", self.proc.pid, how)
        return UnlockerError(f"the unlock failed: its child process ended without an answer ({how})")

    def _bad(self, what: str) -> UnlockerError:
        self.stop()
        log.error("the unlock child (pid %d) sent %s; nothing was unlocked", self.proc.pid, what)
        return UnlockerError(f"the unlock failed: its child process sent {what}")


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
