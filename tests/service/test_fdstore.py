"""The fd-store mechanics against a stand-in for PID 1 that keeps what it is sent, as systemd does: a
duplicate of the descriptor, sharing the pages. What systemd 252 itself does is in
tests/system/test_restart.py and test_platform_facts.py."""

from __future__ import annotations

import mmap
import os
import secrets

import pytest

from unlocker.memory import SecretMemory
from unlocker.service.fdstore import FDNAME, NO_MEMFD_SECRETMEM, FdStore


def mapped(fd: int) -> bytes:
    """The contents of a memfd_secret region (it has no read(2): only a mapping sees them)."""
    with mmap.mmap(fd, os.fstat(fd).st_size) as m:
        return bytes(m)


class Pid1:
    """Keeps {name: duplicate fd}, like a unit's fd store."""

    def __init__(self) -> None:
        self.store: dict[str, int] = {}
        self.messages: list[str] = []

    def notify(self, message: str, fds: list[int] | None = None) -> bool:
        self.messages.append(message)
        fields = dict(line.split("=", 1) for line in message.splitlines())
        if fields.get("FDSTORE") == "1":
            assert fds and len(fds) == 1
            self.store.setdefault(fields["FDNAME"], os.dup(fds[0]))
        if fields.get("FDSTOREREMOVE") == "1" and fields["FDNAME"] in self.store:
            os.close(self.store.pop(fields["FDNAME"]))
        return True

    def read(self, name: str = FDNAME) -> bytes:
        return mapped(self.store[name])

    def restart(self) -> dict[int, str]:
        """What the next run is passed: its own duplicates of what is stored."""
        return {os.dup(fd): name for name, fd in self.store.items()}

    def close(self) -> None:
        for fd in self.store.values():
            os.close(fd)


@pytest.fixture
def pid1():
    if SecretMemory(32, keep_fd=True).fd is None:
        pytest.fail("memfd_secret(2) is not available on this kernel; these tests need it")
    p = Pid1()
    yield p
    p.close()


def test_a_kept_key_is_taken_back_by_the_next_run(pid1):
    key = bytearray(secrets.token_bytes(32))
    first = FdStore(pid1.notify)
    first.keep(key)
    assert os.readlink(f"/proc/self/fd/{pid1.store[FDNAME]}").startswith("/secretmem")
    first.release()  # SIGTERM: the stored pages are left as they are
    second = FdStore(pid1.notify)
    assert second.take(pid1.restart()) == key
    assert second.state.startswith("holding")


def test_a_new_store_key_is_written_in_place_never_a_second_descriptor(pid1):
    store = FdStore(pid1.notify)
    store.keep(bytearray(32))
    new = bytearray(secrets.token_bytes(32))
    store.keep(new)
    assert list(pid1.store) == [FDNAME] and sum("FDSTORE=1" in m for m in pid1.messages) == 1
    assert pid1.read() == new


def test_lock_zeroes_the_pages_pid1_holds_and_removes_them(pid1):
    store = FdStore(pid1.notify)
    store.keep(bytearray(secrets.token_bytes(32)))
    held = os.dup(pid1.store[FDNAME])  # as if the removal were lost: PID 1 still has a descriptor
    try:
        store.discard()
        assert mapped(held) == bytes(32)
    finally:
        os.close(held)
    assert FDNAME not in pid1.store
    assert store.state.startswith("empty")


def test_an_ordinary_memfd_in_the_store_is_refused_and_removed(pid1):
    fd = os.memfd_create("impostor")
    os.write(fd, secrets.token_bytes(32))
    store = FdStore(pid1.notify)
    assert store.take({fd: FDNAME}) is None
    with pytest.raises(OSError):
        os.fstat(fd)  # closed
    assert f"FDSTOREREMOVE=1\nFDNAME={FDNAME}" in pid1.messages


def test_other_descriptors_passed_in_are_closed(pid1):
    r, w = os.pipe()
    os.close(w)
    assert FdStore(pid1.notify).take({r: "something-else"}) is None
    with pytest.raises(OSError):
        os.fstat(r)


def test_without_secret_memory_nothing_is_stored_and_status_says_why(pid1, monkeypatch):
    def no_memfd_secret(size: int, keep_fd: bool = False) -> SecretMemory:
        region = original(size, keep_fd)
        if region.fd is not None:  # what the fallback looks like: a region without a descriptor
            os.close(region.fd)
            region.fd, region.kind = None, "mlock"
        return region

    original = SecretMemory
    monkeypatch.setattr("unlocker.service.fdstore.SecretMemory", no_memfd_secret)
    store = FdStore(pid1.notify)
    store.keep(bytearray(32))
    assert pid1.store == {} and pid1.messages == []
    assert store.state == f"unavailable: {NO_MEMFD_SECRETMEM}"
