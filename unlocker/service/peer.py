"""Who is asking for a credential. Pure parsing; the socket calls live in broker.py.

systemd (252) connects to a LoadCredential= socket from a short-lived helper that runs as root in the
consumer unit's cgroup, bound to the abstract address "\\0<random hex>/unit/<UNIT>/<ID>". The name alone
proves nothing (any local user can bind any abstract name), so a request is trusted only when all of
these hold: the address has that shape, the peer's uid is 0, and /proc/<pid>/cgroup puts the peer
process in exactly <UNIT>'s cgroup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# systemd's unit name rules (unit-name.c): [a-zA-Z0-9:_.\\-@] plus "\\x" escapes, at most 255 bytes,
# a single '@' for templates. Only instances run, so only they request credentials or can be granted:
# "foo@.service" (a template without an instance) is refused.
_UNIT = re.compile(r"[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]+)?\.(service|socket|mount|swap|timer|path|scope)")

# The one credential id rule, for the grant list, `unlocker grant` and the request address alike. systemd
# 252 accepts more (credential_name_valid(): a file name with no control character and no ':'), but in a
# unit file "%" is a specifier, "\\" an escape and whitespace a separator, so such ids could be granted and
# never delivered, or would inject lines into the drop-in. The first character excludes ".", ".." and
# hidden files, and a "-" that a command given the file name (an admin's own check) would read as an option.
CREDENTIAL_ID_RULE = "1 to 64 of A-Z a-z 0-9 _ . -, not starting with '.' or '-'"
_CREDENTIAL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_ADDRESS = re.compile(r"\0([0-9a-f]+)/unit/([^/]+)/([^/]+)")

# The address must fit sockaddr_un's 108 bytes; systemd fails longer ones with "Protocol error", so
# unit name + credential id together must stay under about 70 characters.
MAX_ADDRESS_BYTES = 107


class PeerError(ValueError):
    """The peer is not who it must be. The message is the audit reason."""


@dataclass(frozen=True)
class Request:
    unit: str
    credential: str


def parse_address(address: str | bytes) -> Request:
    """Unit and credential id from the peer's abstract socket address."""
    if isinstance(address, bytes):
        try:
            address = address.decode("ascii")
        except UnicodeDecodeError:
            raise PeerError("peer address is not ASCII") from None
    m = _ADDRESS.fullmatch(address)
    if not m:
        raise PeerError("peer address is not a systemd credential request")
    unit, credential = m.group(2), m.group(3)
    if not is_unit_name(unit):
        raise PeerError("peer address names an invalid unit")
    if not is_credential_id(credential):
        raise PeerError("peer address names an invalid credential id")
    return Request(unit, credential)


def is_unit_name(name: str) -> bool:
    return len(name) <= 255 and _UNIT.fullmatch(name) is not None


def is_credential_id(name: str) -> bool:
    return _CREDENTIAL.fullmatch(name) is not None


def cgroup_path(proc_cgroup: str) -> str | None:
    """The systemd cgroup path from /proc/<pid>/cgroup: the unified ("0::") line, or on a legacy or
    hybrid host the name=systemd hierarchy."""
    legacy = None
    for line in proc_cgroup.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and controllers == "":
            return path
        if controllers == "name=systemd":
            legacy = path
    return legacy


# systemd 252's cgroup controllers (cgroup_controller_table): a unit named "<controller>.<suffix>" would
# clash with the kernel's files of that controller in cgroupfs.
_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "io", "blkio", "memory", "devices", "pids", "bpf-firewall",
                "bpf-devices", "bpf-foreign", "bpf-socket-bind", "bpf-restrict-network-interfaces")


def _always_escaped(name: str) -> bool:
    return (name[:1] in ("", "_", ".") or name in ("notify_on_release", "release_agent", "tasks")
            or name.startswith("cgroup."))


def cgroup_escape(name: str) -> str:
    """The name systemd 252 gives a unit's cgroup (cg_escape()): "_" before a name that could clash with a
    kernel file, or that starts with "_" or "." itself. So cpu.service lives in "_cpu.service", and the
    unit _cpu.service in "__cpu.service". tests/system/test_platform_facts.py checks this on systemd 252."""
    clash = name.rpartition(".")[0] in _CONTROLLERS  # 252 compares what comes before the last dot
    return "_" + name if _always_escaped(name) or clash else name


def _cgroup_escape_later(name: str) -> str:
    """Later systemd (cg_needs_escape()) also escapes a controller name followed by a dot: cpu.x.service."""
    clash = any(name.startswith(c + ".") for c in _CONTROLLERS)
    return "_" + name if _always_escaped(name) or clash else name


def in_unit_cgroup(proc_cgroup: str, unit: str) -> bool:
    """True when the process is directly in <unit>'s own cgroup, "/<slices...>/<unit, escaped>".

    Exact component match: "xfoo.service" is not "foo.service", "_cpu.service" (the cgroup of
    cpu.service) is not the unit _cpu.service, and a process in a sub-cgroup of another unit, or in a
    unit whose *slice* has a similar name, does not count.
    """
    path = cgroup_path(proc_cgroup)
    if path is None or not path.startswith("/"):
        return False
    *slices, last = path[1:].split("/")
    # Either escaping is unambiguous: a name that starts with "_" is always escaped itself, so a cgroup
    # "_<name>" can only be the unit <name>.
    escaped = (cgroup_escape(unit), _cgroup_escape_later(unit))
    return last in escaped and all(s.endswith(".slice") for s in slices)
