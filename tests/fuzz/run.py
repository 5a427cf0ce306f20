"""Run one fuzz target under atheris (libFuzzer): python tests/fuzz/run.py TARGET [libFuzzer options] [CORPUS...]

The unlocker modules are instrumented for coverage; a property failure or an unexpected exception is a
crash, written as crash-<hash> in the working directory (or -artifact_prefix=).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["unlocker"]):
    import targets


def main() -> None:
    name = sys.argv[1]
    target = targets.TARGETS[name]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
