"""Asking for the passphrase at boot through systemd-ask-password, so every password agent works:
the console, plymouth, wall, and `systemd-tty-ask-password-agent` over ssh.

The passphrase comes back on a pipe and is read with readv into a bytearray; it is never in argv, the
environment or a file. `--keyname` is never passed: systemd-ask-password would push every answer into
root's kernel keyring for 150 s. A passphrase the initrd cached is read by cached_passphrase.py instead.
"""

from __future__ import annotations

import socket
import subprocess
import threading

from unlocker.errors import InvalidInput, UnlockerError
from unlocker.memory import wipe
from unlocker.run import ENV, log
from unlocker.secret_input import read_secret_fd
from unlocker.service.options import AskOptions

__all__ = ["AskOptions", "Cancelled", "Withdrawn", "ask", "prompt_message"]


class Cancelled(UnlockerError):
    """Nobody answered: the agent cancelled or the prompt timed out."""


class Withdrawn(Cancelled):
    """The prompt was taken back because the keystore opened another way (an unattended slot)."""


def _withdraw_when(event: threading.Event, proc: subprocess.Popen[bytes]) -> None:
    # SIGTERM makes systemd-ask-password remove its ask file, so every agent drops the question.
    while proc.poll() is None:
        if event.wait(0.05):
            proc.terminate()
            return


def ask(message: str, options: AskOptions, withdraw: threading.Event | None = None,
        question_id: str = "unlocker:keystore", timeout_s: int | None = None) -> bytearray:
    """The passphrase typed at the prompt. Raises Cancelled, or Withdrawn once `withdraw` is set."""
    timeout_s = options.timeout_s if timeout_s is None else timeout_s
    argv = ["systemd-ask-password", f"--id={question_id}", "--icon=drive-harddisk",
            f"--timeout={timeout_s}", "--echo=no", message]
    log.debug("+ %s", " ".join(argv))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    assert proc.stdout is not None and proc.stderr is not None
    if withdraw is not None:
        threading.Thread(target=_withdraw_when, args=(withdraw, proc), daemon=True).start()
    refused: InvalidInput | None = None
    secret = None
    try:
        secret = read_secret_fd(proc.stdout.fileno())
    except InvalidInput as e:  # empty (a cancelled agent prints nothing) or too long
        refused = e
    err = proc.stderr.read().decode(errors="replace").strip()
    if proc.wait() != 0:
        wipe(secret)
        if withdraw is not None and withdraw.is_set():
            raise Withdrawn("the prompt was withdrawn: the keystore opened without it")
        raise Cancelled(f"no passphrase was given ({err or 'prompt cancelled'})")
    if refused is not None:
        raise refused
    assert secret is not None
    return secret


def prompt_message(attempt: int, tries: int) -> str:
    host = socket.gethostname()
    again = f" (attempt {attempt} of {tries})" if attempt > 1 else ""
    return f"Passphrase for the unlocker keystore on {host}{again}:"
