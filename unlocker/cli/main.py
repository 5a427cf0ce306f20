"""The `unlocker` command. Thin: parse options into typed values, call one function per command, and turn
expected errors into a message and an exit code (0 ok, 1 error, 2 nothing unlocked). Only --debug shows
a traceback.

Start-up is part of the interface: scripts call `status --json`, `lock` or `grant` in a loop. So a plain
call of those, and --help (cli/plain.py), runs without typer, and only the commands that may handle a
secret pay for the re-exec that turns on glibc's scrubbing of freed memory.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from unlocker import memory
from unlocker.cli import plain
from unlocker.errors import UnlockerError

# typing.TYPE_CHECKING without importing typing: every millisecond here is paid by every command.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import typer

# The commands known to hold no passphrase, recovery key, share or store key. Any other command (and any
# argv whose command cannot be told, and a command added later) re-executes with scrubbing turned on.
NO_SECRET = frozenset({"status", "slots", "doctor", "lock", "grant", "revoke", "install", "restore-backup",
                       "tang-report"})


def main() -> None:
    argv = sys.argv[1:]
    call = plain.plain_call(argv)  # a plain call handles no secret: it never re-executes
    if call is None and handles_secrets(argv) and not memory.freed_memory_is_scrubbed():
        os.execve(sys.executable, [sys.executable, "-m", "unlocker", *argv],  # noqa: S606
                  memory.environment_with_scrubbing())
    memory.scrub_freed_memory()
    # Every command, not only those known to hold the store key: a SIGQUIT at a prompt (or a crash) must
    # never write a key, a passphrase or a recovery key into a core file.
    memory.harden_process()
    debug = "--debug" in argv
    code = _exit_on_errors(call, debug) if call is not None else _typer_app(debug)
    if isinstance(code, int) and code:
        sys.exit(code)


def handles_secrets(argv: list[str]) -> bool:
    """Whether the command argv names may handle a secret: anything but `unlocker [--help]` and the
    NO_SECRET commands. The command is the first word that is neither an option nor --keystore's value
    (the only global option that takes one). `init --help` re-executes too, unless it is a plain call
    (plain.py): after the command, "--help" may be an option's value (a file to read a passphrase from)."""
    words = iter(argv)
    for word in words:
        if word == "--help":
            return False
        if word == "--keystore":
            next(words, None)
        elif not word.startswith("-"):
            return word not in NO_SECRET
    return False


def _exit_on_errors(call: Callable[[], object], debug: bool) -> object:
    try:
        code = call()
        sys.stdout.flush()  # a reader gone away shows here, not in the interpreter's last flush
        return code
    except BrokenPipeError:
        # `unlocker --help | head -1`: exit 1 without a word, as typer does. Python flushes stdout again
        # at exit: point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except UnlockerError as e:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"unlocker: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


def typer_app() -> typer.Typer:
    """The typer app with every command registered (cli/manpage.py reads it too)."""
    from unlocker.cli.common import app

    # Importing the command modules registers their commands on `app`; --help lists them in this order.
    # isort: off
    from unlocker.cli import keystore  # noqa: F401
    from unlocker.cli import service  # noqa: F401
    from unlocker.cli import grants  # noqa: F401
    from unlocker.cli import rotate  # noqa: F401
    from unlocker.cli import doctor  # noqa: F401
    from unlocker.cli import tang  # noqa: F401
    # isort: on

    return app


def _typer_app(debug: bool) -> object:
    import typer

    app = typer_app()
    if "_UNLOCKER_COMPLETE" in os.environ:
        # bash asks for completions by running us with this variable (the script scripts/man writes);
        # typer registers its completion classes only when asked to.
        from typer._completion_classes import completion_init

        completion_init()

    def run() -> object:
        try:
            # Outside standalone mode click returns the code of a typer.Exit (doctor's 1 and 2) instead of
            # exiting.
            return app(prog_name="unlocker", standalone_mode=False)
        except typer.Abort:
            print("unlocker: aborted", file=sys.stderr)
            sys.exit(1)
        except typer.Exit as e:
            sys.exit(e.exit_code)
        except typer.exceptions.TyperException as e:
            show = getattr(e, "show", None)
            show() if show else print(f"unlocker: {e}", file=sys.stderr)
            sys.exit(1)  # usage errors exit 1: exit code 2 means "nothing unlocked"

    return _exit_on_errors(run, debug)
