"""The Debian package (scripts/deb, debian/): built here, checked by lintian, installed with apt in a clean
booted container (the bare rootfs: no compiler, no checkout, no network), then used, upgraded while the
broker serves, removed and purged. The keystore survives all of it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import pytest

from .container import ROOT, Container
from .helpers import PASSPHRASE, consumer, expected, journal, run_consumer, wait_active

KEYSTORE = "/var/lib/unlocker/keystore"
UPGRADE_SUFFIX = "+test1"


def build_deb(version: str | None = None) -> Path:
    """scripts/deb (a package whose inputs have not changed is not rebuilt); returns the .deb."""
    argv = [str(ROOT / "scripts" / "deb"), *(["--version", version] if version else [])]
    p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1200)
    if p.returncode != 0:
        pytest.fail(f"scripts/deb failed ({p.returncode}):\n{p.stdout}{p.stderr}", pytrace=False)
    return ROOT / p.stdout.strip().splitlines()[-1]


def pyproject_version() -> str:
    match = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match
    return match.group(1)


@pytest.fixture(scope="module")
def deb() -> Path:
    return build_deb()


@pytest.fixture(scope="module")
def newer_deb(deb: Path) -> Path:
    return build_deb(pyproject_version() + UPGRADE_SUFFIX)


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


# ---- the package itself, on the host ----

def test_lintian_finds_no_errors(deb):
    if shutil.which("lintian") is None:
        pytest.fail("lintian not found: run scripts/deb (installs it)", pytrace=False)
    p = subprocess.run(["lintian", "--tag-display-limit", "0", str(deb)], capture_output=True, text=True,
                       timeout=600)
    tags = [line for line in p.stdout.splitlines() if re.match(r"^[EWIPXO]: ", line)]
    errors = [t for t in tags if t.startswith("E: ")]
    assert not errors, "\n".join(errors)
    if found := [t for t in tags if t.startswith("W: ")]:
        warnings.warn("lintian: " + "; ".join(found), stacklevel=1)


def test_the_package_holds_what_an_administrator_expects(deb, unpacked):
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Version", "Depends"], capture_output=True, text=True,
                            check=True).stdout
    assert f"Version: {pyproject_version()}\n" in fields
    for dependency in ("python3.11", "systemd", "tpm-udev", "libtss2-esys-3.0.2-0", "libtss2-tcti-device0",
                       "libsystemd0"):
        assert re.search(rf"[ ,]{re.escape(dependency)}( |,|$)", fields), (dependency, fields)
    for path in ("usr/sbin/unlocker", "lib/systemd/system/unlocker.service", "usr/lib/tmpfiles.d/unlocker.conf",
                 "usr/lib/systemd/catalog/unlocker.catalog", "usr/share/initramfs-tools/hooks/unlocker",
                 "usr/lib/unlocker/initramfs-keyscript", "usr/share/man/man8/unlocker.8.gz",
                 "usr/share/man/man5/unlocker.5.gz", "usr/share/bash-completion/completions/unlocker",
                 "usr/share/doc/unlocker/copyright", "usr/share/doc/unlocker/README.md.gz",
                 "usr/share/doc/unlocker/ADMIN-GUIDE.md.gz", "usr/share/doc/unlocker/recipes/mariadb.md"):
        assert os.path.lexists(unpacked / path), path
    assert os.readlink(unpacked / "usr/sbin/unlocker") == "../lib/unlocker/venv/bin/unlocker"
    # The venv runs Debian's interpreter, never the build host's (pyenv, /usr/local).
    assert (unpacked / "usr/lib/unlocker/venv/bin/unlocker").read_text().splitlines()[0] == \
        "#!/usr/lib/unlocker/venv/bin/python3.11"
    assert os.readlink(unpacked / "usr/lib/unlocker/venv/bin/python3.11") == "../../../../bin/python3.11"
    assert "home = /usr/bin\n" in (unpacked / "usr/lib/unlocker/venv/pyvenv.cfg").read_text()
    # The package's unit is units/unlocker.service with the package's paths, and nothing of /usr/local.
    unit = (unpacked / "lib/systemd/system/unlocker.service").read_text()
    source = (ROOT / "units/unlocker.service").read_text()
    assert "ExecStart=/usr/sbin/unlocker serve\n" in unit
    assert "/usr/local" not in unit
    assert "ConditionPathExists=/var/lib/unlocker/keystore\n" in unit
    assert [line for line in unit.splitlines() if not line.startswith(("ExecStart=", "Documentation="))] == \
        [line for line in source.splitlines() if not line.startswith(("ExecStart=", "Documentation="))]


@pytest.mark.parametrize("page", ["man8/unlocker.8.gz", "man5/unlocker.5.gz"])
def test_the_installed_man_pages_render_and_man_finds_them_by_name(unpacked, page):
    if shutil.which("man") is None:
        pytest.fail("man not found: apt-get install man-db groff-base", pytrace=False)
    env = {**os.environ, "MANWIDTH": "80", "LANG": "C.UTF-8", "MANPATH": str(unpacked / "usr/share/man")}
    p = subprocess.run(["man", "--warnings", "-l", str(unpacked / "usr/share/man" / page)], capture_output=True,
                       text=True, env=env)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert "unlocker" in p.stdout
    section = page[3]
    found = subprocess.run(["man", "-w", section, "unlocker"], capture_output=True, text=True, env=env)
    assert found.stdout.strip() == str(unpacked / "usr/share/man" / page), found.stderr


# ---- installed with apt in a clean booted container ----

def apt_install(c: Container, deb: Path, timeout: float = 300) -> str:
    """`apt-get install ./unlocker_*.deb`, as an administrator does; returns what apt printed."""
    inside = f"/var/tmp/{deb.name}"
    shutil.copy(deb, c.root / inside.lstrip("/"))
    p = c.run(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "--no-install-recommends",
               inside], timeout=timeout)
    return p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")


def apt(c: Container, *args: str) -> str:
    p = c.run(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", *args], timeout=300)
    return p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")


def init_keystore(c: Container) -> None:
    c.run(["unlocker", "init", "--no-tpm2", "--kdf-time", "50", "--passphrase-file", "-"], input=PASSPHRASE + b"\n")


def grant(c: Container, unit: str) -> None:
    consumer(c, unit)
    c.run(["unlocker", "grant", unit, "--credential", "dek", "--format", "raw"])


def broker_pid(c: Container) -> str:
    return c.show("unlocker.service", "MainPID")["MainPID"]


@pytest.fixture(scope="module")
def installed(rootfs, deb):
    """A clean machine (the bare rootfs) with the package installed by apt."""
    with Container() as c:
        c.install_output = apt_install(c, deb)  # type: ignore[attr-defined]
        yield c


@pytest.mark.parametrize(("section", "words"), [("8", ["doctor", "EXIT STATUS", "FILES"]), ("5", ["keystore"])])
def test_man_unlocker_works_on_the_installed_machine(installed, section, words):
    """What an administrator types after `apt-get install`: man finds the package's page by name."""
    c = installed
    p = c.run(["env", "MANWIDTH=80", "man", "-P", "cat", section, "unlocker"])
    text = p.stdout.decode()
    assert text.lstrip().startswith(f"UNLOCKER({section})"), text[:200]
    for word in words:
        assert word in text, word


