"""Logging is set up as --debug asks whether logging was loaded before the options were read or after."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

# A warning and a debug record, from a module of ours and from a library's own logger, with logging set up
# before or after it is first loaded.
LOG = """
import sys
from unlocker import logs
debug, early = sys.argv[1] == "debug", sys.argv[2] == "early"
if early:
    import logging
logs.configure(debug)
assert early or "logging" not in sys.modules or debug
log = logs.logger()
import logging
log.warning("a warning")
log.debug("a debug record")
logging.getLogger("tpm2_pytss.internal.utils").warning("a library's warning")
"""


@pytest.mark.parametrize("early", ["early", "late"])
@pytest.mark.parametrize("debug", ["debug", "quiet"])
def test_logging_reads_the_same_whenever_it_is_loaded(debug, early):
    p = subprocess.run([sys.executable, "-c", LOG, debug, early], capture_output=True, text=True, cwd=ROOT,
                       timeout=60, check=True)
    expected = ["unlocker: a warning", *(["unlocker: a debug record"] if debug == "debug" else []),
                "tpm2_pytss.internal.utils: a library's warning"]
    assert p.stderr.splitlines() == expected
