"""Fixtures that boot a real systemd 252 in systemd-nspawn (container.py; docs/TESTING.md).

Never skipped: a missing tool is a failure that says what to run. A missing or outdated rootfs is built
(scripts/rootfs, a few minutes, once).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import warnings
from pathlib import Path

import pytest

from .container import ROOT, Container, Layer, build_wheels, reap_orphans

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    # A SIGTERM (a CI timeout, `timeout pytest`) would end Python without running a single finally block,
    # leaving containers, overlays and cgroups behind. As a KeyboardInterrupt it unwinds through the fixtures.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.system)


@pytest.fixture(scope="session")
def rootfs() -> Path:
    """build/rootfs, up to date (scripts/rootfs does nothing when its stamp matches)."""
    if reaped := reap_orphans():
        warnings.warn(f"removed what killed test runs left behind: {', '.join(reaped)}", stacklevel=1)
    missing = [tool for tool in ("systemd-nspawn", "debootstrap", "nsenter") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run scripts/setup (installs systemd-container and "
                    "debootstrap)", pytrace=False)
    p = subprocess.run([str(ROOT / "scripts" / "rootfs")], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        pytest.fail(f"scripts/rootfs failed ({p.returncode}):\n{p.stdout}{p.stderr}", pytrace=False)
    return ROOT / "build" / "rootfs"


@pytest.fixture(scope="session")
def wheels() -> Path:
    """unlocker and its dependencies as wheels, built on the host once a session."""
    return build_wheels()


@pytest.fixture(scope="session")
def layer(rootfs: Path, wheels: Path):
    """unlocker installed in /opt/unlocker, as an overlay layer every container of the session shares."""
    layer = Layer(wheels)
    try:
        yield layer.build()
    finally:
        layer.remove()


@pytest.fixture
def container(layer: Layer):
    """A freshly booted machine with unlocker installed (not enabled), for one test."""
    with Container(layer) as c:
        yield c


@pytest.fixture(scope="module")
def module_container(layer: Layer):
    """The same, shared by the tests of a module."""
    with Container(layer) as c:
        yield c


@pytest.fixture
def bare_container(rootfs: Path):
    """A freshly booted machine from the rootfs alone, without unlocker: for facts about the platform."""
    with Container() as c:
        yield c
