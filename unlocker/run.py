"""The one way unlocker runs other programs: an argument list (never a shell), stdin closed unless the
caller hands a pipe, a small fixed environment, and one error type that carries the output. Secrets never
go on a command line or in the environment: pass them on a pipe.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from unlocker import logs
from unlocker.errors import UnlockerError

log = logs.logger()
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class CommandFailed(UnlockerError):
    def __init__(self, argv: Sequence[str], returncode: int, stdout: bytes, stderr: bytes) -> None:
        detail = stderr.decode(errors="replace").strip().splitlines()
        super().__init__(f"{argv[0]} failed (exit {returncode})" + (f": {detail[-1]}" if detail else ""))
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run(argv: Sequence[str], input: bytes | None = None, check: bool = True,
        timeout: float | None = 120) -> subprocess.CompletedProcess[bytes]:
    log.debug("+ %s", " ".join(argv))
    try:
        p = subprocess.run(list(argv), input=input, capture_output=True, env=ENV, timeout=timeout,
                           stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise UnlockerError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise UnlockerError(f"{argv[0]} did not finish within {timeout} s") from None
    if check and p.returncode != 0:
        raise CommandFailed(argv, p.returncode, p.stdout, p.stderr)
    return p
