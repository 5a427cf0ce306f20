"""What `unlocker` loads to start. The reports scripts call in a loop run without typer and load neither the
crypto, TPM nor clevis stacks; --help loads no rich; only commands that may handle a secret re-execute.
Behaviour, not time: the figures are bench/cli.py's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST, ROOT

from unlocker.cli.main import handles_secrets
from unlocker.cli.reports import plain_call
from unlocker.keystore import changes, storage
from unlocker.keystore.slots import Secrets

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
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
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


def test_help_loads_typer_but_no_rich_pydantic_crypto_or_tpm():
    p, modules = loaded("--help")
    assert p.returncode == 0 and "Commands:" in p.stdout, p.stderr
    assert "typer" in modules and _heavy(modules) == []


def test_a_typer_command_that_needs_no_secret_loads_no_crypto_and_does_not_reexec(keystore):
    # `lock` goes through typer (which loads pydantic to check its options) and fails: no broker here.
    p, modules = loaded("--keystore", str(keystore), "lock")
    assert p.returncode == 1 and "broker" in p.stderr
    assert [m for m in _heavy(modules) if not m.startswith("pydantic")] == []


@pytest.mark.parametrize("command", [["slots", "--json"], ["status", "--json"], ["status"], ["slots"]])
def test_the_plain_path_prints_what_the_typer_command_prints(keystore, command):
    argv = ["--keystore", str(keystore), *command]
    through_typer = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom unlocker.cli.main import typer_app\n"
         "typer_app()(sys.argv[1:], prog_name='unlocker', standalone_mode=False)", *argv],
        capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)
    plain = subprocess.run([sys.executable, "-m", "unlocker", *argv], capture_output=True, text=True, timeout=60,
                           cwd=ROOT, stdin=subprocess.DEVNULL)
    assert through_typer.returncode == plain.returncode == 0, through_typer.stderr + plain.stderr
    assert through_typer.stdout == plain.stdout
    if "--json" in command:
        json.loads(plain.stdout)


@pytest.mark.parametrize(("argv", "plain"), [
    (["status", "--json"], True),
    (["--keystore", "/k", "--debug", "status", "--json", "--tpm2-device", "swtpm:port=1"], True),
    (["--keystore=/k", "slots"], True),
    (["doctor", "--json", "--tpm2-device=device:/dev/tpmrm0"], True),
    ([], False),
    (["--help"], False),
    (["status", "--help"], False),
    (["status", "--json", "--json"], False),  # what typer makes of a repeated option is typer's to say
    (["status", "--debug"], False),  # --debug is a global option: typer's usage error
    (["slots", "--tpm2-device", "x"], False),
    (["status", "--tpm2-device"], False),
    (["status", "--tpm2-device", "--json"], False),
    (["--keystore=", "status"], False),
    (["--keystore", "/k", "--keystore", "/j", "status"], False),
    (["stat"], False),
    (["lock"], False),
])
def test_only_a_plain_report_call_bypasses_typer(argv, plain):
    assert (plain_call(argv) is not None) == plain


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
