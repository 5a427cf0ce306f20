"""Start-up time of the `unlocker` command beside a bare interpreter start and `import typer`, in one run:
each command is a fresh process, the cases interleaved run after run, medians compared.

    .venv/bin/python bench/cli.py [--runs N] [--json] [--tree PATH]

Each case runs `python -m unlocker ...` with PYTHONPATH set to the tree measured (this checkout, or
--tree: another checkout, e.g. an older commit for a before/after) and without GLIBC_TUNABLES, as a
user's shell starts it; so a command that re-executes itself pays for it here. The keystore is a
passphrase-only one in a temporary directory; no broker is running (status reports "not running").
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


def cases(keystore: Path) -> list[tuple[str, list[str], tuple[int, ...]]]:
    """(name, argv after the interpreter, accepted exit codes)."""
    ks = ["--keystore", str(keystore)]
    return [
        (BASELINE, ["-c", "pass"], (0,)),
        ("python -c 'import typer'", ["-c", "import typer"], (0,)),
        ("unlocker --help", ["-m", "unlocker", "--help"], (0,)),
        ("unlocker status --json", ["-m", "unlocker", *ks, "status", "--json"], (0,)),
        ("unlocker slots --json", ["-m", "unlocker", *ks, "slots", "--json"], (0,)),
        ("unlocker status", ["-m", "unlocker", *ks, "status"], (0,)),
        # doctor asks systemctl and reads /proc: its own work, beyond start-up, is in this figure.
        ("unlocker doctor --json", ["-m", "unlocker", *ks, "doctor", "--json"], (0, 1, 2)),
        # Through typer: no broker, so it fails after parsing ("the broker is not running").
        ("unlocker lock (typer path)", ["-m", "unlocker", *ks, "lock"], (1,)),
    ]


def measure(tree: Path, runs: int) -> dict[str, object]:
    # Byte-compiled, as pip and Debian install it: the untimed first round writes __pycache__ (a
    # PYTHONDONTWRITEBYTECODE in our environment would have every run compile the package from source).
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPATH"] = str(tree)
    with tempfile.TemporaryDirectory(prefix="unlocker-bench-") as d:
        keystore = Path(d) / "keystore"
        opened = changes.create("passphrase", Secrets(bytearray(b"bench passphrase")),
                                EnrollOptions(argon2=Argon2Params(8192, 1)))
        storage.write(keystore, opened.keystore, expected_generation=None)
        opened.close()
        todo = cases(keystore)
        samples: dict[str, list[float]] = {name: [] for name, _, _ in todo}
        for run in range(runs + 1):
            for name, argv, codes in todo:
                start = time.perf_counter()
                p = subprocess.run([sys.executable, *argv], env=env, cwd=d, capture_output=True,
                                   stdin=subprocess.DEVNULL)
                if run:
                    samples[name].append((time.perf_counter() - start) * 1000)
                if p.returncode not in codes:
                    sys.exit(f"{name}: exit {p.returncode}\n{p.stderr.decode()}")
    base = statistics.median(samples[BASELINE])
    rows = {name: {"median_ms": round(statistics.median(s), 1), "ratio": round(statistics.median(s) / base, 2)}
            for name, s in samples.items()}
    return {"python": sys.executable, "tree": str(tree), "runs": runs,
            "command": f"PYTHONPATH={tree} {sys.executable} -m unlocker ...", "baseline": BASELINE,
            "goal": {"status_json_ms": GOAL_MS, "status_json_ratio": GOAL_RATIO}, "results": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose unlocker is timed")
    args = parser.parse_args()
    result = measure(args.tree.resolve(), args.runs)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['command']}\nfresh process each, cases interleaved, median of {args.runs} runs")
    print(f"{'command':<32} {'median ms':>10} {'x bare':>8}")
    for name, row in result["results"].items():  # type: ignore[attr-defined]
        print(f"{name:<32} {row['median_ms']:>10.1f} {row['ratio']:>7.2f}x")
    print(f"goal for status --json: <= {GOAL_MS:.0f} ms and <= {GOAL_RATIO:.0f}x a bare interpreter start")


if __name__ == "__main__":
    main()
