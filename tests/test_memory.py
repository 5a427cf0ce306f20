"""Secrets do not outlive their use in memory."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import write_secret
from memscan import find_in_process

from unlocker.memory import SCRUB_TUNABLE, SecretMemory, environment_with_scrubbing, wipe

# Runs `unlocker unlock --check` in this process, then keeps a canary (to prove the scanner can see
# this process's heap) and stops itself so the parent can read its memory.
CHILD = textwrap.dedent("""
    import os, signal, sys
    from unlocker.cli.main import main
    canary = bytearray(open(sys.argv[1], "rb").read())
    sys.argv = ["unlocker", *sys.argv[2:]]
    try:
        main()
    except SystemExit as e:
        sys.stdout.write(f"exit {e.code}\\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGSTOP)
""")


def _run_stopped(args: list[str], canary_file) -> subprocess.Popen:
    # The environment `unlocker` re-executes itself with (see test_cli_reexecs_with_scrubbing).
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(canary_file), *args], env=environment_with_scrubbing(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status = os.waitpid(child.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), child.stderr.read()
    return child


def test_passphrase_is_gone_from_memory_after_unlock_check(cli, tmp_path):
    passphrase = secrets.token_hex(16).encode()
    canary = secrets.token_hex(16).encode()
    pw = write_secret(tmp_path / "pw", passphrase + b"\n")
    path = tmp_path / "keystore"
    assert cli("init", "--no-tpm2", "--kdf-time", "20", "--passphrase-file", pw, keystore=path).returncode == 0
    child = _run_stopped(["--keystore", str(path), "unlock", "--check", "--passphrase-file", str(pw)],
                         write_secret(tmp_path / "canary", canary))
    try:
        assert find_in_process(child.pid, canary), "the scanner must see the child's heap"
        assert find_in_process(child.pid, passphrase) == []
        assert child.stdout.read1().startswith(b"slot 0 opens %s" % str(path).encode())
    finally:
        child.kill()
        child.wait()


def test_cli_reexecs_with_scrubbing(tmp_path):
    """`unlocker` started without the tunable re-executes itself with it (same pid, new environment)."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    p = subprocess.Popen([sys.executable, "-m", "unlocker", "--keystore", str(tmp_path / "k"), "init", "--no-tpm2",
                          "--passphrase-file", "-"], stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 10
        # It blocks reading the passphrase from stdin: by then it has re-executed.
        while "GLIBC_TUNABLES" not in (environ := Path(f"/proc/{p.pid}/environ").read_bytes().decode()):
            assert time.monotonic() < deadline, "no re-exec seen"
            time.sleep(0.05)
        assert f"GLIBC_TUNABLES={SCRUB_TUNABLE}" in environ.split("\0")
    finally:
        p.kill()
        p.wait()


def test_wipe_zeroes_bytearrays_and_bytes():
    a = bytearray(b"secret-a")
    b = bytes(bytearray(b"secret-b"))  # a fresh object, not an interned constant
    wipe(a, b, None)
    assert a == bytearray(8) and b == bytes(8)


def test_secret_memory_is_memfd_secret_or_locked():
    region = SecretMemory(4096)
    try:
        assert region.kind in ("memfd_secret", "mlock")
        region.view[:4] = b"abcd"
        assert bytes(region.view[:4]) == b"abcd"
    finally:
        region.close()


def test_harden_process_makes_it_non_dumpable_without_core_files():
    pr_get_dumpable = 3
    code = ("import ctypes, resource; from unlocker.memory import harden_process; harden_process();"
            f"print(ctypes.CDLL(None).prctl({pr_get_dumpable}, 0, 0, 0, 0), resource.getrlimit(resource.RLIMIT_CORE))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split(" ", 1) == ["0", "(0, 0)\n"]


def test_recovery_key_text_is_gone_from_memory_after_unlock_check(cli, tmp_path):
    pw = write_secret(tmp_path / "pw", secrets.token_hex(16).encode() + b"\n")
    path = tmp_path / "keystore"
    r = cli("init", "--no-tpm2", "--kdf-time", "20", "--recovery-key", "--passphrase-file", pw, keystore=path)
    assert r.returncode == 0, r.stderr
    shown = r.stdout.split("Recovery key")[1].split()[-1].encode()  # the key as printed, e.g. "cbde...-..."
    canary = secrets.token_hex(16).encode()
    for typed, needles in [(shown, [shown]), (shown.upper(), [shown.upper(), shown])]:
        key_file = write_secret(tmp_path / "key", typed + b"\n")
        child = _run_stopped(["--keystore", str(path), "unlock", "--check", "--passphrase-file", str(key_file)],
                             write_secret(tmp_path / "canary", canary))
        try:
            assert find_in_process(child.pid, canary), "the scanner must see the child's heap"
            for needle in needles:
                assert find_in_process(child.pid, needle) == [], needle
                assert find_in_process(child.pid, needle.replace(b"-", b"")) == []
            assert child.stdout.read1().startswith(b"slot 1 opens")
        finally:
            child.kill()
            child.wait()


def test_secret_memory_keeps_its_descriptor_only_when_asked():
    """The broker's keyring leaves no descriptor for pidfd_getfd(2) to take; only the fd store's region has one."""
    region, kept = SecretMemory(4096), SecretMemory(32, keep_fd=True)
    try:
        assert region.fd is None
        if kept.kind == "memfd_secret":
            assert os.readlink(f"/proc/self/fd/{kept.fd}").startswith("/secretmem")
    finally:
        region.close()
        kept.close()
    assert kept.fd is None