def test_the_machine_has_no_compiler_and_no_checkout(installed):
    c = installed
    for tool in ("gcc", "cc", "pip", "pip3"):
        assert c.run(["sh", "-c", f"command -v {tool}"], check=False).returncode != 0, tool
    assert not (c.root / str(ROOT).lstrip("/")).exists()
    assert c.run(["unlocker", "--help"]).returncode == 0
    assert c.run(["readlink", "-f", "/usr/sbin/unlocker"]).stdout.decode().strip() == \
        "/usr/lib/unlocker/venv/bin/unlocker"


def test_installing_enables_the_unit_but_nothing_prompts_before_init(installed):
    c = installed
    assert c.systemctl("is-enabled", "unlocker.service").stdout.decode().strip() == "enabled"
    # What a boot does with an enabled unit: start it. Without a keystore it is skipped, and asks nothing.
    c.systemctl("start", "unlocker.service")
    shown = c.show("unlocker.service", "ActiveState", "ConditionResult")
    assert shown == {"ActiveState": "inactive", "ConditionResult": "no"}, shown
    assert c.pending_questions() == []
    # The tmpfiles.d entry made the directories, root only.
    assert c.run(["stat", "-c", "%a %U", "/var/lib/unlocker", "/run/unlocker"]).stdout.decode().split("\n")[:2] == \
        ["700 root", "700 root"]
    # `unlocker install` (the checkout route) leaves the package's unit alone: a copy in /etc would shadow it.
    assert "come with the Debian package" in c.run(["unlocker", "install", "--no-enable"]).stdout.decode()
    assert not (c.root / "etc/systemd/system/unlocker.service").exists()


