"""The unlock child and the broker's side of it (spawn.py, unlock_child.py), as real processes: the keys
come back in a region of secret memory, failures come back with the child's message and exit code, a
child that dies is a failed unlock, and the broker's modules load neither the TPM stack nor the CLI."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unlocker.errors import UnlockerError
from unlocker.keystore import storage
from unlocker.keystore.slots import Secrets
from unlocker.service.options import AskOptions, ServeOptions
from unlocker.service.spawn import UnlockChild


def options(keystore: Path, tmp_path: Path, passphrase: bytes) -> ServeOptions:
    secret = tmp_path / "passphrase"
    secret.write_bytes(passphrase)
    return ServeOptions(keystore=keystore, run_dir=tmp_path / "run", tcti=None, passphrase_file=str(secret),
                        ask=AskOptions())


def test_the_child_hands_over_every_key_and_reports_its_status(two_slot_keystore, tmp_path):
    path, first, _ = two_slot_keystore
    statuses: list[str] = []
    handed = UnlockChild(options(path, tmp_path, first), statuses.append).result()
    keys = bytes(handed.region.view)  # a copy: pytest's assertions would keep views that block the unmap
    try:
        opened = storage.open_from(path, storage.read(path), Secrets(bytearray(first)))
        assert keys[:32] == bytes(opened.store_key)
        for entry in handed.entries:
            assert keys[entry.offset : entry.offset + 32] == bytes(opened.dek(entry.id))
        assert handed.source == "passphrase file" and handed.slot_index == 0
        assert handed.generation == opened.keystore.generation
        assert statuses == ["waiting for the passphrase (attempt 1 of 3)"]
        if handed.region.kind == "memfd_secret":
            assert not handed.region.writable and handed.region.fd is None  # read-only, no descriptor kept
        opened.close()
    finally:
        handed.region.close()


def test_a_wrong_passphrase_fails_with_the_childs_message_and_exit_code(two_slot_keystore, tmp_path):
    path, _, _ = two_slot_keystore
    with pytest.raises(UnlockerError) as e:
        UnlockChild(options(path, tmp_path, b"wrong"), lambda _: None).result()
    assert e.value.exit_code == 2
    assert str(e.value).startswith("no keyslot opened after 3 attempt(s)")


def test_a_child_that_dies_is_a_failed_unlock(two_slot_keystore, tmp_path, caplog):
    path, _, _ = two_slot_keystore
    fifo = tmp_path / "fifo"
    subprocess.run(["mkfifo", str(fifo)], check=True)
    child = UnlockChild(replace_file(options(path, tmp_path, b""), fifo), lambda _: None)
    time.sleep(0.5)  # blocked opening the fifo
    child.proc.kill()
    with pytest.raises(UnlockerError, match=r"ended without an answer \(killed by SIGKILL\)"):
        child.result()
    assert "ended without an answer (killed by SIGKILL)" in caplog.text


def replace_file(o: ServeOptions, path: Path) -> ServeOptions:
    from dataclasses import replace

    return replace(o, passphrase_file=str(path))


def test_options_cross_processes_unchanged(tmp_path):
    o = options(tmp_path / "k", tmp_path, b"x")
    assert ServeOptions.from_json(o.to_json()) == o


# What the broker process has loaded once it is running: its modules, imported as `python -m
# unlocker.service.serve` imports them.
HEAVY = ("tpm2_pytss", "Crypto", "typer", "click", "unlocker.cli", "unlocker.tpm", "unlocker.clevis.ecmr",
         "unlocker.clevis.pins", "unlocker.service.ask", "unlocker.service.unattended",
         "unlocker.service.unlock_child", "unlocker.keystore.slots.tpm2")


def test_the_broker_loads_neither_the_tpm_stack_nor_the_cli():
    code = (f"import sys, json, unlocker.service.serve; heavy = {HEAVY!r}; print(json.dumps(sorted("
            "m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in heavy))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True).stdout
    assert json.loads(out) == []




def test_without_memfd_secret_the_bytes_go_straight_into_a_region_of_the_broker():
    """The mlock fallback cannot be handed over: the child sends the bytes after the header (unlock_child.py
    hand_over), and the broker receives them into its own region."""
    child = UnlockChild.__new__(UnlockChild)
    child.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    keys = bytes(range(64))
    theirs.send(keys)
    handed = child._take({"size": 64, "entries": [[1, "primary", 32]], "generation": 7, "slot_index": 0,
                          "source": "prompt"}, [])
    try:
        assert bytes(handed.region.view) == keys and handed.generation == 7
        assert handed.region.writable  # its own region, wiped at close
    finally:
        handed.region.close()
        child.sock.close()
        theirs.close()
