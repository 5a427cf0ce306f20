"""The calls that run without typer. Through typer, every command pays for building all 18 click commands
and for pydantic, which typer (0.2x) has check each option's value: a third of a second before the command
starts, at every turn of a script's loop. So cli/main.py asks `plain_call` first.

A plain call is `[--keystore PATH] [--debug] COMMAND ...`, COMMAND one that scripts and administrators run
often (SHAPES), followed only by its own options, each at most once with a value that is neither empty nor
starts with '-', and by positional arguments that do not start with '-'. It runs the function the typer
command runs (reports.py, actions.py). `[--keystore PATH] [--debug] [COMMAND] --help`, for any command,
prints the text typer prints, kept in helptext.py. Anything else (a typo, a repeated option, `--`, a
value typer might refuse, a terminal narrower than the text) goes to typer, so its messages stay the only
usage errors and nothing typer would refuse runs here.

No plain call handles a secret, so none needs the re-exec of cli/main.py: `serve` execs the broker with
scrubbing turned on (service/serve.py), and the broker's unlock child inherits it.
"""

from __future__ import annotations

import os

# typing.TYPE_CHECKING without importing typing: see cli/main.py.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from unlocker.cli.options import Globals

# What may follow each command in a plain call: the options that take a value, the flags, and how many
# positional arguments (least, most; None: no limit).
Shape = tuple[tuple[str, ...], tuple[str, ...], tuple[int, int | None]]
NOTHING: Shape = ((), (), (0, 0))
GLOBAL: Shape = (("--keystore",), ("--debug",), (0, 0))
SHAPES: dict[str, Shape] = {
    "status": (("--tpm2-device",), ("--json",), (0, 0)),
    "slots": ((), ("--json",), (0, 0)),
    "doctor": (("--tpm2-device",), ("--json",), (0, 0)),
    "lock": NOTHING,
    "unlock": NOTHING,  # the request to the broker; with --check (or any option) it reads a secret: typer's
    "grant": (("--credential", "--format"), ("--no-reload",), (1, None)),
    "revoke": (("--credential",), ("--no-reload",), (1, 1)),
    "serve": NOTHING,  # what unlocker.service runs: the boot waits for it
}


def plain_call(argv: list[str]) -> Callable[[], object] | None:
    """What argv asks for when it is a plain call (see above), ready to run; None for anything else."""
    if "_UNLOCKER_COMPLETE" in os.environ:
        return None  # bash asking typer for completions (cli/main.py), whatever argv holds
    if argv[-1:] == ["--help"]:
        return _help(argv[:-1])
    parsed = _parse(argv, SHAPES)
    if parsed is None:
        return None
    command, given, own, arguments = parsed
    if command is None:
        return None
    least, most = SHAPES[command][2]
    if len(arguments) < least or (most is not None and len(arguments) > most):
        return None
    if command in ("status", "slots", "doctor"):
        from unlocker.cli import reports

        as_json, device = "--json" in own, own.get("--tpm2-device")
        if command == "slots":
            return _with_globals(given, lambda g: reports.slots(g, as_json))
        report = reports.status if command == "status" else reports.doctor
        return _with_globals(given, lambda g: report(g, as_json, device))
    from unlocker.cli import actions

    no_reload = "--no-reload" in own
    if command == "lock":
        return _with_globals(given, lambda g: actions.lock())
    if command == "unlock":
        return _with_globals(given, lambda g: actions.unlock())
    if command == "serve":
        return _with_globals(given, actions.serve)
    if command == "revoke":
        return _with_globals(given, lambda g: actions.revoke(arguments[0], own.get("--credential"), no_reload))
    from unlocker.client.formats import Format

    fmt = own.get("--format", Format.raw.value)
    if fmt not in {f.value for f in Format}:
        return None  # typer says what is wrong with it
    return _with_globals(given, lambda g: actions.grant(arguments, own.get("--credential", "dek"), Format(fmt),
                                                        no_reload))


def _parse(argv: list[str], shapes: dict[str, Shape]
           ) -> tuple[str | None, dict[str, str], dict[str, str], list[str]] | None:
    """argv as (command, global options, the command's options, its arguments), a flag's value ""; None
    when a word does not fit the shape: an unknown command or option, one given twice, a value missing,
    empty or starting with '-'."""
    command: str | None = None
    given: dict[str, str] = {}
    own: dict[str, str] = {}
    arguments: list[str] = []
    words = iter(argv)
    for word in words:
        if not word.startswith("-"):
            if command is not None:
                arguments.append(word)
            elif word in shapes:
                command = word
            else:
                return None
            continue
        values, flags, _ = GLOBAL if command is None else shapes[command]
        options = given if command is None else own
        name, eq, value = word.partition("=")
        if name in values:
            value = value if eq else next(words, "")
            if not value or value.startswith("-"):
                return None
        elif word not in flags:
            return None
        if name in options:
            return None
        options[name] = value
    return command, given, own, arguments


def _with_globals(given: dict[str, str], call: Callable[[Globals], object]) -> Callable[[], object]:
    """The call, after what typer's callback does before any command (cli/common.main_options)."""
    from pathlib import Path

    from unlocker import config
    from unlocker.cli.options import global_options

    keystore = Path(given["--keystore"]) if "--keystore" in given else config.KEYSTORE
    return lambda: call(global_options(keystore, "--debug" in given))


def _help(argv: list[str]) -> Callable[[], object] | None:
    """`unlocker --help` and `unlocker COMMAND --help`, from the text typer prints (helptext.py) when typer
    would print it the same: click wraps help to the terminal's width, at most 78 columns."""
    import shutil

    from unlocker.cli import helptext

    if max(min(shutil.get_terminal_size().columns, 80) - 2, 50) != helptext.WIDTH:
        return None
    parsed = _parse(argv, dict.fromkeys(helptext.COMMANDS, NOTHING))
    if parsed is None:
        return None
    command, given, _, _ = parsed
    text = "\n".join(helptext.COMMANDS[command] if command else helptext.MAIN)
    if command is None:
        # The eager --help: click prints it before the global options are even looked at.
        return lambda: print(text)
    # A command's --help comes after the group's callback has run (it reads the config file).
    return _with_globals(given, lambda g: print(text))
