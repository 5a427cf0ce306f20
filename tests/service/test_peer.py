"""Peer-name and cgroup checks: the pure half of deciding who is asking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unlocker.service.peer import PeerError, Request, cgroup_path, in_unit_cgroup, parse_address


def test_systemd_address_parses():
    assert parse_address(b"\0" + b"3f2a9c1b0d4e5f60/unit/mariadb.service/dek") == Request("mariadb.service", "dek")


def test_template_and_escaped_names_parse():
    assert parse_address("\0ab/unit/php-fpm@shop.service/key").unit == "php-fpm@shop.service"
    assert parse_address("\0ab/unit/system-getty\\x2dx.service/key").unit == "system-getty\\x2dx.service"


@pytest.mark.parametrize("address", [
    b"",
    b"/run/some/path",                           # a path socket, not systemd's abstract name
    b"\0zz/unit/a.service/dek",                 # not hex
    b"\0ab/unit/a.service",                      # no credential id
    b"\0ab/unit/a.service/dek/extra",
    b"\0ab/unit/../dek",
    b"\0ab/unit/a.service/..",
    b"\0ab/user/a.service/dek",
    b"\0ab/unit/a b.service/dek",
    b"\0ab/unit/noext/dek",
    b"\0ab/unit/a.service/d\xffk",
    b"\0ab/unit/foo@.service/dek",              # a template never runs, so never asks
    b"\0ab/unit/a.service/a b",
    b"\0ab/unit/a.service/a\nb",
    b"\0ab/unit/a.service/a%b",
    b"\0ab/unit/a.service/a:b",
    b"\0ab/unit/a.service/a\\b",
])
def test_malformed_addresses_are_refused(address):
    with pytest.raises(PeerError):
        parse_address(address)


UNIFIED = "0::/system.slice/mariadb.service\n"
HYBRID = (
    "12:pids:/system.slice/mariadb.service\n"
    "1:name=systemd:/system.slice/mariadb.service\n"
    "0::/system.slice/mariadb.service\n"
)
LEGACY = "4:memory:/system.slice/mariadb.service\n1:name=systemd:/system.slice/mariadb.service\n"


@pytest.mark.parametrize("text", [UNIFIED, HYBRID, LEGACY])
def test_cgroup_of_the_unit_matches(text):
    assert in_unit_cgroup(text, "mariadb.service")


@pytest.mark.parametrize(("text", "unit"), [
    ("0::/system.slice/xmariadb.service\n", "mariadb.service"),        # suffix lookalike
    ("0::/system.slice/mariadb.service.d\n", "mariadb.service"),
    ("0::/system.slice/mariadb.service/payload\n", "mariadb.service"),  # a sub-cgroup (Delegate=)
    ("0::/system.slice/other.service\n", "mariadb.service"),
    ("0::/mariadb.service.slice/other.service\n", "mariadb.service"),
    ("0::/user.slice/user-0.slice/session-1.scope\n", "mariadb.service"),
    ("0::/\n", "mariadb.service"),
    ("", "mariadb.service"),
    ("0::/system.slice/system-php\\x2dfpm.slice/php-fpm@a.service\n", "php-fpm@b.service"),
])
def test_other_cgroups_do_not_match(text, unit):
    assert not in_unit_cgroup(text, unit)


def test_template_instance_in_its_slice_matches():
    text = "0::/system.slice/system-php\\x2dfpm.slice/php-fpm@shop.service\n"
    assert in_unit_cgroup(text, "php-fpm@shop.service")


@pytest.mark.parametrize(("cgroup", "unit"), [
    ("_cpu.service", "cpu.service"),                      # systemd escapes names that clash with cgroupfs
    ("_memory.service", "memory.service"),
    ("_bpf-firewall.service", "bpf-firewall.service"),
    ("__cpu.service", "_cpu.service"),                    # and names that start with "_" or "."
    ("_.hidden.service", ".hidden.service"),
    ("_cgroup.x.service", "cgroup.x.service"),
    ("cpu.x.service", "cpu.x.service"),                   # 252: only the part before the last dot counts
    ("_cpu.x.service", "cpu.x.service"),                  # later systemd: any controller name and a dot
    ("cpux.service", "cpux.service"),
    ("cpu@a.service", "cpu@a.service"),
])
def test_escaped_cgroup_names_match_their_unit(cgroup, unit):
    assert in_unit_cgroup(f"0::/system.slice/{cgroup}\n", unit)


@pytest.mark.parametrize(("cgroup", "unit"), [
    ("_cpu.service", "_cpu.service"),                     # the cgroup of cpu.service, not of _cpu.service
    ("cpu.service", "cpu.service"),                       # systemd 252 gives cpu.service "_cpu.service"
    ("_cpux.service", "cpux.service"),
    ("_x.service", "x.service"),
    (".hidden.service", ".hidden.service"),
])
def test_cgroup_names_systemd_would_not_give_the_unit_do_not_match(cgroup, unit):
    assert not in_unit_cgroup(f"0::/system.slice/{cgroup}\n", unit)


def test_unified_line_wins_over_name_systemd():
    text = "1:name=systemd:/system.slice/a.service\n0::/system.slice/b.service\n"
    assert cgroup_path(text) == "/system.slice/b.service"


@given(st.text(max_size=200))
def test_address_parser_never_crashes(text):
    try:
        parse_address(text)
    except PeerError:
        pass