def test_the_completion_completes_commands_and_options_in_bash(installed):
    c = installed

    def complete(*words: str) -> list[str]:
        words_q = " ".join(f"'{w}'" for w in words)
        probe = (f"source /usr/share/bash-completion/completions/unlocker; COMP_WORDS=({words_q}); "
                 f"COMP_CWORD={len(words) - 1}; _unlocker_completion unlocker; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
        return c.run(["bash", "-c", probe]).stdout.decode().split()

    assert complete("unlocker", "do") == ["doctor"]
    assert complete("unlocker", "doctor", "--j") == ["--json"]
    assert complete("unlocker", "grant", "db.service", "--format", "m") == ["mariadb"]


def test_the_journal_catalog_is_installed(installed):
    c = installed
    catalog = c.run(["journalctl", "--list-catalog"]).stdout.decode()
    assert "unlocker delivered a key to" in catalog  # systemd's trigger ran journalctl --update-catalog


def test_init_grant_the_boot_prompt_and_a_granted_unit(installed):
    c = installed
    init_keystore(c)
    grant(c, "granted.service")
    c.systemctl("start", "--no-block", "unlocker.service")
    question = c.answer_password(PASSPHRASE)
    assert question["id"] == "unlocker:keystore"
    wait_active(c, "unlocker.service")
    ok, report = run_consumer(c, "granted.service")
    assert ok, journal(c, "granted.service")
    assert bytes.fromhex(report.splitlines()[2]) == expected(c, "raw")
    assert "(prompt)" in journal(c, None, "-t", "unlocker")


def test_an_upgrade_while_the_broker_serves_asks_nothing_and_consumers_keep_starting(installed, newer_deb):
    # postinst restarts the broker after an upgrade; the fd store lets the new process serve without a
    # prompt, and the grants' Wants= leaves the running consumers alone.
    c = installed
    assert c.show("unlocker.service", "ActiveState")["ActiveState"] == "active"
    # A running consumer (a database, say) must not be restarted by the broker's restart.
    c.write_file("/etc/systemd/system/long.service", "[Service]\nType=exec\nExecStart=/bin/sleep infinity\n")
    c.run(["unlocker", "grant", "long.service", "--credential", "dek", "--format", "raw"])
    c.systemctl("start", "long.service")
    long_pid = c.show("long.service", "MainPID")["MainPID"]
    before = broker_pid(c)
    apt_install(c, newer_deb)
    version = c.run(["dpkg-query", "-W", "-f", "${Version}", "unlocker"]).stdout.decode()
    assert version == pyproject_version() + UPGRADE_SUFFIX
    # postinst restarted the broker without waiting for it: wait for the new process, or a prompt.
    deadline = time.monotonic() + 60
    while True:
        shown = c.show("unlocker.service", "ActiveState", "MainPID")
        questions = c.pending_questions()
        assert not questions, ("the broker asked for the passphrase again after the upgrade: "
                               f"{json.dumps(questions)}\n{journal(c, 'unlocker.service')}")
        if shown["ActiveState"] == "active" and shown["MainPID"] not in ("0", before):
            break
        assert time.monotonic() < deadline, f"the broker was not restarted by the upgrade: {shown}\n" + \
            journal(c, "unlocker.service")
        time.sleep(0.1)
    c.run(["rm", "-f", "/var/log/granted.service.out"])
    ok, report = run_consumer(c, "granted.service")
    assert ok, journal(c, "granted.service")
    assert bytes.fromhex(report.splitlines()[2]) == expected(c, "raw")
    assert c.show("long.service", "ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": long_pid}


def test_remove_and_purge_keep_the_keystore_and_its_backup(rootfs, deb):
    with Container() as c:
        apt_install(c, deb)
        init_keystore(c)
        grant(c, "granted.service")
        # A change of the keystore leaves the previous generation as its backup.
        c.write_file("/root/new", b"a second passphrase\n", 0o600)
        c.run(["unlocker", "enroll", "passphrase", "--kdf-time", "50", "--passphrase-file", "-",
               "--new-passphrase-file", "/root/new"], input=PASSPHRASE + b"\n")
        kept = {p: c.read_file(p) for p in (KEYSTORE, KEYSTORE + ".bak", "/etc/unlocker/grants")}

        removed = apt(c, "remove", "unlocker")
        assert "kept /var/lib/unlocker" in removed, removed
        assert not c.root.joinpath("usr/sbin/unlocker").exists()
        assert {p: c.read_file(p) for p in kept} == kept

        purged = apt(c, "purge", "unlocker")
        assert "kept /var/lib/unlocker" in purged, purged
        assert c.run(["dpkg-query", "-W", "-f", "${Status}", "unlocker"], check=False).stdout.decode() in \
            ("", "unknown ok not-installed")
        assert {p: c.read_file(p) for p in kept} == kept
        # A granted unit now fails to start rather than run without its key.
        assert not run_consumer(c, "granted.service")[0]
