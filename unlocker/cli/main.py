"""The `unlocker` command. Thin: parse options into typed values, call one function per command, and turn
expected errors into a message and an exit code (0 ok, 1 error, 2 nothing unlocked). Only --debug shows
a traceback.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from unlocker import memory
from unlocker.cli.common import app
from unlocker.errors import UnlockerError

# Importing the command modules registers their commands on `app`; --help lists them in this order.
# isort: off
from unlocker.cli import keystore  # noqa: F401
from unlocker.cli import service  # noqa: F401
from unlocker.cli import grants  # noqa: F401
from unlocker.cli import rotate  # noqa: F401
from unlocker.cli import doctor  # noqa: F401
from unlocker.cli import tang  # noqa: F401
# isort: on


def main() -> None:
    if not memory.freed_memory_is_scrubbed():
        argv = [sys.executable, "-m", "unlocker", *sys.argv[1:]]
        os.execve(sys.executable, argv, memory.environment_with_scrubbing())  # noqa: S606
    memory.scrub_freed_memory()
    # Every command, not only those known to hold the store key: a SIGQUIT at a prompt (or a crash) must
    # never write a key, a passphrase or a recovery key into a core file.
    memory.harden_process()
    debug = "--debug" in sys.argv
    if "_UNLOCKER_COMPLETE" in os.environ:
        # bash asks for completions by running us with this variable (the script scripts/man writes);
        # typer registers its completion classes only when asked to.
        from typer._completion_classes import completion_init

        completion_init()
    try:
        # Outside standalone mode click returns the code of a typer.Exit (doctor's 1 and 2) instead of exiting.
        code = app(prog_name="unlocker", standalone_mode=False)
    except UnlockerError as e:
        if debug:
            traceback.print_exc()
        print(f"unlocker: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:
        print("unlocker: aborted", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.exceptions.TyperException as e:
        show = getattr(e, "show", None)
        show() if show else print(f"unlocker: {e}", file=sys.stderr)
        sys.exit(1)  # usage errors exit 1: exit code 2 means "nothing unlocked"
    except KeyboardInterrupt:
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)
