"""The "unlocker" logger, and logging set up as --debug asks, once something loads logging. Importing
logging costs ~8 ms of every start, and the reports that scripts call in a loop (status, slots) load
nothing that logs: for them it is never imported.
"""

from __future__ import annotations

import sys

# typing.TYPE_CHECKING without importing typing: see cli/main.py.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging

_debug: bool | None = None  # what configure() was asked for; None: not yet


def configure(debug: bool) -> None:
    """Log to stderr, debug records too with --debug: now when logging is loaded already (or --debug
    asks for it), else when a module first asks for its logger."""
    global _debug
    _debug = debug
    if debug or "logging" in sys.modules:
        _set_up()


def logger() -> logging.Logger:
    """The logger every module of unlocker logs to. Modules that load a library that logs (tpm2_pytss)
    call it too, so that the library's warnings read as they do once logging is set up."""
    import logging

    _set_up()
    return logging.getLogger("unlocker")


def _set_up() -> None:
    import logging

    if _debug is not None:  # basicConfig does nothing once the root logger has a handler
        logging.basicConfig(level=logging.DEBUG if _debug else logging.WARNING, format="%(name)s: %(message)s")
