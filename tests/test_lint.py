"""The linters are tests: a change that breaks them fails the suite. lint-imports holds the layers of
docs/ARCHITECTURE.md (the contracts are in pyproject.toml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH puts `tree`'s copy of the package ahead of the installed one; no cache, so a copy is
    # analysed as it is.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=300)


def test_ruff():
    p = _run("ruff", "check", "unlocker", "tests", "bench")
    assert p.returncode == 0, p.stdout + p.stderr


def test_mypy():
    p = _run("mypy", "unlocker")
    assert p.returncode == 0, p.stdout + p.stderr


def test_import_layers_hold():
    p = _lint_imports(ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 broken" in p.stdout, p.stdout


def test_import_layers_catch_a_client_that_imports_the_service(tmp_path):
    # The contracts can fail: a copy of the package whose client imports the broker breaks them.
    shutil.copytree(ROOT / "unlocker", tmp_path / "unlocker", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    fields = tmp_path / "unlocker" / "client" / "fields.py"
    fields.write_text(fields.read_text() + "\nfrom unlocker.service import broker  # noqa\n")
    p = _lint_imports(tmp_path)
    assert p.returncode != 0, p.stdout
    assert "unlocker.client.fields -> unlocker.service.broker" in p.stdout, p.stdout
