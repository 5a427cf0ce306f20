"""Getting secrets from the administrator: a file or stdin for scripts, a no-echo terminal prompt.

Secrets are read into bytearrays with readinto (no Python-level buffering, no str), and the caller wipes
them. Exactly one trailing newline is stripped, so `echo secret > file` and `printf secret` agree.
"""

from __future__ import annotations

import hmac
import os
import termios
from pathlib import Path

from unlocker.errors import InvalidInput
from unlocker.memory import wipe

MAX_PASSPHRASE_BYTES = 512


def _take(buf: bytearray, filled: int) -> bytearray:
    """The first `filled` bytes of buf, less one trailing newline, checked; buf is wiped.

    Copying into an exact-size buffer instead of shrinking buf matters: shrinking a bytearray
    reallocates it and leaves the old block, secret and all, in freed memory.
    """
    if filled and buf[filled - 1] == ord("\n"):
        filled -= 1
    secret = bytearray(filled)
    secret[:] = memoryview(buf)[:filled]
    wipe(buf)
    if not secret:
        raise InvalidInput("the passphrase is empty")
    if len(secret) > MAX_PASSPHRASE_BYTES:
        wipe(secret)
        raise InvalidInput(f"the passphrase is longer than {MAX_PASSPHRASE_BYTES} bytes")
    return secret


def read_secret_fd(fd: int) -> bytearray:
    """A passphrase from a file descriptor (a file, stdin, or a helper's stdout pipe), read up to EOF."""
    limit = MAX_PASSPHRASE_BYTES + 2  # one newline, plus one byte to detect "too long"
    buf = bytearray(limit)
    view = memoryview(buf)
    filled = 0
    while filled < limit:
        n = os.readv(fd, [view[filled:]])
        if n == 0:
            break
        filled += n
    view.release()
    return _take(buf, filled)


def read_secret_file(path: str) -> bytearray:
    """A passphrase from a file, or from stdin when path is '-'."""
    if path == "-":
        return read_secret_fd(0)
    try:
        fd = os.open(Path(path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidInput(f"cannot read passphrase file {path}: {e.strerror}") from None
    try:
        return read_secret_fd(fd)
    finally:
        os.close(fd)


def _ask_once(tty_fd: int, prompt: str) -> bytearray:
    os.write(tty_fd, prompt.encode())
    old = termios.tcgetattr(tty_fd)
    new = termios.tcgetattr(tty_fd)
    new[3] &= ~termios.ECHO
    termios.tcsetattr(tty_fd, termios.TCSAFLUSH, new)
    # Preallocated and filled in place: a growing bytearray leaves copies of the prefix in freed memory.
    buf = bytearray(MAX_PASSPHRASE_BYTES + 1)
    filled = 0
    try:
        byte = bytearray(1)
        while filled < len(buf) and os.readv(tty_fd, [byte]) == 1 and byte != b"\n":
            buf[filled] = byte[0]
            filled += 1
        wipe(byte)
    finally:
        termios.tcsetattr(tty_fd, termios.TCSAFLUSH, old)
        os.write(tty_fd, b"\n")
    return _take(buf, filled)


def ask_tty(prompt: str, confirm: bool = False) -> bytearray:
    """Ask on the controlling terminal without echo; with confirm, ask twice and require a match."""
    try:
        tty_fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        raise InvalidInput("no terminal to ask on; pass --passphrase-file PATH (or - for stdin)") from None
    try:
        first = _ask_once(tty_fd, prompt)
        if not confirm:
            return first
        second = _ask_once(tty_fd, "Repeat it: ")
        same = hmac.compare_digest(first, second)
        wipe(second)
        if not same:
            wipe(first)
            raise InvalidInput("the two entries differ; nothing was changed")
        return first
    finally:
        os.close(tty_fd)


def read_secret_line(fd: int = 0) -> bytearray | None:
    """One line from a pipe (byte by byte, so nothing past the line is consumed and no buffer holds the
    rest), without its newline; None at end of input."""
    buf = bytearray(MAX_PASSPHRASE_BYTES + 2)
    filled = 0
    byte = bytearray(1)
    try:
        while filled < len(buf) and os.readv(fd, [byte]) == 1:
            buf[filled] = byte[0]
            filled += 1
            if byte == b"\n":
                break
    finally:
        wipe(byte)
    if filled == 0:
        wipe(buf)
        return None
    return _take(buf, filled)


def ask_line(prompt: str) -> bytearray | None:
    """Ask on the terminal without echo when stdin is one; otherwise read the next line of stdin, so a
    script (or a test) can answer a sequence of prompts. None at end of input."""
    if os.isatty(0):
        return ask_tty(prompt)
    os.write(2, prompt.encode() + b"\n")
    return read_secret_line(0)
