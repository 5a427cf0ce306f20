"""Real consumers fed only by unlocker: MariaDB data-at-rest encryption (Debian's mariadb-server)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .helpers import PASSPHRASE, failed_at_credentials, journal, setup, start_broker

pytestmark = pytest.mark.system
ROOT = Path(__file__).resolve().parents[2]
MARKER = "MARKER-PLAINTEXT-7c1e"


def _sql(c, statement: str) -> str:
    return c.run(["mariadb", "--batch", "--skip-column-names", "-e", statement]).stdout.decode()


def _unlock_again(c) -> None:
    c.run(["sh", "-c", "unlocker unlock > /root/unlock.out 2>&1 &"])
    c.answer_password(PASSPHRASE)
    deadline = time.monotonic() + 20
    while b"broker unlocked" not in c.run(["cat", "/root/unlock.out"], check=False).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_mariadb_encrypts_its_tables_with_the_delivered_key(container):
    c = container
    setup(c, [])
    c.run(["systemctl", "unmask", "mariadb.service"], check=False)
    c.run(["mariadb-install-db", "--user=mysql", "--datadir=/var/lib/mysql", "--skip-test-db",
           "--skip-name-resolve", "--force"])
    c.run(["unlocker", "grant", "mariadb.service", "--format", "mariadb"])
    c.write("/etc/mysql/mariadb.conf.d/90-unlocker.cnf", (ROOT / "examples" / "mariadb-unlocker.cnf").read_text())
    start_broker(c)
    c.systemctl("start", "mariadb.service")
    assert "Using encryption key id 1" in journal(c, "mariadb.service") or _sql(c, "SELECT 1").strip() == "1"
    _sql(c, f"""CREATE DATABASE shop;
        CREATE TABLE shop.secret (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB ENCRYPTED=YES;
        CREATE TABLE shop.control (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB ENCRYPTED=NO;
        INSERT INTO shop.secret VALUES (1, '{MARKER}');
        INSERT INTO shop.control VALUES (1, '{MARKER}');""")
    assert _sql(c, "SELECT NAME FROM information_schema.INNODB_TABLESPACES_ENCRYPTION "
                   "WHERE NAME LIKE 'shop/%' AND ENCRYPTION_SCHEME = 1").split() == ["shop/secret"]
    c.systemctl("stop", "mariadb.service")  # a clean shutdown writes every page to disk
    datadir = c.root / "var/lib/mysql/shop"
    assert MARKER.encode() in (datadir / "control.ibd").read_bytes()  # the check can see a plaintext row
    assert MARKER.encode() not in (datadir / "secret.ibd").read_bytes()

    # Locked: MariaDB cannot get its key file, and does not start.
    c.run(["unlocker", "lock"])
    assert c.systemctl("start", "mariadb.service", check=False).returncode != 0
    assert failed_at_credentials(c, "mariadb.service")

    # Unlocked again: it starts and reads the encrypted row.
    _unlock_again(c)
    c.systemctl("reset-failed", "mariadb.service")
    c.systemctl("start", "mariadb.service")
    assert _sql(c, "SELECT v FROM shop.secret WHERE id = 1").strip() == MARKER
