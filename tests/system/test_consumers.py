"""Real consumers fed only by unlocker: Debian's MariaDB, nginx and PHP-FPM, and a Python app."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest

from unlocker.client import Keyring, field_aad

from .helpers import PASSPHRASE, expected, failed_at_credentials, journal, setup, start_broker

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


def _mariadb(c) -> None:
    """The MariaDB recipe (docs/recipes/mariadb.md): key file from unlocker, everything encrypted."""
    setup(c, [])
    c.run(["systemctl", "unmask", "mariadb.service"], check=False)
    c.run(["mariadb-install-db", "--user=mysql", "--datadir=/var/lib/mysql", "--skip-test-db",
           "--skip-name-resolve", "--force"])
    c.run(["unlocker", "grant", "mariadb.service", "--format", "mariadb"])
    c.write("/etc/mysql/mariadb.conf.d/90-unlocker.cnf", (ROOT / "examples" / "mariadb-unlocker.cnf").read_text())
    start_broker(c)
    c.systemctl("start", "mariadb.service")


def test_mariadb_encrypts_its_tables_with_the_delivered_key(container):
    c = container
    _mariadb(c)
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


def _pool(c, name: str) -> None:
    php = ROOT / "examples" / "php"
    c.run(["useradd", "--system", "--no-create-home", name])
    c.write(f"/etc/php/8.2/fpm/pool-{name}.conf", (php / "php-fpm-pool.conf").read_text().replace("NAME", name))
    c.write(f"/etc/systemd/system/php-fpm-{name}.service",
            (php / "php-fpm-pool.service").read_text().replace("NAME", name))
    _sql(c, f"CREATE USER {name}@localhost IDENTIFIED VIA unix_socket; GRANT ALL ON shop.* TO {name}@localhost;")


def test_php_behind_nginx_encrypts_a_field_and_an_ungranted_pool_gets_nothing(container):
    c = container
    _mariadb(c)
    _sql(c, "CREATE DATABASE shop; CREATE TABLE shop.notes (id INT PRIMARY KEY, body TEXT) ENCRYPTED=YES;")
    _pool(c, "vault")
    _pool(c, "other")
    c.run(["unlocker", "grant", "php-fpm-vault.service", "--format", "json"])
    c.write("/srv/vault/vault.php", (ROOT / "examples" / "php" / "vault.php").read_text())
    port = "18080"
    c.write("/etc/nginx/sites-enabled/unlocker-vault",
            (ROOT / "examples" / "php" / "nginx-site.conf").read_text().replace("PORT", port))
    c.run(["rm", "-f", "/etc/nginx/sites-enabled/default"])
    c.run(["systemctl", "unmask", "nginx.service"], check=False)
    c.systemctl("start", "php-fpm-vault.service", "php-fpm-other.service", "nginx.service")

    page = c.run(["curl", "-sS", f"http://127.0.0.1:{port}/vault.php?id=1&value={MARKER}"]).stdout.decode()
    assert f"read back: {MARKER}" in page, page + journal(c, "php-fpm-vault.service")
    stored = _sql(c, "SELECT body FROM shop.notes WHERE id = 1").strip()
    assert stored.startswith("uk1:1:") and MARKER not in stored
    assert f"stored: {stored}" in page

    other = c.run(["curl", "-sS", "-w", "%{http_code}", f"http://127.0.0.1:{port}/other.php?id=2&value=x"])
    text = other.stdout.decode()
    assert text.endswith("503") and "no key" in text and "directly: denied" in text
    assert _sql(c, "SELECT COUNT(*) FROM shop.notes WHERE id = 2").strip() == "0"

    # The token is what unlocker.client reads: same format, same associated data.


    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "dek").write_bytes(expected(c, "json"))
        assert Keyring.load(directory=d).decrypt(stored, field_aad("notes", "body", 1)) == MARKER.encode()


NOTES_UNIT = """[Unit]
Description=example notes app
After=mariadb.service

[Service]
Type=oneshot
User=notes
EnvironmentFile=/etc/notes-app.env
ExecStart=/opt/unlocker/bin/python /usr/local/bin/notes_app.py $ARGS
StandardOutput=truncate:/var/log/notes-app.out
"""


def _notes(c, *args: str) -> str:
    c.write("/etc/notes-app.env", "DB_USER=notes\nDB_PASSWORD=notes-db-pw\nARGS=" + " ".join(args) + "\n", 0o600)
    c.systemctl("start", "notes-app.service")
    return c.read("/var/log/notes-app.out").decode().strip()


def test_python_app_round_trips_through_mariadb_and_survives_a_dek_rotation(container):
    c = container
    _mariadb(c)
    _sql(c, "CREATE DATABASE notes; CREATE TABLE notes.notes (id INT PRIMARY KEY, body TEXT) ENCRYPTED=YES;"
            "CREATE USER notes@localhost IDENTIFIED BY 'notes-db-pw'; GRANT ALL ON notes.* TO notes@localhost;")
    c.run(["useradd", "--system", "--no-create-home", "notes"])
    c.write("/usr/local/bin/notes_app.py", (ROOT / "examples" / "notes_app.py").read_text())
    c.write("/etc/systemd/system/notes-app.service", NOTES_UNIT)
    c.run(["unlocker", "grant", "notes-app.service", "--format", "json"])

    assert _notes(c, "put", "1", MARKER) == "put 1 with key 1"
    assert _notes(c, "get", "1") == f"get 1: {MARKER}"
    stored = _sql(c, "SELECT body FROM notes.notes WHERE id = 1").strip()
    assert stored.startswith("uk1:1:") and MARKER not in stored
    _notes(c, "copy", "1", "2")
    assert _notes(c, "get", "2").startswith("get 2: refused: the value does not decrypt here")

    c.run(["unlocker", "rotate", "dek", "--passphrase-file", "-"], input=PASSPHRASE)
    assert _notes(c, "put", "3", "after-rotation") == "put 3 with key 2"  # the oneshot restarted: new keyring
    assert _notes(c, "get", "1") == f"get 1: {MARKER}"  # written under DEK 1, still readable
    assert _notes(c, "get", "3") == "get 3: after-rotation"
