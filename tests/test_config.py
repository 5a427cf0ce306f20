"""The config file and the option values it shares with the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from unlocker import config
from unlocker.cli.common import Globals, pcr_list
from unlocker.errors import InvalidInput


@pytest.mark.parametrize(("text", "pcrs"), [("7", (7,)), ("0,7", (0, 7)), ("7+0", (0, 7)), (" 0, 7 ", (0, 7)),
                                            ("none", ())])
def test_pcr_lists_that_parse(text, pcrs):
    assert config.parse_pcr_list(text) == pcrs


@pytest.mark.parametrize("text", [",", "", " ", "7,", ",7", "7,,0", "+", "7,7", "24", "-1", "0x7", "\u0667", "none,7"])
def test_a_pcr_list_that_is_empty_or_malformed_never_seals_to_fewer_pcrs(text):
    with pytest.raises(InvalidInput):
        config.parse_pcr_list(text)


def test_an_explicit_none_warns_when_a_tpm_slot_is_made(capsys):
    g = Globals(Path("/nonexistent"), config.Config())
    assert pcr_list(g, "none", sealing=True) == ()
    assert "bound to no PCR" in capsys.readouterr().err
    assert pcr_list(g, "none", sealing=False) == ()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("line", "pcrs"), [("pcrs = 0,7", (0, 7)), ("pcrs = none", ())])
def test_config_file_pcrs(tmp_path, line, pcrs):
    (tmp_path / "unlocker.conf").write_text(f"[tpm2]\n{line}\n")
    assert config.load(tmp_path / "unlocker.conf").tpm2_pcrs == pcrs


@pytest.mark.parametrize("line", ["pcrs = ,", "pcrs ="])
def test_config_file_with_an_empty_pcr_list_is_refused(tmp_path, line):
    (tmp_path / "unlocker.conf").write_text(f"[tpm2]\n{line}\n")
    with pytest.raises(InvalidInput):
        config.load(tmp_path / "unlocker.conf")


def test_a_passphrase_shaped_like_a_recovery_key_is_refused_for_a_tpm_slot(tmp_path):
    from unlocker.cli.common import SlotKind, new_secrets
    from unlocker.keystore.slots import recovery
    shaped = tmp_path / "new"
    shaped.write_bytes(bytes(recovery.format_key(recovery.generate())))
    with pytest.raises(InvalidInput, match="shaped like a recovery key"):
        new_secrets(SlotKind.tpm2_passphrase, str(shaped), "swtpm:port=1")
    secrets, _ = new_secrets(SlotKind.passphrase, str(shaped), None)  # a passphrase slot still takes it
    assert secrets.passphrase == shaped.read_bytes()


@pytest.mark.parametrize(("data", "message"), [
    (b"[prompt]\ntries = 0\n", "tries must be 1..10"),
    (b"[prompt]\ntries = 1000000\n", "tries must be 1..10"),
    (b"[prompt]\nkeyname = caf\xe9\n", "not UTF-8 text"),
    (b"[tpm2]\n[tpm2]\n", "already exists"),
    (b"no section\n", "no section headers"),
])
def test_a_bad_config_file_is_named_and_refused_without_a_traceback(tmp_path, data, message):
    (tmp_path / "unlocker.conf").write_bytes(data)
    with pytest.raises(InvalidInput, match=f"{tmp_path / 'unlocker.conf'}.*{message}"):
        config.load(tmp_path / "unlocker.conf")


def test_a_percent_in_a_value_is_just_a_character(tmp_path):
    # ConfigParser's default interpolation raised (not a ValueError) on a '%' at the first get().
    (tmp_path / "unlocker.conf").write_bytes(b"[tpm2]\ndevice = swtpm:port=%d\n")
    assert config.load(tmp_path / "unlocker.conf").tpm2_device == "swtpm:port=%d"


def test_no_config_file_gives_what_an_empty_one_gives(tmp_path):
    # load() skips configparser when there is no file: the defaults must be what parsing nothing gives.
    assert config.load(tmp_path / "unlocker.conf") == config.loads(b"") == config.Config()
