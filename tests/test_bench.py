"""Every bench/ script prints its figures as JSON with --json, ratios included, so a check can read them.
Run here in their quickest mode: the shape of the figures is tested, never their values (the figures come
from full runs, README.md's table)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT
from swtpm_fixture import require_swtpm
from tang_fixture import require_tang


def bench_json(script: str, *args: str) -> dict:
    p = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--json"], capture_output=True,
                       text=True, timeout=300, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_cli():
    figures = bench_json("cli.py", "--runs", "1")
    assert figures["baseline"] in figures["results"]
    for name in ("unlocker --help", "unlocker status --json", "unlocker slots --json"):
        row = figures["results"][name]
        assert row["median_ms"] > 0 and row["ratio"] > 0


def test_client():
    figures = bench_json("client.py", "--rounds", "2")
    for kind in ("binary", "text"):
        assert figures["results"][kind]["decrypt_ratio"] > 0 and figures["results"][kind]["encrypt_ratio"] > 0
    assert figures["goal_decrypt_ratio"] == {"binary": 1.25, "text": 1.6}


def test_keystore():
    figures = bench_json("keystore.py", "--quick")
    assert figures["unlock"]["ratio_vs_raw_argon2id"] > 0 and figures["argon2id"]


@pytest.mark.tpm
def test_tpm():
    require_swtpm()
    figures = bench_json("tpm.py", "--runs", "1")
    assert figures["unseal_vs_systemd_creds"] > 0 and figures["unlock_ms"] > 0


def test_fleet():
    require_tang()
    figures = bench_json("fleet.py", "--runs", "1")
    assert figures["tang"]["ratio"] > 0 and figures["sss 2 of 3"]["ratio"] > 0
