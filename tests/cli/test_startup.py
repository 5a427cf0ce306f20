"""What `unlocker` loads to start. The reports scripts call in a loop, lock, unlock, grant, revoke and every
--help run without typer (cli/plain.py) and print what typer prints; the reports load neither the crypto,
TPM nor clevis stacks; only commands that may handle a secret re-execute. Behaviour, not time: the figures
are bench/cli.py's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST, ROOT

from unlocker import config
from unlocker.cli import actions, helptext
from unlocker.cli.main import handles_secrets, typer_app
from unlocker.cli.plain import plain_call
from unlocker.keystore import changes, storage
from unlocker.keystore.slots import Secrets
from unlocker.memory import environment_with_scrubbing

# Runs `unlocker ARGS...` in this process and prints, at exit, every module it loaded. A re-exec would
# replace the process image: the line would never be printed.
LOADED_AT_EXIT = """
import atexit, sys
atexit.register(lambda: print("LOADED " + " ".join(sorted(sys.modules)), file=sys.stderr))
sys.argv = ["unlocker", *sys.argv[1:]]
from unlocker.cli.main import main
main()
"""

HEAVY = ["cryptography", "Crypto", "unlocker.clevis.jose", "unlocker.clevis.pins", "unlocker.keystore.kdf",
         "unlocker.keystore.unlock", "systemd", "rich", "pydantic"]
# status asks a TPM when there is one: only then may it load the TPM stack.
if not Path("/dev/tpmrm0").exists():
    HEAVY += ["tpm2_pytss", "unlocker.tpm"]


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    path = tmp_path_factory.mktemp("startup") / "keystore"
    opened = changes.create("passphrase", Secrets(bytearray(b"a passphrase")), FAST)
    storage.write(path, opened.keystore, expected_generation=None)
    opened.close()
    return path


def loaded(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    # No COLUMNS: stdout is a pipe, so help is as wide as typer makes it anywhere but a narrow terminal.
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "COLUMNS")}
    p = subprocess.run([sys.executable, "-c", LOADED_AT_EXIT, *args], capture_output=True, text=True, timeout=60,
                       cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    lines = [line for line in p.stderr.splitlines() if line.startswith("LOADED ")]
    assert lines, f"no module list: did it re-execute?\n{p.stderr}"
    return p, set(lines[0].split()[1:])


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize("command", [["status", "--json"], ["slots", "--json"], ["status"], ["slots"]])
def test_scripted_reports_load_no_typer_crypto_tpm_or_clevis_and_do_not_reexec(keystore, command):
    p, modules = loaded("--keystore", str(keystore), *command)
    assert p.returncode == 0, p.stderr
    assert _heavy(modules) == [] and "typer" not in modules


@pytest.mark.parametrize("command", [["status", "--json"], ["slots", "--json"], ["status"], ["slots"]])
def test_the_reports_load_neither_logging_nor_configparser(keystore, command):
    # Milliseconds of every call (issue 13): a report logs nothing but a TPM library's warnings (logs.py),
    # and with no config file there is nothing to parse.
    assert not config.CONFIG_FILE.exists()
    p, modules = loaded("--keystore", str(keystore), *command)
    assert p.returncode == 0, p.stderr
    assert "configparser" not in modules
    if "unlocker.tpm" in HEAVY:  # no TPM here: status does not load its stack
        assert "logging" not in modules


@pytest.mark.parametrize("command", [
    ["--help"], ["lock", "--help"], ["init", "--help"], ["lock"], ["unlock"], ["grant", "not/a-unit"],
    ["revoke", "no-grant-here.service"]])
def test_help_and_the_everyday_commands_load_no_typer_and_do_not_reexec(keystore, command):
    p, modules = loaded("--keystore", str(keystore), *command)
    assert p.returncode == (0 if command[-1] == "--help" else 1), p.stderr
    assert _heavy(modules) == [] and "typer" not in modules


def test_a_typer_command_that_needs_no_secret_loads_no_crypto_and_does_not_reexec(keystore):
    # restore-backup goes through typer (which loads pydantic to check its options) and fails: no backup.
    p, modules = loaded("--keystore", str(keystore), "restore-backup")
    assert p.returncode == 1 and "no backup" in p.stderr
    assert "typer" in modules and [m for m in _heavy(modules) if not m.startswith("pydantic")] == []


# `unlocker ARGS...` with the plain path turned off: what typer prints.
THROUGH_TYPER = """
import sys
from unlocker.cli import main, plain
plain.plain_call = lambda argv: None
sys.argv = ["unlocker", *sys.argv[1:]]
main.main()
"""


def through_both(*argv: str, columns: str | None = None) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
    """(exit code, stdout, stderr) of argv through typer, then as `unlocker` runs it. Scrubbing is on
    already, so that neither re-executes."""
    env = {k: v for k, v in environment_with_scrubbing().items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    ran = [subprocess.run([sys.executable, *how, *argv], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=env, stdin=subprocess.DEVNULL)
           for how in (["-c", THROUGH_TYPER], ["-m", "unlocker"])]
    typer, plain = ((p.returncode, p.stdout, p.stderr) for p in ran)
    return typer, plain


@pytest.mark.parametrize("command", [
    ["slots", "--json"], ["status", "--json"], ["status"], ["slots"],
    ["--help"], ["lock", "--help"], ["init", "--help"], ["grant", "--help"],
    ["lock"], ["unlock"], ["grant", "not/a-unit", "--format", "hex"], ["grant", "a.service", "--credential", "a/b"],
    ["revoke", "no-grant-here.service", "--credential", "db"],
])
def test_the_plain_path_prints_what_the_typer_command_prints(monkeypatch, keystore, command):
    monkeypatch.setenv("COLUMNS", "80")  # as wide as in the children, whose stdout is a pipe
    assert plain_call(["--keystore", str(keystore), *command]) is not None
    typer, plain = through_both("--keystore", str(keystore), *command)
    assert typer == plain
    assert typer[0] == (0 if command[0] in ("status", "slots") or command[-1] == "--help" else 1), typer[2]
    if "--json" in command:
        json.loads(plain[1])


def test_on_a_narrow_terminal_help_is_typers():
    # click wraps help to the terminal: the text kept for 80 columns would be wrong.
    typer, plain = through_both("lock", "--help", columns="60")
    assert typer == plain and typer[1] != "\n".join(helptext.COMMANDS["lock"]) + "\n"
    assert max(len(line) for line in typer[1].splitlines()) <= 58


@pytest.mark.parametrize("command", [["--help"], ["status", "--json"]])
@pytest.mark.parametrize("how", [["-c", THROUGH_TYPER], ["-m", "unlocker"]], ids=["typer", "plain"])
def test_a_reader_gone_away_ends_it_quietly(keystore, command, how):
    # `unlocker --help | head -1`: the pipe's reader has closed it before the command writes.
    read, write = os.pipe()
    os.close(read)
    try:
        p = subprocess.run([sys.executable, *how, "--keystore", str(keystore), *command], stdout=write,
                           stderr=subprocess.PIPE, text=True, timeout=60, cwd=ROOT, env=environment_with_scrubbing(),
                           stdin=subprocess.DEVNULL)
    finally:
        os.close(write)
    assert (p.returncode, p.stderr) == (1, "")


@pytest.mark.parametrize("argv", [
    ["lock"],
    ["--keystore", "/k", "unlock"],
    ["grant", "a.service"],
    ["grant", "a.service", "b.service", "--credential", "db", "--format", "mariadb", "--no-reload"],
    ["--keystore=/k", "--debug", "grant", "--format=hex", "a.service", "--credential=key"],
    ["revoke", "a.service"],
    ["revoke", "--no-reload", "a.service", "--credential", "dek"],
])
def test_the_plain_path_calls_what_the_typer_command_calls(monkeypatch, argv):
    calls: list[tuple[str, tuple[object, ...]]] = []
    for name in ("lock", "unlock", "grant", "revoke"):
        monkeypatch.setattr(actions, name, lambda *args, name=name: calls.append((name, args)))
    typer_app()(argv, prog_name="unlocker", standalone_mode=False)
    call = plain_call(argv)
    assert call is not None
    call()
    assert len(calls) == 2 and calls[0] == calls[1]


@pytest.mark.parametrize("argv", [["serve"], ["--keystore", "/k", "serve"], ["--debug", "serve"]])
def test_serve_execs_the_broker_with_the_same_options_on_both_paths(monkeypatch, argv):
    """What unlocker.service runs takes the plain path (an interpreter start less at boot); the broker it
    execs must be given exactly what typer's `serve` gives it."""
    from unlocker.service import serve as serve_module

    execs: list[object] = []
    monkeypatch.setattr(serve_module, "serve", execs.append)
    typer_app()(argv, prog_name="unlocker", standalone_mode=False)
    call = plain_call(argv)
    assert call is not None
    call()
    assert len(execs) == 2 and execs[0] == execs[1]


