"""The linters are tests: a change that breaks them fails the suite."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff():
    p = _run("ruff", "check", "unlocker", "tests", "bench")
    assert p.returncode == 0, p.stdout + p.stderr


def test_mypy():
    p = _run("mypy", "unlocker")
    assert p.returncode == 0, p.stdout + p.stderr
