"""Start-up time of the `unlocker` command beside a bare interpreter start and `import typer`, in one run:
each command is a fresh process, the cases interleaved run after run, medians compared.

    .venv/bin/python bench/cli.py [--runs N] [--json] [--tree PATH] [--against PATH]

Each case runs `python -m unlocker ...` with PYTHONPATH set to the tree measured (this checkout, or
--tree: another checkout) and without GLIBC_TUNABLES, as a user's shell starts it; so a command that
re-executes itself pays for it here. --against times a second checkout (e.g. an older commit) in the same
run, its cases interleaved with the first's: a before/after under the same load. The keystore is a
passphrase-only one in a temporary directory; no broker is running (status reports "not running", lock
and unlock fail after parsing), and grant and revoke are refused before they write anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unlocker.keystore import changes, storage  # noqa: E402
from unlocker.keystore.kdf import Argon2Params  # noqa: E402
from unlocker.keystore.slots import EnrollOptions, Secrets  # noqa: E402

BASELINE = "python -c pass"
# The goal for the commands scripts call: at most this many times a bare interpreter start.
GOAL_RATIO = 5.0
GOAL_MS = 100.0


# Tree-independent: timed once per run.
REFERENCES = [(BASELINE, ["-c", "pass"], (0,)), ("python -c 'import typer'", ["-c", "import typer"], (0,))]


def cases(keystore: Path) -> list[tuple[str, list[str], tuple[int, ...]]]:
    """(name, argv after the interpreter, accepted exit codes)."""
    ks = ["--keystore", str(keystore)]
    return [
        ("unlocker --help", ["-m", "unlocker", "--help"], (0,)),
        # After the global options' callback, as typer runs it (it reads the config file).
        ("unlocker lock --help", ["-m", "unlocker", "lock", "--help"], (0,)),
        # Its --help cannot be told from a passphrase file's name unless it is the only word after init.
        ("unlocker init --help", ["-m", "unlocker", "init", "--help"], (0,)),
        ("unlocker status --json", ["-m", "unlocker", *ks, "status", "--json"], (0,)),
        ("unlocker slots --json", ["-m", "unlocker", *ks, "slots", "--json"], (0,)),
        ("unlocker status", ["-m", "unlocker", *ks, "status"], (0,)),
        # doctor asks systemctl and reads /proc: its own work, beyond start-up, is in this figure.
        ("unlocker doctor --json", ["-m", "unlocker", *ks, "doctor", "--json"], (0, 1, 2)),
        # No broker: they fail after parsing ("the broker is not running").
        ("unlocker lock", ["-m", "unlocker", *ks, "lock"], (1,)),
        ("unlocker unlock", ["-m", "unlocker", *ks, "unlock"], (1,)),
        # Refused after parsing: not a unit name; no grant for that unit (the grant list is only read).
        ("unlocker grant (refused)", ["-m", "unlocker", *ks, "grant", "not/a-unit", "--format", "hex"], (1,)),
        ("unlocker revoke (no grant)", ["-m", "unlocker", *ks, "revoke", "bench-no-grant.service"], (1,)),
        # Through typer (no plain shape for it): fails after parsing, no backup in the temporary directory.
        ("unlocker restore-backup (typer)", ["-m", "unlocker", *ks, "restore-backup"], (1,)),
    ]


def measure(trees: list[Path], runs: int) -> list[dict[str, dict[str, float]]]:
    """For each tree, each case's median and its ratio to the bare interpreter start (the references are
    in the first tree's rows)."""
    with tempfile.TemporaryDirectory(prefix="unlocker-bench-") as d:
        keystore = Path(d) / "keystore"
        opened = changes.create("passphrase", Secrets(bytearray(b"bench passphrase")),
                                EnrollOptions(argon2=Argon2Params(8192, 1)))
        storage.write(keystore, opened.keystore, expected_generation=None)
        opened.close()
        # A case's runs in each tree back to back: a before/after sees the same load.
        todo = [(0, *ref) for ref in REFERENCES] + [(t, *case) for case in cases(keystore) for t in range(len(trees))]
        samples: dict[tuple[int, str], list[float]] = {(t, name): [] for t, name, _, _ in todo}
        for run in range(runs + 1):
            for t, name, argv, codes in todo:
                start = time.perf_counter()
                p = subprocess.run([sys.executable, *argv], env=_environment(trees[t]), cwd=d, capture_output=True,
                                   stdin=subprocess.DEVNULL)
                if run:
                    samples[(t, name)].append((time.perf_counter() - start) * 1000)
                if p.returncode not in codes:
                    sys.exit(f"{name} ({trees[t]}): exit {p.returncode}\n{p.stderr.decode()}")
    base = statistics.median(samples[(0, BASELINE)])
    rows: list[dict[str, dict[str, float]]] = [{} for _ in trees]
    for (t, name), s in samples.items():
        rows[t][name] = {"median_ms": round(statistics.median(s), 1), "ratio": round(statistics.median(s) / base, 2)}
    return rows


def _environment(tree: Path) -> dict[str, str]:
    # Byte-compiled, as pip and Debian install it: the untimed first round writes __pycache__ (a
    # PYTHONDONTWRITEBYTECODE in our environment would have every run compile the package from source).
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPATH"] = str(tree)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose unlocker is timed")
    parser.add_argument("--against", type=Path, help="another checkout, timed in the same run (before/after)")
    args = parser.parse_args()
    trees = [args.tree.resolve(), *([args.against.resolve()] if args.against else [])]
    rows = measure(trees, args.runs)
    result: dict[str, object] = {
        "python": sys.executable, "tree": str(trees[0]), "runs": args.runs,
        "command": f"PYTHONPATH={trees[0]} {sys.executable} -m unlocker ...", "baseline": BASELINE,
        "goal": {"status_json_ms": GOAL_MS, "status_json_ratio": GOAL_RATIO}, "results": rows[0]}
    if args.against:
        result["against"] = {"tree": str(trees[1]), "results": rows[1]}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['command']}\nfresh process each, cases interleaved, median of {args.runs} runs")
    head = f"{'command':<32} {'median ms':>10} {'x bare':>8}"
    print(head + (f" {'against ms':>11} {'x bare':>8}   against: {trees[1]}" if args.against else ""))
    for name, row in rows[0].items():
        line = f"{name:<32} {row['median_ms']:>10.1f} {row['ratio']:>7.2f}x"
        if args.against and name in rows[1]:
            line += f" {rows[1][name]['median_ms']:>11.1f} {rows[1][name]['ratio']:>7.2f}x"
        print(line)
    print(f"goal for status --json: <= {GOAL_MS:.0f} ms and <= {GOAL_RATIO:.0f}x a bare interpreter start")


if __name__ == "__main__":
    main()
