"""The unattended slots raced against the prompt, on the host with real Tang servers: a server that comes
up after its client still unlocks it (retries with back-off), and a win withdraws the prompt."""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import run_cli, write_secret

from unlocker.clevis.http import Timeouts
from unlocker.service.unattended import Backoff, Unattended


@pytest.fixture
def clevis_keystore(tmp_path, tang_servers):
    path = tmp_path / "keystore"
    pw = write_secret(tmp_path / "pw", b"pw")
    assert run_cli("init", "--no-tpm2", "--kdf-time", "20", "--passphrase-file", pw, keystore=path).returncode == 0
    r = run_cli("enroll", "clevis", "tang", json.dumps(tang_servers[0].config()), "--passphrase-file", pw,
                keystore=path)
    assert r.returncode == 0, r.stderr
    return path


def test_a_server_that_answers_wins_the_first_round(clevis_keystore):
    withdraw = threading.Event()
    race = Unattended(clevis_keystore, None, Timeouts(1, 2), withdraw=withdraw).start()
    assert race.won.wait(5) and withdraw.is_set()
    opened, source = race.claim()
    assert (opened.slot_index, source) == (1, "clevis")
    opened.close()
    assert race.claim() is None  # handed over once


def test_a_server_that_boots_after_its_client_still_unlocks_it(clevis_keystore, tang_servers):
    tang_servers[0].stop()
    race = Unattended(clevis_keystore, None, Timeouts(1, 2), Backoff(first=0.2, most=0.5)).start()
    try:
        assert race.first_round.wait(5) and not race.won.is_set()  # refused: the prompt may go up now
        time.sleep(0.5)
        assert not race.won.is_set()
        tang_servers[0].start()
        assert race.won.wait(5)
        assert race.claim()[1] == "clevis"
    finally:
        race.discard()


def test_discard_stops_the_retries_and_wipes_a_late_win(clevis_keystore, tang_servers):
    tang_servers[0].stop()
    race = Unattended(clevis_keystore, None, Timeouts(1, 2), Backoff(first=0.1, most=0.1)).start()
    assert race.first_round.wait(5)
    race.discard()
    tang_servers[0].start()
    time.sleep(0.5)
    assert not race.won.is_set() and race.claim() is None
