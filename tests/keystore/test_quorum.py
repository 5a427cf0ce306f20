"""The quorum slot: shares typed in any order open it, and each bad share is named the moment it is typed
(typo, wrong, foreign, duplicate), with the command line driven as an administrator would."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import subprocess

import pytest
from conftest import FAST, ROOT, UNLOCKER, write_secret

from unlocker.errors import InvalidInput
from unlocker.keystore import changes
from unlocker.keystore.fileformat import parse
from unlocker.keystore.slots import EnrollOptions, Secrets
from unlocker.keystore.slots.quorum import (
    Collector,
    WrongShare,
    format_share,
    new_shares,
    parse_share,
    share_number,
)
from unlocker.keystore.unlock import open_keystore


@pytest.fixture(scope="module")
def quorum():
    """A keystore with a passphrase slot 0 and a 3-of-5 quorum slot 1; returns (keystore, shares)."""
    opened = changes.create("passphrase", Secrets(bytearray(b"pw")), FAST)
    shares = new_shares(5, 3)
    keystore = changes.add_slot(opened, "quorum", Secrets(shares=[bytearray(s) for s in shares]),
                                EnrollOptions(extra={"threshold": "3"}))
    return keystore, [bytes(s) for s in shares]


def test_any_three_of_five_in_any_order_open_it(quorum):
    keystore, shares = quorum
    for subset in itertools.permutations(shares, 3):
        opened = open_keystore(keystore, Secrets(shares=[bytearray(s) for s in subset]))
        assert opened.slot_index == 1


def test_a_wrong_share_is_named_at_once(quorum):
    keystore, shares = quorum
    raw = parse_share(shares[2])
    raw[5] ^= 0x40  # a different share #x, correctly checksummed: not a typo, simply wrong
    wrong = format_share(raw)
    collector = Collector(keystore.id, keystore.slot(1))
    collector.add(shares[0])
    with pytest.raises(WrongShare, match=f"share #{share_number(raw)} is wrong"):
        collector.add(wrong)
    assert collector.have == [share_number(parse_share(shares[0]))]  # progress is kept


def test_a_duplicate_is_refused(quorum):
    keystore, shares = quorum
    collector = Collector(keystore.id, keystore.slot(1))
    x = collector.add(shares[1])
    with pytest.raises(InvalidInput, match=f"share #{x} was already given"):
        collector.add(shares[1].upper())


def test_a_flipped_bit_is_reported_as_a_typo(quorum):
    keystore, shares = quorum
    text = bytearray(shares[3])
    text[9] = ord("c") if text[9] != ord("c") else ord("b")  # one character: 4 bits of one byte
    with pytest.raises(InvalidInput, match="mistyped"):
        Collector(keystore.id, keystore.slot(1)).add(text)


def test_a_share_of_another_quorum_is_named_as_foreign(quorum):
    keystore, shares = quorum
    own = {share_number(parse_share(s)) for s in shares}
    other = next(s for s in new_shares(5, 2) if share_number(parse_share(s)) not in own)
    with pytest.raises(WrongShare, match="is not one of this quorum's shares"):
        Collector(keystore.id, keystore.slot(1)).add(other)


def test_a_share_starts_with_its_number():
    share = new_shares(2, 2)[0]
    raw = parse_share(share)
    assert len(share) == 70 + 8  # 35 bytes in modhex, 9 groups
    assert bytes.fromhex(bytes(share).decode().translate(str.maketrans("cbdefghijklnrtuv", "0123456789abcdef"))
                         .replace("-", ""))[0] == share_number(raw)


def _enroll_quorum(tmp_path, shares: int, threshold: int, answer):
    """Run `enroll quorum` as its holders would: read each shown share, type it back (via `answer`)."""
    path = tmp_path / "keystore"
    pw = write_secret(tmp_path / "pw", b"pw")
    subprocess.run([*UNLOCKER, "--keystore", str(path), "init", "--no-tpm2", "--kdf-time", "20",
                    "--passphrase-file", str(pw)], check=True, capture_output=True, cwd=ROOT)
    p = subprocess.Popen([*UNLOCKER, "--keystore", str(path), "enroll", "quorum", "--shares", str(shares),
                          "--threshold", str(threshold), "--passphrase-file", str(pw)], cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    shown = []
    while len(shown) < shares:
        line = p.stdout.readline().decode()
        if not line:
            break
        if line.startswith("    ") and line.count("-") == 8:
            shown.append(line.strip())
            p.stdin.write(answer(len(shown), shown[-1]).rstrip("\n").encode() + b"\n")
            p.stdin.flush()
    out, err = p.communicate(timeout=60)
    return path, shown, p.returncode, out.decode(), err.decode()


def test_enroll_shows_each_share_once_and_needs_it_typed_back(tmp_path, cli):
    path, shown, rc, out, err = _enroll_quorum(tmp_path, 5, 3, lambda k, s: s)
    assert rc == 0, err
    assert len(set(shown)) == 5 and "all 5 shares confirmed" in out
    row = json.loads(cli("slots", "--json", keystore=path).stdout)[1]
    assert row["type"] == "quorum" and row["quorum"]["threshold"] == 3
    assert sorted(row["quorum"]["shares"]) == sorted(share_number(parse_share(s.encode())) for s in shown)
    # At unlock: a typo, a duplicate and a share of another quorum are each named as they come, and
    # the progress survives them.
    typo = shown[4][:-1] + ("c" if shown[4][-1] != "c" else "b")
    lines = [shown[4], typo, shown[4], shown[0], shown[2]]
    r = cli("unlock", "--check", "--quorum", keystore=path, input="\n".join(lines).encode() + b"\n")
    assert r.returncode == 0, r.stderr
    assert "mistyped" in r.stderr and "was already given" in r.stderr and "slot 1 opens" in r.stdout
    assert r.stderr.count("accepted") == 3


def test_enroll_writes_nothing_when_a_share_is_not_confirmed(tmp_path):
    # Share 2 is answered with something else three times: the ceremony gives up, the file is untouched.
    path, _, rc, _, err = _enroll_quorum(tmp_path, 3, 2, lambda k, s: s if k == 1 else "nonsense\n" * 3)
    assert rc == 1 and "not confirmed; nothing was enrolled" in err
    assert b" quorum " not in path.read_bytes()


def test_too_few_shares_at_the_end_of_input_exits_2(tmp_path, cli):
    path, shown, rc, _, err = _enroll_quorum(tmp_path, 3, 2, lambda k, s: s)
    assert rc == 0, err
    r = cli("unlock", "--check", "--quorum", keystore=path, input=shown[1].encode() + b"\n")
    assert r.returncode == 2 and "1 of 2 shares given; nothing unlocked" in r.stderr


VECTOR = json.loads((ROOT / "tests" / "vectors" / "quorum-v1.json").read_text())


def _decode_share(text: str) -> bytearray:
    """docs/FORMAT.md's share layout, read independently: x ‖ y ‖ checksum in modhex -> OpenBao's y ‖ x."""
    raw = bytes.fromhex(text.translate(str.maketrans("cbdefghijklnrtuv", "0123456789abcdef")).replace("-", ""))
    assert hashlib.sha256(b"unlocker quorum share" + raw[:-2]).digest()[:2] == raw[-2:]
    return bytearray(raw[1:-2] + raw[:1])


def test_quorum_vector_matches_an_independent_reading_of_the_spec():
    import pyshamir
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    shares = [_decode_share(s) for s in VECTOR["shares"]]
    for subset in itertools.combinations(shares, 3):
        assert pyshamir.combine(list(subset)).hex() == VECTOR["quorum_secret"]
    lines = VECTOR["keystore"].splitlines()
    keystore_id = bytes.fromhex(lines[1].split(" ")[1])
    fields = dict(f.split("=", 1) for f in lines[4].split(" ")[3:])
    expected = ",".join(f"{s[-1]}:" + base64.b64encode(hashlib.sha256(
        b"unlocker/v1 quorum share\n" + keystore_id + bytes([s[-1]]) + bytes(s[:-1])).digest()).decode()
        for s in sorted(shares, key=lambda s: s[-1]))
    assert fields["threshold"] == "3" and fields["verifiers"] == expected
    slot_key = HKDF(hashes.SHA256(), 32, keystore_id, b"unlocker/v1 slot quorum").derive(
        bytes.fromhex(VECTOR["quorum_secret"]))
    assert slot_key.hex() == VECTOR["slot1_key"]
    aad = b"unlocker/v1 slot\n" + keystore_id + lines[4][: lines[4].index(" nonce=")].encode()
    store_key = AESGCM(slot_key).decrypt(base64.b64decode(fields["nonce"]), base64.b64decode(fields["key"]), aad)
    assert store_key.hex() == VECTOR["store_key"]


def test_quorum_vector_round_trips_and_the_spec_shows_it():
    assert parse(VECTOR["keystore"].encode()).serialize() == VECTOR["keystore"].encode()
    spec = (ROOT / "docs" / "FORMAT.md").read_text()
    assert VECTOR["keystore"] in spec and all(s in spec for s in VECTOR["shares"])


def test_rotate_kek_refuses_to_lose_a_quorum_slot(tmp_path, cli):
    path, _, rc, _, err = _enroll_quorum(tmp_path, 3, 2, lambda k, s: s)
    assert rc == 0, err
    before = path.read_bytes()
    r = cli("rotate", "kek", "--passphrase-file", tmp_path / "pw", keystore=path)
    assert r.returncode == 1 and "--drop-slot 1" in r.stderr and "Traceback" not in r.stderr
    assert path.read_bytes() == before


def test_shares_and_the_quorum_secret_are_wiped_after_unlock(tmp_path):
    import os
    import signal
    import sys

    from memscan import find_in_process

    from unlocker.keystore import storage
    from unlocker.memory import environment_with_scrubbing

    path, shown, rc, _, err = _enroll_quorum(tmp_path, 3, 2, lambda k, s: s)
    assert rc == 0, err
    ks = storage.read(path)
    collector = Collector(ks.id, ks.slot(1))
    for s in shown[:2]:
        collector.add(s.encode())
    secret = collector.secret()
    raw = [bytes(parse_share(s.encode())[:-1]) for s in shown[:2]]
    child_code = ("import os, signal, sys\nfrom unlocker.cli.main import main\nsys.argv = ['unlocker', *sys.argv[1:]]\n"
                  "try:\n    main()\nexcept SystemExit:\n    pass\nos.kill(os.getpid(), signal.SIGSTOP)\n")
    child = subprocess.Popen([sys.executable, "-c", child_code, "--keystore", str(path), "unlock", "--check",
                              "--quorum"], env=environment_with_scrubbing(), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        child.stdin.write(("\n".join(shown[:2]) + "\n").encode())
        child.stdin.close()
        _, status = os.waitpid(child.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), child.stderr.read()
        assert b"slot 1 opens" in child.stdout.read1()
        for name, value in (("quorum secret", bytes(secret)), ("share 1", raw[0]), ("share 2", raw[1]),
                            ("share 1 as typed", shown[0].encode()), ("share 2 as typed", shown[1].encode())):
            assert find_in_process(child.pid, value) == [], f"{name} left in memory"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
