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
from unlocker.cli import tang  # noqa: F401
# isort: on


def main() -> None:
    if not memory.freed_memory_is_scrubbed():
        argv = [sys.executable, "-m", "unlocker", *sys.argv[1:]]
        os.execve(sys.executable, argv, memory.environment_with_scrubbing())  # noqa: S606
    memory.scrub_freed_memory()
    debug = "--debug" in sys.argv
    try:
        app(prog_name="unlocker", standalone_mode=False)
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
