"""unlocker(8), unlocker(5) and the bash completion, generated from the command definitions at build time
(scripts/man), so they cannot drift from the CLI: every command, argument and option comes from the typer
app itself, the file formats from the docstrings of the modules that parse them. Also cli/helptext.py, the
--help texts printed without typer: `python -m unlocker.cli.manpage` rewrites it after a change to a
command, and tests/cli/test_manpage.py fails until it is rewritten.

Not a command: a build step. Here (in cli/) because it reads the typer app and its option types.
"""

from __future__ import annotations

import enum
import inspect
import re
import textwrap
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer.main

from unlocker import config
from unlocker.cli.main import typer_app
from unlocker.service import audit, control, grants

PROG = "unlocker"
COMPLETE_VAR = "_UNLOCKER_COMPLETE"

EXIT_STATUS = [
    ("0", "Success. For doctor: every check is ok."),
    ("1", "An error, with a message saying what to do (a usage error too). For doctor: warnings, no error."),
    ("2", "Nothing was unlocked: the passphrase, recovery key or TPM did not open the keystore "
          "(unlock --check, serve). For doctor: at least one error."),
    ("130", "Interrupted (Ctrl-C)."),
]

FILES = [
    (str(config.KEYSTORE), "The keystore: the wrapped store key and DEKs, one keyslot a line. See unlocker(5)."),
    (f"{config.KEYSTORE}.bak", "The previous generation of the keystore, kept by every change; "
                               "restore-backup puts it back."),
    (str(config.CONFIG_FILE), "Optional settings: the TPM device and PCRs, the boot prompt. See unlocker(5)."),
    (str(grants.GRANTS_FILE), "The grant list, written by grant and revoke. See unlocker(5)."),
    (f"{grants.UNIT_DIR}/UNIT.d/50-unlocker-ID.conf", "The drop-in each grant writes: the unit loads credential ID "
                                                       "from the broker and refuses to start without it."),
    (str(grants.CREDENTIAL_SOCKET), "Where systemd asks the broker for credentials (LoadCredentialEncrypted=)."),
    ("/var/lib/systemd/credential.secret", "systemd's credential secret: the broker seals each delivery with it, so "
                                           "that systemd fails a unit whose reply is empty or cut short. "
                                           "systemd-creds setup makes it; the unit and grant run it."),
    (str(control.CONTROL_SOCKET), "The broker's control socket (status, lock, unlock, rotations); root only."),
    ("/usr/lib/systemd/catalog/unlocker.catalog", "The journal catalog: journalctl -x explains each record. "
                                                  "The Debian package's; unlocker install puts it in "
                                                  "/usr/local/lib/systemd/catalog/."),
    ("/usr/lib/unlocker/venv", "The Debian package's virtualenv: Debian's python3.11, unlocker and its "
                               "Python dependencies. /usr/sbin/unlocker links to its bin/unlocker."),
]

EXAMPLES = [
    ("Create the keystore (with a TPM, a tpm2+passphrase slot), and a recovery key kept off the machine:",
     "unlocker init --recovery-key"),
    ("Install the Debian package (the unit is enabled; it starts once a keystore exists):",
     "apt-get install ./unlocker_*.deb"),
    ("Let MariaDB read the key as its file_key_management key file:",
     "unlocker grant mariadb.service --credential dek --format mariadb"),
    ("Check everything before a reboot, for a person or for monitoring:", "unlocker doctor\nunlocker doctor --json"),
    ("Re-seal the TPM slots after a firmware update:", "unlocker rotate tpm2"),
    ("Wipe the keys from the running broker, then have it ask again:", "unlocker lock\nunlocker unlock"),
    ("Read why a unit was refused its key:", f"journalctl -x MESSAGE_ID={audit.DENIED}"),
]

SEE_ALSO = "unlocker(5), systemd.exec(5), systemd-creds(1), systemd-ask-password(1), journalctl(1), crypttab(5)"


def command() -> Any:
    """The click command typer builds from the app (typer vendors its own click, so typed loosely)."""
    return typer.main.get_command(typer_app())


# -- roff ---------------------------------------------------------------------------------------------------


def esc(text: str) -> str:
    """Text for a roff line: backslashes and hyphens escaped, no line starting with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def _inline(text: str) -> str:
    """Markdown's `code` and **bold** as roff bold, *emphasis* as italics, on escaped text."""
    text = re.sub(r"\*\*(.+?)\*\*", r"\\fB\1\\fR", esc(text))
    text = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"\\fI\1\\fR", text)
    return re.sub(r"`([^`]+)`", r"\\fB\1\\fR", text)


