"""A short, bounded run of every fuzz target (tests/fuzz/targets.py) under atheris; scripts/fuzz runs them
for long. A target's property failing, or any exception but the project's own error, fails the test with
the input that did it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from fuzz.targets import CORPUS, TARGETS

RUNS = 3000  # per target: a few seconds each; the long run is scripts/fuzz


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target_holds_its_property(target, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(Path(CORPUS) / target, corpus)  # libFuzzer adds what it finds: not into the repo
    p = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz" / "run.py"), target, f"-runs={RUNS}", "-seed=1",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests' / 'fuzz'}", "PATH": "/usr/bin:/bin"},
    )
    crashes = [c.read_bytes() for c in tmp_path.glob("crash-*")]
    assert p.returncode == 0 and not crashes, f"{crashes[:1]!r}\n{p.stderr[-3000:]}"
    assert f"Done {RUNS} runs" in p.stderr
