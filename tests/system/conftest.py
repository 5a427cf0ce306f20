"""Fixtures that boot a real systemd in systemd-nspawn. Never skipped: a missing tool is a failure
that says what to install."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .container import ROOT, ROOTFS, Container, Layer


def _require_tools() -> None:
    missing = [t for t in ("systemd-nspawn", "debootstrap", "nsenter") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run scripts/setup (installs systemd-container, debootstrap)")
    if not (ROOTFS / ".unlocker-stamp").exists():
        subprocess.run([str(ROOT / "scripts" / "rootfs")], check=True)


@pytest.fixture(scope="session")
def layer():
    _require_tools()
    layer = Layer()
    try:
        layer.build()
        yield layer
    finally:
        layer.remove()


@pytest.fixture
def container(layer):
    with Container(layer) as c:
        yield c


@pytest.fixture(scope="module")
def module_container(layer):
    with Container(layer) as c:
        yield c
