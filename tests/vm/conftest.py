"""Fixtures for real boots under QEMU (machine.py; README-harness.md).

Never skipped: a missing host tool is a failure that names the package to install. The guest image is built
by scripts/vm-image (a few minutes, once per content of its inputs, the unlocker wheels included).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ is on sys.path (pytest's rootdir-based import), as for tests/system/conftest.py.
from system.container import build_wheels

from .machine import Image, Machine, VmError, require_host_tools

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml runs with --strict-markers; the marker is registered here so that it lives with the tests.
    config.addinivalue_line("markers", "vm: boots a real Debian 12 guest under QEMU (TCG) with a swtpm TPM")
    # A SIGTERM (a CI timeout) should unwind through the fixtures, which kill QEMU and swtpm.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session")
def vm_image() -> Image:
    """The guest image for the current tree, built or found in build/vm/."""
    try:
        require_host_tools()
    except VmError as e:
        pytest.fail(str(e), pytrace=False)
    image, seconds = Image.build(build_wheels())
    print(f"\nvm image {image.dir.name}: {seconds:.0f} s (scripts/vm-image)")
    return image


@pytest.fixture
def machine(vm_image: Image, tmp_path: Path) -> Iterator[Machine]:
    """A fresh machine (its own TPM state and disk overlay); every boot of it is killed at teardown.
    Logs stay in pytest's tmp_path (the last three runs are kept)."""
    m = Machine(vm_image, tmp_path / "machine")
    try:
        yield m
    finally:
        m.close()
