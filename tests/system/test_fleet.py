"""Network-bound unlock at boot, on a freshly booted machine, with real Tang servers on the host's loopback
(the container shares the host's network namespace): the unattended slot raced against the prompt."""

from __future__ import annotations

import json
import time

import pytest

from unlocker.keystore import changes, storage
from unlocker.keystore.slots import EnrollOptions, Secrets
from unlocker.keystore.slots.quorum import format_share, new_shares, parse_share, share_number
from unlocker.keystore.unlock import open_keystore

from .helpers import PASSPHRASE, journal, setup, wait_active

pytestmark = pytest.mark.system


def _enroll_sss(c, servers) -> None:
    config = json.dumps({"t": 2, "pins": {"tang": [s.config() for s in servers]}})
    c.run(["unlocker", "enroll", "clevis", "sss", config, "--passphrase-file", "-"], input=PASSPHRASE + b"\n")


def _unlocked_by(c) -> str:
    return json.loads(c.run(["unlocker", "status", "--json"]).stdout)["broker"]["unlocked_by"]


def _first_question(c, timeout: float) -> tuple[float, list]:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        questions = c.pending_questions()
        if questions:
            return time.monotonic() - start, questions
        time.sleep(0.05)
    raise AssertionError(f"no prompt within {timeout} s:\n" + journal(c, "unlocker.service"))


def test_tang_answering_unlocks_with_no_prompt(container, tang_servers):
    c = container
    setup(c, [])
    _enroll_sss(c, tang_servers)
    tang_servers[2].stop()  # 2 of 3 suffice
    c.systemctl("start", "--no-block", "unlocker.service")
    wait_active(c, "unlocker.service", timeout=20)
    assert _unlocked_by(c) == "clevis"
    log = journal(c, "unlocker.service")
    assert "waiting for the passphrase" not in log  # the prompt was never put up
    assert c.pending_questions() == []


def test_all_servers_down_the_prompt_comes_at_once_and_a_passphrase_unlocks(container, tang_servers):
    c = container
    setup(c, [])
    _enroll_sss(c, tang_servers)
    for server in tang_servers:
        server.stop()
    c.systemctl("start", "--no-block", "unlocker.service")
    waited, questions = _first_question(c, timeout=10)
    assert waited < 3, f"the prompt took {waited:.1f} s"
    assert questions[0]["id"] == "unlocker:keystore"
    c.answer_password(PASSPHRASE)
    wait_active(c, "unlocker.service")
    assert _unlocked_by(c) == "prompt"
    assert "refused" in journal(c, "unlocker.service")  # each server's failure is logged by name


def test_a_tang_server_that_comes_back_withdraws_the_pending_prompt(container, tang_servers):
    c = container
    setup(c, [])
    _enroll_sss(c, tang_servers)
    for server in tang_servers:
        server.stop()
    c.systemctl("start", "--no-block", "unlocker.service")
    _first_question(c, timeout=10)
    tang_servers[0].start()
    tang_servers[1].start()
    wait_active(c, "unlocker.service", timeout=40)  # retried with back-off: 1, 2, 4, ... s
    assert _unlocked_by(c) == "clevis"
    assert c.pending_questions() == []  # the question is gone: no agent will ask it any more
    assert "the prompt was withdrawn" in journal(c, "unlocker.service")


def _add_quorum(c, count: int, threshold: int) -> list[bytes]:
    """A quorum slot added on the host with the library (the ceremony is interactive; tests/keystore/
    test_quorum.py drives it), written into the container's keystore."""
    path = c.root / "var/lib/unlocker/keystore"
    keystore = storage.read(path)
    opened = open_keystore(keystore, Secrets(bytearray(PASSPHRASE)))
    shares = new_shares(count, threshold)
    new = changes.add_slot(opened, "quorum", Secrets(shares=[bytearray(s) for s in shares]),
                           EnrollOptions(extra={"threshold": str(threshold)}))
    storage.write(path, new, keystore.generation)
    opened.close()
    return [bytes(s) for s in shares]


def test_quorum_shares_at_boot_one_question_at_a_time(container):
    c = container
    setup(c, [])
    shares = _add_quorum(c, 3, 2)
    numbers = [share_number(parse_share(s)) for s in shares]
    foreign = next(s for s in _add_quorum(c, 3, 2) if share_number(parse_share(s)) not in numbers)
    wrong = bytearray(parse_share(shares[1]))
    wrong[3] ^= 1  # share #numbers[1] with one wrong byte, correctly checksummed: wrong, not a typo
    c.systemctl("start", "--no-block", "unlocker.service")
    assert c.answer_password(shares[0])["id"] == "unlocker:keystore"  # the first share, at the usual prompt
    second = c.answer_password(bytes(format_share(wrong)))
    assert second["id"].startswith("unlocker:quorum:")
    assert "Quorum share 2 of 2 for the unlocker keystore on" in second["message"]
    assert f"(have #{numbers[0]})" in second["message"]
    third = c.answer_password(shares[0])
    assert f"share #{numbers[1]} is wrong" in third["message"]  # named at once; progress kept
    assert f"(have #{numbers[0]})" in third["message"]
    fourth = c.answer_password(foreign)
    assert f"share #{numbers[0]} was already given" in fourth["message"]
    fifth = c.answer_password(shares[2])
    assert "is not one of this quorum's shares" in fifth["message"]
    assert len({second["id"], third["id"], fourth["id"], fifth["id"]}) == 4  # one question at a time, each new
    wait_active(c, "unlocker.service")
    assert _unlocked_by(c) == "quorum"
    assert c.pending_questions() == []