@pytest.mark.parametrize(("argv", "plain"), [
    (["status", "--json"], True),
    (["--keystore", "/k", "--debug", "status", "--json", "--tpm2-device", "swtpm:port=1"], True),
    (["--keystore=/k", "slots"], True),
    (["doctor", "--json", "--tpm2-device=device:/dev/tpmrm0"], True),
    (["lock"], True),
    (["unlock"], True),
    (["grant", "a.service", "b.service", "--credential", "db", "--format", "json", "--no-reload"], True),
    (["revoke", "--credential=db", "a.service"], True),
    (["serve"], True),
    (["serve", "--tries", "5"], False),
    (["--help"], True),
    (["--keystore", "/k", "--debug", "--help"], True),
    (["status", "--help"], True),
    (["--keystore", "/k", "rotate", "--help"], True),
    ([], False),
    (["status", "--json", "--json"], False),  # what typer makes of a repeated option is typer's to say
    (["status", "--debug"], False),  # --debug is a global option: typer's usage error
    (["slots", "--tpm2-device", "x"], False),
    (["status", "--tpm2-device"], False),
    (["status", "--tpm2-device", "--json"], False),
    (["--keystore=", "status"], False),
    (["--keystore", "/k", "--keystore", "/j", "status"], False),
    (["stat"], False),
    (["status", "extra"], False),
    (["lock", "--json"], False),
    (["unlock", "--check"], False),  # reads a secret
    (["grant"], False),  # typer says a unit is missing
    (["grant", "a.service", "--format", "RAW"], False),  # typer's choice to make (and to refuse)
    (["grant", "a.service", "--credential"], False),
    (["grant", "a.service", "--", "-b.service"], False),
    (["grant", "-a.service"], False),
    (["revoke", "a.service", "b.service"], False),
    (["--help", "status"], False),
    (["stat", "--help"], False),
    (["status", "--json", "--help"], False),  # help only when --help is the one word after the command
    (["init", "--passphrase-file", "--help"], False),
])
def test_only_a_plain_call_bypasses_typer(monkeypatch, argv, plain):
    monkeypatch.setenv("COLUMNS", "80")
    assert (plain_call(argv) is not None) == plain


@pytest.mark.parametrize(("columns", "plain"), [("80", True), ("200", True), ("79", False), ("40", False)])
def test_help_is_plain_only_as_wide_as_typer_would_print_it(monkeypatch, columns, plain):
    monkeypatch.setenv("COLUMNS", columns)
    assert (plain_call(["lock", "--help"]) is not None) == plain


def test_bash_asking_for_completions_gets_typer(monkeypatch):
    monkeypatch.setenv("_UNLOCKER_COMPLETE", "complete_bash")
    assert plain_call(["status", "--json"]) is None


@pytest.mark.parametrize(("argv", "secret"), [
    (["status", "--json"], False),
    (["--keystore", "init", "status"], False),  # "init" is --keystore's value here
    (["--debug", "grant", "a.service"], False),
    (["--help"], False),
    ([], False),
    (["--keystore", "--help", "init"], True),
    (["init", "--help"], True),  # "--help" may be --passphrase-file's value
    (["init"], True),
    (["--keystore", "/k", "unlock", "--check"], True),
    (["serve"], True),
    (["rotate", "dek"], True),
    (["a-command-added-later"], True),
])
def test_only_commands_that_may_handle_a_secret_reexecute(argv, secret):
    assert handles_secrets(argv) == secret
