"""An example application: notes stored in MariaDB, each body encrypted with unlocker.client.

Run as its own systemd unit, granted with `unlocker grant notes-app.service --format json`:

    notes_app.py put ID TEXT     encrypt TEXT for row ID and store it
    notes_app.py get ID          read row ID and decrypt it
    notes_app.py copy FROM TO    copy a stored value to another row (what an attacker with SQL access
                                 might try); `get TO` then fails: the value is bound to its row

Database access: DB_USER and DB_PASSWORD in the environment, the local socket.
"""

from __future__ import annotations

import os
import sys

import pymysql

from unlocker.client import Keyring, KeyringError, field_aad


def main(argv: list[str]) -> int:
    try:
        keyring = Keyring.load()
    except KeyringError as e:
        print(f"notes-app: {e}", file=sys.stderr)
        return 1
    db = pymysql.connect(unix_socket="/run/mysqld/mysqld.sock", user=os.environ["DB_USER"],
                         password=os.environ.get("DB_PASSWORD", ""), database="notes", autocommit=True)
    command, row = argv[0], int(argv[1])
    with db.cursor() as cur:
        if command == "put":
            token = keyring.encrypt(argv[2].encode(), field_aad("notes", "body", row))
            cur.execute("REPLACE INTO notes (id, body) VALUES (%s, %s)", (row, token))
            print(f"put {row} with key {token.split(':')[1]}")
        elif command == "get":
            cur.execute("SELECT body FROM notes WHERE id = %s", (row,))
            (token,) = cur.fetchone()
            try:
                print(f"get {row}: {keyring.decrypt(token, field_aad('notes', 'body', row)).decode()}")
            except KeyringError as e:
                print(f"get {row}: refused: {e}")
        elif command == "copy":
            cur.execute("REPLACE INTO notes (id, body) SELECT %s, body FROM notes WHERE id = %s", (int(argv[2]), row))
            print(f"copied row {row} to row {argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
