"""A tiny tmpfs filled to the last byte, for disk-full tests (root only; always unmounted)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def fill(mount: Path, files: list[Path]) -> Iterator[list[Path]]:
    """Copy `files` onto a 64 KiB tmpfs at `mount`, fill the rest, and yield the copies."""
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        copies = []
        for f in files:
            shutil.copy2(f, mount / f.name)
            copies.append(mount / f.name)
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 512)
        except OSError:
            pass
        finally:
            os.close(fd)
        yield copies
    finally:
        subprocess.run(["umount", str(mount)], check=True)
