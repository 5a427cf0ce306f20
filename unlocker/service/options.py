"""What `unlocker serve` was asked to do, as one value that crosses two process boundaries as JSON: the
CLI's options into the broker (which execs a lean interpreter, see serve.py) and the broker's into each
unlock child (unlock_child.py). Nothing in it is secret: `passphrase_file` is a path.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from unlocker.clevis.http import Timeouts


@dataclass(frozen=True)
class AskOptions:
    cached_keyname: str | None = None  # first try the initrd's cached passphrase under this name (read only)
    timeout_s: int = 0  # 0: wait for ever


@dataclass(frozen=True)
class Backoff:
    first: float = 1.0  # seconds before the first retry
    most: float = 30.0  # the longest wait between two rounds


@dataclass(frozen=True)
class ServeOptions:
    keystore: Path
    run_dir: Path
    tcti: str | None
    tries: int = 3
    ask: AskOptions = field(default_factory=AskOptions)
    passphrase_file: str | None = None  # for tests and scripted demos; the prompt is the normal path
    network: Timeouts = field(default_factory=Timeouts)
    backoff: Backoff = field(default_factory=Backoff)
    # How long the unattended slots' first try may hold the prompt back: long enough that a Tang server
    # that answers spares the prompt altogether, short enough that a silent one does not delay a person.
    grace_s: float = 1.0
    debug: bool = False  # log at debug level (the CLI's --debug), in the broker and its unlock child

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        d = json.loads(text)
        return cls(keystore=Path(d["keystore"]), run_dir=Path(d["run_dir"]), tcti=d["tcti"], tries=d["tries"],
                   ask=AskOptions(**d["ask"]), passphrase_file=d["passphrase_file"],
                   network=Timeouts(**d["network"]), backoff=Backoff(**d["backoff"]), grace_s=d["grace_s"],
                   debug=d["debug"])