def prose(text: str) -> str:
    """A docstring or a Markdown page as roff: paragraphs, "- " and "1. " lists, indented or fenced blocks
    kept as they are, ## headings as subsections, table rows as tagged paragraphs."""
    out: list[str] = []
    blocks = re.split(r"\n\s*\n(?!(?:[^`]|`(?!``))*```\s*$)", inspect.cleandoc(text).strip())
    for block in blocks:
        lines = block.splitlines()
        if block.startswith("```"):
            out += [".PP", ".RS 4", ".nf", esc("\n".join(lines[1:-1])), ".fi", ".RE"]
        elif all(line.startswith("    ") for line in lines):
            out += [".PP", ".RS 4", ".nf", esc(textwrap.dedent(block)), ".fi", ".RE"]
        elif lines[0].startswith("#"):
            out += [f'.SS "{esc(lines[0].lstrip("#").strip())}"']
            if lines[1:]:
                out.append(prose("\n".join(lines[1:])))
        elif lines[0].startswith("|"):
            # Skip the head and rule; a | inside `code` is not a cell border.
            rows = [[c.strip() for c in re.split(r"\|(?=(?:[^`]*`[^`]*`)*[^`]*$)", line.strip("|"))]
                    for line in lines[2:]]
            for cells in rows:
                out += [".TP", _inline(cells[0]), _inline(" \u2014 ".join(c for c in cells[1:] if c))]
        else:
            # A lead paragraph, then list items ("- x" or "1. x"), each item continued by indented lines.
            parts = re.split(r"\n(?=- |\d+\. )", block)
            if not re.match(r"- |\d+\. ", parts[0]):
                out += [".PP", _inline(" ".join(parts.pop(0).split()))]
            for item in parts:
                mark, _, body = item.partition(" ")
                out += [".IP \\(bu 2" if mark == "-" else f".IP {mark} 4", _inline(" ".join(body.split()))]
    return "\n".join(out)


def _header(section: int, title: str, date: str, version: str) -> list[str]:
    # Left-aligned, no hyphenation: option names and paths must stay whole to be copied.
    return [f'.TH UNLOCKER {section} "{date}" "unlocker {version}" "{title}"', ".ad l", ".nh", ".SH NAME"]


# -- unlocker(8) --------------------------------------------------------------------------------------------


def _annotation(param: Any) -> Any:
    """The Python type the parameter was declared with (typer has already taken `| None` off)."""
    annotation = param.type_descriptor.annotation
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else annotation


def _metavar(param: Any) -> str:
    kind = _annotation(param)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "{" + "|".join(str(m.value) for m in kind) + "}"
    if param.param_type_name == "argument":
        return str(param.name).upper()
    return {Path: "PATH", int: "N"}.get(kind, "PATH" if str(param.name).endswith("_file") else "TEXT")


def _breakable(text: str) -> str:
    """A list of choices may be wider than the page: let troff break after each | (\\: breaks, prints nothing)."""
    return text.replace("|", "|\\:")


def _option(param: Any) -> list[str]:
    names = ", ".join(f"\\fB{esc(o)}\\fR" for o in [*param.opts, *param.secondary_opts])
    if not param.is_flag:
        names += f" \\fI{_breakable(esc(_metavar(param)))}\\fR"
    help_text = param.help or ""
    default = param.default
    if not param.is_flag and default not in (None, "", ()) and not callable(default):  # a flag's is its name
        help_text += f" Default: {getattr(default, 'value', default)}."
    return [".TP", names, esc(help_text)]


def _usage(name: str, cmd: Any) -> str:
    parts = [f"\\fB{PROG}\\fR [\\fIGLOBAL OPTIONS\\fR] \\fB{esc(name)}\\fR"]
    for p in cmd.params:
        if p.param_type_name == "argument":
            shown = _metavar(p) + ("..." if p.nargs == -1 else "")
            shown = _breakable(esc(shown))
            parts.append(f"\\fI{shown}\\fR" if p.required else f"[\\fI{shown}\\fR]")
    if any(p.param_type_name == "option" for p in cmd.params):
        parts.append("[\\fIOPTIONS\\fR]")
    return " ".join(parts)


def commands() -> Iterable[tuple[str, Any]]:
    group = command()
    return [(name, group.commands[name]) for name in group.list_commands(None)]


