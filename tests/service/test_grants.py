"""Grant list parsing and the drop-ins that `unlocker grant` writes."""

from __future__ import annotations

import pytest

from unlocker.client.formats import Format
from unlocker.errors import InvalidInput
from unlocker.service import grants


def test_round_trip(tmp_path):
    g = {("mariadb.service", "dek"): grants.Grant("mariadb.service", "dek", Format.mariadb)}
    grants.save(g, tmp_path / "grants")
    assert grants.load(tmp_path / "grants") == g


@pytest.mark.parametrize("line", [
    "mariadb.service dek",
    "mariadb.service dek nosuchformat",
    "mariadb.socket dek raw",
    "../etc.service dek raw",
    "a.service ../x raw",
])
def test_bad_lines_are_refused(line):
    with pytest.raises(InvalidInput):
        grants.parse(line + "\n")


def test_names_that_overflow_systemds_address_are_refused():
    with pytest.raises(InvalidInput, match="108 bytes"):
        grants.check("a" * 80 + ".service", "dek")
    grants.check("a" * 60 + ".service", "dek")


def test_dropin_requires_the_broker_and_refuses_an_empty_credential(tmp_path):
    g = grants.Grant("app.service", "dek", Format.json)
    path = grants.write_dropin(g, tmp_path)
    assert path == tmp_path / "app.service.d" / "50-unlocker-dek.conf"
    text = path.read_text()
    assert "Requires=unlocker.service\nAfter=unlocker.service\n" in text
    assert "LoadCredential=dek:/run/unlocker/credentials.sock\n" in text
    assert "ExecStartPre=/usr/bin/test -s %d/dek\n" in text
    grants.remove_dropin(g, tmp_path)
    assert not (tmp_path / "app.service.d").exists()
