"""Which units may have the key, in which credential and format, and the systemd drop-ins that
request it.

The grant list is /etc/unlocker/grants, one grant a line: "<unit> <credential id> <format>". The broker
re-reads it when it changes, so grant/revoke take effect without a restart. Each grant has a drop-in,
/etc/systemd/system/<unit>.d/50-unlocker-<id>.conf, that makes the unit load the credential from the
broker, start after (and only with) unlocker.service, and refuse to start on an empty credential.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from unlocker.client.formats import Format
from unlocker.errors import InvalidInput
from unlocker.keystore.storage import replace_file
from unlocker.service.peer import CREDENTIAL_ID_RULE, MAX_ADDRESS_BYTES, is_credential_id, is_unit_name

GRANTS_FILE = Path("/etc/unlocker/grants")
UNIT_DIR = Path("/etc/systemd/system")
# Where systemd asks for granted credentials, with LoadCredentialEncrypted= (sealed.py). Not the name of
# earlier versions (credentials.sock, plain LoadCredential=): a drop-in they wrote finds no socket and its
# unit fails at CREDENTIALS, rather than starting on a sealed reply it cannot read. `unlocker grant` and
# `unlocker doctor` find and rewrite such drop-ins.
SOCKET_NAME = "sealed-credentials.sock"
CREDENTIAL_SOCKET = Path("/run/unlocker") / SOCKET_NAME

# "\0" + 16 hex digits of randomness + "/unit/" + unit + "/" + id: what systemd binds.
_ADDRESS_OVERHEAD = 1 + 16 + len("/unit/") + 1


@dataclass(frozen=True)
class Grant:
    unit: str
    credential: str
    format: Format

    def line(self) -> str:
        return f"{self.unit} {self.credential} {self.format}"


def check(unit: str, credential: str) -> None:
    """Raise InvalidInput unless (unit, credential) can be granted, written in the list and delivered."""
    if unit.endswith("@.service"):
        raise InvalidInput(f"{unit!r} is a template: grant each instance, like {unit[:-len('.service')]}NAME.service")
    if not is_unit_name(unit) or not unit.endswith(".service"):
        raise InvalidInput(f"{unit!r} is not a service unit name (like mariadb.service or php-fpm@app.service)")
    if not is_credential_id(credential):
        raise InvalidInput(f"{credential!r} is not a valid credential id: use {CREDENTIAL_ID_RULE}")
    if _ADDRESS_OVERHEAD + len(unit) + len(credential) > MAX_ADDRESS_BYTES:
        raise InvalidInput(
            f"unit name and credential id are too long together ({len(unit) + len(credential)} characters): "
            f"systemd's request address must fit in 108 bytes; keep them under "
            f"{MAX_ADDRESS_BYTES - _ADDRESS_OVERHEAD} characters"
        )


def parse(text: str) -> dict[tuple[str, str], Grant]:
    grants: dict[tuple[str, str], Grant] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 3 or fields[2] not in Format.__members__:
            raise InvalidInput(f"line {number}: expected '<unit> <credential> <format>'")
        try:
            check(fields[0], fields[1])
        except InvalidInput as e:
            raise InvalidInput(f"line {number}: {e}") from None
        grant = Grant(fields[0], fields[1], Format(fields[2]))
        grants[(grant.unit, grant.credential)] = grant
    return grants


def load(path: Path = GRANTS_FILE) -> dict[tuple[str, str], Grant]:
    """The grant list at path ({} when there is none). Raises InvalidInput naming the file and line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    return parse_bytes(data, str(path))


def parse_bytes(data: bytes, source: str = "the grant list") -> dict[tuple[str, str], Grant]:
    """The grant list's bytes. Raises InvalidInput (naming `source` and the line) and nothing else."""
    try:
        return parse(data.decode("ascii"))
    except UnicodeDecodeError:
        raise InvalidInput(f"{source}: not ASCII text") from None
    except InvalidInput as e:
        raise InvalidInput(f"{source} {e}") from None


def serialize(grants: dict[tuple[str, str], Grant]) -> str:
    """The grant list as text. Raises InvalidInput rather than return a list that would not parse back to
    the same grants: the broker refuses every request while its list does not parse."""
    for g in grants.values():
        check(g.unit, g.credential)
    text = "# unit credential format (managed by 'unlocker grant' and 'unlocker revoke')\n"
    text += "".join(g.line() + "\n" for g in sorted(grants.values(), key=lambda g: (g.unit, g.credential)))
    if parse(text) != grants:  # a net under check(): whatever it misses must not reach the broker
        raise InvalidInput("the grant list would not read back as written; nothing was changed")
    return text


def save(grants: dict[tuple[str, str], Grant], path: Path = GRANTS_FILE) -> None:
    """Write the list like the keystore (beside, fsync, rename, fsync the directory): the broker re-reads it
    on change, and a half-written list would be a parse error (every request refused) after a crash."""
    text = serialize(grants)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    replace_file(path, text.encode("ascii"), "grants", mode=0o644, what="the grant list")


def dropin_path(grant: Grant, unit_dir: Path = UNIT_DIR) -> Path:
    return unit_dir / f"{grant.unit}.d" / f"50-unlocker-{grant.credential}.conf"


def dropin(grant: Grant, socket: Path = CREDENTIAL_SOCKET) -> str:
    check(grant.unit, grant.credential)  # the id goes into directives: nothing may break out of its line
    # Wants= + After=: the unit waits for the unlock, and starting it starts the broker. Not Requires=: on
    # systemd 252 that carries every restart of the broker (an upgrade, the automatic restart after a crash)
    # to every running granted unit, so a database would restart with it. Without the broker a unit still
    # cannot start: its credential socket is gone or refuses, and systemd fails it at CREDENTIALS (243)
    # (tests/system/test_broker.py). LoadCredentialEncrypted=, not LoadCredential=: systemd checks each
    # reply (sealed.py), so an empty or cut one fails the unit too, and no ExecStartPre= check is needed.
    return (
        "# Written by 'unlocker grant'; removed by 'unlocker revoke'.\n"
        "[Unit]\n"
        "Wants=unlocker.service\n"
        "After=unlocker.service\n"
        "\n"
        "[Service]\n"
        f"LoadCredentialEncrypted={grant.credential}:{socket}\n"
    )


def write_dropin(grant: Grant, unit_dir: Path = UNIT_DIR) -> Path:
    text = dropin(grant)  # checks the grant before its id becomes a path
    path = dropin_path(grant, unit_dir)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    # Never in place: systemd may read the drop-in (daemon-reload) while it is being written.
    replace_file(path, text.encode("ascii"), "dropin", mode=0o644, what="the drop-in")
    return path


def remove_dropin(grant: Grant, unit_dir: Path = UNIT_DIR) -> None:
    path = dropin_path(grant, unit_dir)
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only when empty
