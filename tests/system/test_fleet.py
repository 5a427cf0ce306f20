"""Network-bound unlock at boot, on a freshly booted machine, with real Tang servers on the host's loopback
(the container shares the host's network namespace): the unattended slot raced against the prompt."""

from __future__ import annotations

import json
import time

import pytest

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
