"""The man pages and bash completion that scripts/man generates from the command definitions: they render
without warnings, name every command and option, and the completion completes from the live CLI. And
cli/helptext.py, the --help texts printed without typer: they are typer's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unlocker.cli import helptext, manpage
from unlocker.service import audit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("man")
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "man"), str(out)], capture_output=True, text=True,
                       env={**os.environ, "SOURCE_DATE_EPOCH": "1764374400"})
    assert p.returncode == 0, p.stderr
    return out


def render(page: Path) -> str:
    if shutil.which("man") is None:
        pytest.fail("man not found: apt-get install man-db groff-base", pytrace=False)
    p = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True,
                       env={**os.environ, "MANWIDTH": "80", "LANG": "C.UTF-8", "MAN_KEEP_FORMATTING": ""})
    assert p.returncode == 0 and p.stderr == "", p.stderr  # groff's warnings go to stderr
    return re.sub(r".\x08", "", p.stdout)  # overstrike bold/underline, should a pager setting leave it


@pytest.mark.parametrize("page", ["man8/unlocker.8", "man5/unlocker.5"])
def test_every_page_renders_without_warnings(built, page):
    text = render(built / page)
    assert text.startswith(f"UNLOCKER({page[3]})")
    assert re.search(r"^unlocker \S+ +2025-11-29 ", text, re.M)  # version and SOURCE_DATE_EPOCH in the footer


def sections(text: str) -> dict[str, str]:
    """unlocker(8)'s COMMANDS section cut into one piece per command (subsection headings: 3 spaces)."""
    commands = text.split("\nCOMMANDS\n", 1)[1].split("\nEXIT STATUS\n", 1)[0]
    parts = re.split(r"^   (\S+)\n", commands, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_unlocker_8_has_every_command_and_each_of_its_options(built):
    text = render(built / "man8" / "unlocker.8")
    pieces = sections(text)
    cli = dict(manpage.commands())
    assert set(pieces) == set(cli)
    assert {"doctor", "init", "grant", "rotate", "serve"} <= set(pieces)
    for name, command in cli.items():
        for param in command.params:
            for opt in [*param.opts, *param.secondary_opts] if param.param_type_name == "option" else []:
                assert re.search(rf"(^|[\s,]){re.escape(opt)}\b", pieces[name], re.M), f"{name} {opt}"
            if param.help:
                assert " ".join(param.help.split()[:3]) in " ".join(pieces[name].split()), f"{name} {param.name}"
    for opt in ("--keystore", "--debug"):
        assert opt in text.split("\nGLOBAL OPTIONS\n", 1)[1].split("\nCOMMANDS\n", 1)[0]


def test_unlocker_8_has_exit_codes_files_and_examples(built):
    text = render(built / "man8" / "unlocker.8")
    for heading in ("EXIT STATUS", "FILES", "EXAMPLES", "SEE ALSO"):
        assert f"\n{heading}\n" in text
    exits = text.split("\nEXIT STATUS\n", 1)[1].split("\nFILES\n", 1)[0]
    assert all(re.search(rf"^       {code}\s", exits, re.M) for code in ("0", "1", "2"))
    assert "/var/lib/unlocker/keystore" in text and "/etc/unlocker/grants" in text
    assert audit.DENIED in text  # the example queries the real id


def test_unlocker_5_has_the_keystore_format_the_grant_list_and_the_config(built):
    text = render(built / "man5" / "unlocker.5")
    for heading in ("KEYSTORE (/var/lib/unlocker/keystore)", "GRANT LIST (/etc/unlocker/grants)",
                    "CONFIGURATION (/etc/unlocker/unlocker.conf)"):
        assert f"\n{heading}\n" in text
    for slot_type in ("passphrase", "recovery", "tpm2", "tpm2+passphrase"):
        assert re.search(rf"^       {re.escape(slot_type)}\b", text, re.M), slot_type
    assert "pcrs=<n+n..|none>" in text  # a | inside code is not a table border
    assert "accept-cached = yes" in text


def complete(built: Path, tmp_path: Path, words: list[str]) -> list[str]:
    """Ask the generated script for completions the way bash's programmable completion does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "unlocker"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m unlocker "$@"\n')
    wrapper.chmod(0o755)
    script = built / "bash-completion" / "unlocker"
    words_q = " ".join(f"'{w}'" for w in words)
    probe = (f"source {script}; complete -p unlocker >/dev/null; COMP_WORDS=({words_q}); "
             f"COMP_CWORD={len(words) - 1}; _unlocker_completion unlocker; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    p = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60,
                       env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_completion_completes_a_command(built, tmp_path):
    assert complete(built, tmp_path, ["unlocker", "do"]) == ["doctor"]
    assert {"grant", "revoke", "rotate", "retire"} <= set(complete(built, tmp_path, ["unlocker", "r"]) +
                                                          complete(built, tmp_path, ["unlocker", "g"]))


def test_completion_completes_an_option_and_a_choice(built, tmp_path):
    assert complete(built, tmp_path, ["unlocker", "doctor", "--j"]) == ["--json"]
    assert complete(built, tmp_path, ["unlocker", "grant", "db.service", "--format", "m"]) == ["mariadb"]


def test_the_help_printed_without_typer_is_typers():
    # After a change to a command (a docstring, an option), rewrite it: python -m unlocker.cli.manpage
    assert manpage.HELPTEXT.read_text() == manpage.helptext_module(), "run: python -m unlocker.cli.manpage"
    texts = manpage.help_texts()
    assert set(texts) == {"", *helptext.COMMANDS} and texts[""].startswith("Usage: unlocker [OPTIONS] COMMAND")
