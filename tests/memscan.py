"""Scan another process's memory for a byte string (used by the tests that check secrets are wiped)."""

from __future__ import annotations

import re
from pathlib import Path


def find_in_process(pid: int, needle: bytes) -> list[str]:
    """Where `needle` occurs in the readable mappings of `pid`, as 'path@offset' strings."""
    hits = []
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5] if len(fields) > 5 else "[anon]"
            if "r" not in fields[1] or name in ("[vvar]", "[vsyscall]"):
                continue
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except OSError:
                continue
            hits += [f"{name}@{m.start():#x}" for m in re.finditer(re.escape(needle), chunk)]
    return hits