def unlocker_8(date: str, version: str) -> str:
    group = command()
    lines = _header(8, "System Administration", date, version)
    lines += [f"{PROG} \\- {esc(group.help)}", ".SH SYNOPSIS", f"\\fB{PROG}\\fR [\\fIGLOBAL OPTIONS\\fR] "
              "\\fICOMMAND\\fR [\\fIARGUMENTS\\fR] [\\fIOPTIONS\\fR]", ".SH DESCRIPTION",
              esc("At boot, unlocker.service runs 'unlocker serve': it asks for the passphrase through "
                         "systemd-ask-password, unwraps the data keys into secret memory and hands them to each "
                         "granted unit as that unit's own systemd credential. Every other command is for the "
                         "administrator."),
              ".SH GLOBAL OPTIONS"]
    for p in group.params:
        lines += _option(p)
    lines += [".TP", "\\fB\\-\\-help\\fR", "Show the options of the command, or the commands, and exit."]
    lines.append(".SH COMMANDS")
    for name, cmd in commands():
        lines += [".SS " + f'"{esc(name)}"', _usage(name, cmd), prose(cmd.help or "")]
        for p in cmd.params:
            if p.param_type_name == "argument" and getattr(p, "help", None):
                lines += [".TP", f"\\fI{esc(p.name.upper())}\\fR", esc(p.help)]
        for p in cmd.params:
            if p.param_type_name == "option":
                lines += _option(p)
    lines.append(".SH EXIT STATUS")
    for code, meaning in EXIT_STATUS:
        lines += [".TP", f"\\fB{code}\\fR", esc(meaning)]
    lines.append(".SH FILES")
    for path, meaning in FILES:
        lines += [".TP", f"\\fI{esc(path)}\\fR", esc(meaning)]
    lines.append(".SH EXAMPLES")
    for what, how in EXAMPLES:
        lines += [".PP", esc(what), ".RS 4", ".nf", esc(how), ".fi", ".RE"]
    lines += [".SH SEE ALSO", esc(SEE_ALSO), ""]
    return "\n".join(lines)


# -- unlocker(5) --------------------------------------------------------------------------------------------


def unlocker_5(date: str, version: str, format_spec: str) -> str:
    """`format_spec` is docs/FORMAT.md, the keystore's specification (its tests check the code against it)."""
    lines = _header(5, "File Formats", date, version)
    spec = format_spec.split("\n", 1)[1]  # its "# title" is this page's name
    lines += ["unlocker \\- the keystore, the grant list and unlocker.conf",
              f".SH KEYSTORE ({esc(str(config.KEYSTORE))})", prose(spec),
              f".SH GRANT LIST ({esc(str(grants.GRANTS_FILE))})", prose(grants.__doc__ or ""),
              f".SH CONFIGURATION ({esc(str(config.CONFIG_FILE))})", prose(config.__doc__ or ""),
              ".SH SEE ALSO", "unlocker(8), systemd.exec(5), crypttab(5)", ""]
    return "\n".join(lines)


# -- bash completion ----------------------------------------------------------------------------------------


def bash_completion() -> str:
    """The script typer's own bash completion class writes: bash calls `unlocker` back with COMP_WORDS and
    _UNLOCKER_COMPLETE=complete_bash, so the completion comes from the live command definitions."""
    from typer._completion_classes import BashComplete  # typer's, on its vendored click

    script: str = BashComplete(command(), {}, PROG, COMPLETE_VAR).source()
    return script


# -- the --help texts (cli/helptext.py) ---------------------------------------------------------------------

HELPTEXT = Path(__file__).with_name("helptext.py")
# click wraps help to the terminal's width less 2, at most 78 columns: on any terminal 80 columns wide or
# more (or when stdout is not a terminal) typer prints these texts.
HELP_WIDTH = 78


def help_texts() -> dict[str, str]:
    """What typer prints for `unlocker --help` (key "") and `unlocker COMMAND --help`, HELP_WIDTH wide."""
    group = command()
    ctx = group.context_class(group, info_name=PROG, terminal_width=HELP_WIDTH)
    texts = {"": group.get_help(ctx)}
    for name, cmd in commands():
        texts[name] = cmd.get_help(cmd.context_class(cmd, info_name=name, parent=ctx))
    return texts


HELPTEXT_HEAD = f'''\
# ruff: noqa: E501 (click does not break a list of choices: a line of help is as long as the list)
"""What typer prints for `unlocker --help` and `unlocker COMMAND --help` on a terminal 80 columns wide
or more, for cli/plain.py to print without typer; each text a tuple of its lines. Generated from the
typer app by `python -m unlocker.cli.manpage`: do not edit."""

WIDTH = {HELP_WIDTH}
'''


def helptext_module() -> str:
    """The source of cli/helptext.py."""

    def lines(text: str, indent: str) -> str:
        return "(\n" + "".join(f"{indent}    {line!r},\n" for line in text.split("\n")) + f"{indent})"

    texts = help_texts()
    out = [HELPTEXT_HEAD, f"MAIN = {lines(texts.pop(''), '')}", "", "COMMANDS = {"]
    out += [f"    {name!r}: {lines(text, '    ')}," for name, text in texts.items()]
    return "\n".join([*out, "}", ""])


if __name__ == "__main__":
    HELPTEXT.write_text(helptext_module())
    print(f"wrote {HELPTEXT}")
